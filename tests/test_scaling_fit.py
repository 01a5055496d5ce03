"""Fits, bootstrap, leave-largest-out and the regime check on synthetic points from known laws."""

import math

import numpy as np
import pytest

from glassgpt.errors import ScalingError
from glassgpt.scaling import capability, fit

from conftest import load_bench

E, A, ALPHA, B, BETA = 1.7, 400.0, 0.34, 410.0, 0.28


def law(N, D):
    return E + A / N ** ALPHA + B / D ** BETA


def chinchilla_points(noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    pts = []
    for N in np.geomspace(1e5, 3e6, 6):
        for r in (5, 10, 20, 40):
            D = N * r
            pts.append({"params_non_embedding": N, "params_blocks": N, "tokens": D, "flops": 6 * N * D,
                        "final_loss": {"v": law(N, D) * (1 + noise * rng.standard_normal())}})
    return pts


def test_chinchilla_fit_recovers_known_law():
    pts = chinchilla_points()
    f = fit.fit("chinchilla", [p["final_loss"]["v"] for p in pts], N=[p["params_non_embedding"] for p in pts],
                D=[p["tokens"] for p in pts], n_boot=10)
    p = f["params"]
    assert f["refused"] is None
    assert p["E"] == pytest.approx(E, rel=1e-3) and p["alpha"] == pytest.approx(ALPHA, rel=1e-3)
    assert p["beta"] == pytest.approx(BETA, rel=1e-3) and p["A"] == pytest.approx(A, rel=1e-2)
    mid, ci = fit.predict(f, N=1e8, D=2e9)
    assert mid == pytest.approx(law(1e8, 2e9), rel=1e-4) and ci[0] <= mid * (1 + 1e-6) and ci[1] >= mid * (1 - 1e-6)


def test_compute_fit_recovers_known_law():
    a, b, c = 2e3, -0.2, 1.5
    C = np.geomspace(1e10, 1e14, 12)
    f = fit.fit("compute", a * C ** b + c, C=C, n_boot=10)
    assert f["refused"] is None
    assert f["params"]["b"] == pytest.approx(b, rel=1e-3) and f["params"]["c"] == pytest.approx(c, rel=1e-3)
    assert fit.predict(f, C=1e17)[0] == pytest.approx(a * 1e17 ** b + c, rel=1e-4)


def test_bootstrap_interval_widens_with_noise_and_covers():
    pts = chinchilla_points(noise=0.01, seed=1)
    res = fit.fit_set(pts, "v", n_boot=20)
    f = res["chinchilla"]
    mid, (lo, hi) = fit.predict(f, N=1e7, D=2e8)
    assert lo < mid < hi and hi - lo > 1e-3
    assert "relative_error" in f["leave_largest_out"]


def test_regime_check_passes_a_power_law():
    reg = fit.regime(chinchilla_points(), "v", target_flops=1e20)
    assert reg["confident"] and not reg["flags"]
    # slopes flatten as compute grows (convex in log-log)
    assert reg["local_slopes"][-1] > reg["local_slopes"][0]


def test_regime_check_flags_plateau_then_drop():
    pts = []
    for N in np.geomspace(1e4, 3e5, 6):
        for r in (5, 10, 20, 40):
            L = 2.6 - 0.02 * math.log(N / 1e4) - 0.5 * max(0.0, math.log(N / 8e4)) ** 1.5 - 0.01 * math.log(r)
            pts.append({"params_non_embedding": N, "params_blocks": N, "tokens": N * r, "flops": 6 * N * N * r, "final_loss": {"v": L}})
    target = 1e17
    reg = fit.regime(pts, "v", target_flops=target)
    assert not reg["confident"]
    assert any("steepens" in f for f in reg["flags"])
    top = max(p["flops"] for p in pts if p["tokens"] == p["params_non_embedding"] * 20)
    assert reg["needed_max_run_flops"] == pytest.approx(top * 10 ** 1.5, rel=1e-6)
    assert "--max-fraction ≥" in reg["advice"]


def test_regime_check_flags_a_gradual_steepening():
    """Slopes that steepen steadily but too little for the half-against-half test (as the GPU
    ladders did, -0.05 to -0.08): concave in log-log, so not confident; the bend lies past the top."""
    pts = []
    for N in np.geomspace(1e5, 3e6, 6):
        for r in (5, 10, 20, 40):
            lnC = math.log(6 * N * N * r / 1e12)
            pts.append({"params_non_embedding": N, "params_blocks": N, "tokens": N * r, "flops": 6 * N * N * r,
                        "final_loss": {"v": 5.0 * math.exp(-0.05 * lnC - 0.003 * lnC ** 2)}})
    reg = fit.regime(pts, "v", target_flops=1e20)
    assert reg["curvature"] < 0 and not any("steepens" in f for f in reg["flags"])
    assert not reg["confident"] and any("concave" in f for f in reg["flags"])
    assert reg["transition_flops_at_least"] == pytest.approx(reg["line"][-1]["flops"])


def test_leave_largest_out_miss_is_flagged():
    reg = fit.regime(chinchilla_points(), "v", target_flops=1e20, llo_error=0.05, llo_tolerance=0.01)
    assert not reg["confident"] and any("leaving the largest size out" in f for f in reg["flags"])


def test_plateau_fit_is_refused_as_degenerate():
    # a flat plateau: the irreducible term ends at (or above) the lowest loss, or the exponent collapses
    N = np.geomspace(1e4, 1e5, 5).repeat(2)
    D = N * np.tile([10, 20], 5)
    y = 2.5 + 0.001 * np.sin(np.arange(10))
    f = fit.fit("chinchilla", y, N=N, D=D, n_boot=0)
    assert f["refused"] and ("irreducible" in f["refused"] or "exponent" in f["refused"] or "converge" in f["refused"])


def test_too_few_points_refused():
    with pytest.raises(ScalingError, match="too few"):
        fit.fit("chinchilla", [3.0, 2.9, 2.8], N=[1, 2, 3], D=[1, 2, 3])


def test_capability_fit_recovers_the_gpt4_form():
    rng = np.random.default_rng(0)
    alpha, k = 20.0, 0.1  # every problem solvable (pass rate ≥ 5% at the largest rung)
    flops = list(np.geomspace(1e10, 1e12, 6))
    difficulty = rng.uniform(0.5, 1.5, 40)
    rungs = [list(-difficulty * alpha * c ** -k) for c in flops]  # log pass rates
    out = capability.fit_and_predict(flops, rungs, 1e15)
    assert out["k"] == pytest.approx(k, rel=1e-6)
    m = float(np.mean(difficulty)) * alpha * 1e15 ** -k
    assert out["predicted"] == pytest.approx(math.exp(-m), rel=1e-6)
    # the unfiltered diagnostic: the same law over every problem, here the same problems
    u = out["unfiltered"]
    assert u["n_problems"] == 40 and u["k"] == pytest.approx(k, rel=1e-6)
    assert u["predicted_neg_mean_log_pass"] == pytest.approx(m, rel=1e-6)
    assert u["confident"] and u["ci90"][0] < u["predicted"] < u["ci90"][1]  # its own interval and backtest
    # an exact law backtests to round-off (3 origins of 4–6 rungs); the interval is the problems' bootstrap only
    iv = out["interval"]
    assert iv["dof"] == 2 and iv["n_backtests"] == 3 and iv["error_per_efold"] < 1e-9
    assert out["ci90"][0] < out["predicted"] < out["ci90"][1] < 1
    # a law that bends (the last two rungs stall): the backtest sees the miss and the interval widens
    bent = [list(-difficulty * alpha * min(c, 3e11) ** -k) for c in flops]
    wide = capability.fit_and_predict(flops, bent, 1e15)
    assert wide["interval"]["error_per_efold"] > 0.01
    assert wide["ci90"][1] - wide["ci90"][0] > 3 * (out["ci90"][1] - out["ci90"][0])
    # too few solvable problems: the GPT-4 form is refused, the unfiltered fit still predicts
    hard = capability.fit_and_predict(flops, [list(-30 * difficulty * alpha * c ** -k) for c in flops], 1e15)
    assert "only 0 capability problems" in hard["refused"] and "predicted" not in hard
    assert hard["unfiltered"]["k"] == pytest.approx(k, rel=1e-6) and hard["unfiltered"]["confident"]
    with pytest.raises(ScalingError, match="at least 3 compute budgets"):
        capability.fit_and_predict(flops[:2], rungs[:2], 1e15)


def test_line_fit_predicts_an_undertrained_target_the_frontier_does_not():
    # the target trains at 2 tokens per parameter, far from compute-optimal: the compute frontier
    # (the best any size reaches at that compute) lies below it; the target's own line does not
    R, pts = 2.0, []
    for N in np.geomspace(1e5, 3e6, 6):
        for r in (0.25, 0.5, 1, 2):
            D = R * r * N
            pts.append({"params_non_embedding": N, "params_blocks": N, "tokens": D, "flops": 6 * N * D, "final_loss": {"v": law(N, D)}})
    res = fit.fit_set(pts, "v", n_boot=0, ratio=R)
    Nt = 3e7
    true = law(Nt, R * Nt)
    err = {k: fit.predict_at(f, k, {"params_blocks": Nt, "tokens": R * Nt})[0] / true - 1 for k, f in res.items()}
    assert abs(err["line"]) < 0.01 and abs(err["chinchilla"]) < 1e-4
    assert err["frontier"] < -0.03
    line = fit.on_line(pts, R)
    assert len(line) == 6 and all(p["tokens"] == pytest.approx(R * p["params_non_embedding"]) for p in line)


def test_iso_token_line_leaves_out_a_size_without_a_run_at_the_target_tokens():
    D = 1e6
    pts = [{"params_non_embedding": N, "params_blocks": N, "tokens": D * r, "flops": 6 * N * D * r, "final_loss": {"v": law(N, D * r)}}
           for N in (1e4, 3e4, 1e5) for r in (0.125, 0.25, 0.5, 1.0)]
    pts += [{"params_non_embedding": 3e5, "params_blocks": 3e5, "tokens": D * r, "flops": 6 * 3e5 * D * r, "final_loss": {"v": 3.0}}
            for r in (0.125, 0.25)]  # a size cut short: nothing near D
    line = fit.on_line(pts, tokens=D)
    assert [p["params_non_embedding"] for p in line] == [1e4, 3e4, 1e5]
    assert all(p["tokens"] == D for p in line)


def test_regime_check_needs_five_sizes_on_the_line():
    pts = [p for p in chinchilla_points() if p["params_non_embedding"] < 1e6]  # 4 sizes
    reg = fit.regime(pts, "v", target_flops=1e20)
    assert not reg["confident"] and any("only 4 sizes" in f for f in reg["flags"])


def line_points(bend=0.0, noise=0.0, seed=0, n=7):
    """One point per size on a tokens-per-parameter line (D = 20·N), from L(C) = 40·C^−0.1 + 1.5;
    with `bend`, the sizes past the third fall below the law by `bend` per e-fold of compute (a
    law that stops holding inside the ladder)."""
    rng = np.random.default_rng(seed)
    sizes = np.geomspace(1e4, 1e6, n)
    pts = []
    for N in sizes:
        C = 6 * N * 20 * N
        L = (40 * C ** -0.1 + 1.5) * math.exp(-bend * max(0.0, 2 * math.log(N / sizes[2])) + noise * rng.standard_normal())
        pts.append({"params_non_embedding": N, "params_blocks": N, "tokens": 20 * N, "flops": C, "final_loss": {"v": L}})
    return pts


def line_interval(pts, C_target, n_boot=20):
    f = fit.fit("compute", [p["final_loss"]["v"] for p in pts], C=[p["flops"] for p in pts], n_boot=n_boot)
    f["backtest"] = fit.backtest(pts, "v", "line", ratio=20)
    mid, ci = fit.predict(f, C=C_target)
    return mid, fit.interval(f, mid, ci, math.log(C_target / pts[-1]["flops"])), f


def test_interval_covers_a_known_law_with_seed_noise():
    N_t = 1e6 * 100 ** (1 / 6)  # the next size past the ladder: ≈ 1.5 e-folds of compute, as on the cpu bench
    C_t = 6 * N_t * 20 * N_t
    true = 40 * C_t ** -0.1 + 1.5
    mid, iv, _ = line_interval(line_points(noise=0.005, seed=0), C_t)  # seed noise ≈ the cpu bench's rungs
    lo, hi = iv["ci90"]
    assert lo < true < hi
    # it holds the bootstrap interval and adds to it the backtest's model error and the seed noise
    b_lo, b_hi = iv["ci90_bootstrap"]
    assert lo < b_lo and hi > b_hi and (hi - lo) > 2 * (b_hi - b_lo)
    assert iv["dof"] == 3 and iv["n_backtests"] == 6 and iv["t_model"] == fit.t95(3)
    assert 0.002 < iv["sigma_noise"] < 0.015 and (hi - lo) / mid < 0.15  # honest, but not unbounded


def test_interval_is_wider_when_the_ladder_misses_its_own_largest_rungs():
    C_t = 6 * 2e6 * 4e7
    _, ok, _ = line_interval(line_points(noise=0.001, n=6), C_t, n_boot=0)
    _, bent, f = line_interval(line_points(bend=0.03, noise=0.001, n=6), C_t, n_boot=0)
    assert bent["sigma_model"] > 4 * ok["sigma_model"]
    w = lambda iv: math.log(iv["ci90"][1] / iv["ci90"][0])  # noqa: E731
    assert w(bent) > 2 * w(ok)
    # the bend pulls the larger rungs below every backtest's law: its misses are over-predictions,
    # and the (optional, not default) drift corrections move the point prediction down
    assert f["backtest"] and all(b["log_error"] > 0 for b in f["backtest"])
    mid = fit.predict(f, C=C_t)[0]
    assert bent["drift"]["llo"] < mid and bent["drift"]["backtest"] < mid


def test_interval_without_backtest_says_so_and_t_quantiles():
    pts = line_points()[:4]  # 4 sizes: the law fits, but not without its largest size
    mid, iv, _ = line_interval(pts, 1e15, n_boot=5)
    assert iv["n_backtests"] == 0 and iv["sigma_model"] is None and "no backtest" in iv["note"]
    assert iv["ci90"][0] <= mid <= iv["ci90"][1]
    assert fit.t95(1) == pytest.approx(6.314) and fit.t95(2) == pytest.approx(2.920) and fit.t95(0) == math.inf
    assert fit.t95(11) == fit.t95(10) and fit.t95(500) == pytest.approx(1.658)
    assert [fit.t95(k) for k in range(1, 40)] == sorted([fit.t95(k) for k in range(1, 40)], reverse=True)


@pytest.fixture(scope="module")
def code_tokenizer():
    from glassgpt.data.sources import SourceStats, stdlib_documents
    from glassgpt.data.tokenizer import Tokenizer

    docs = [d.text for _, d in zip(range(40), stdlib_documents(SourceStats("stdlib")))]
    return Tokenizer.train(docs, 512)


@pytest.mark.parametrize("task", capability.TASKS)
def test_capability_problems_are_line_ends(code_tokenizer, task):
    tok, seq_len = code_tokenizer, 64
    probs = capability.problems(tok, seq_len, task, max_problems=50)
    assert len(probs) == 50 and len({p["id"] for p in probs}) == 50
    for p in probs:
        span = p["ids"][p["start"]:]
        assert 1 <= len(span) <= capability.SPAN_TOKENS and len(p["ids"]) <= seq_len + 1
        assert tok.decode(span).endswith("\n") and "\n" not in tok.decode(span)[:-1]  # the end of one line
    capability._CACHE.clear()
    assert [p["ids"] for p in capability.problems(tok, seq_len, task, max_problems=50)] == [p["ids"] for p in probs]
    with pytest.raises(ScalingError, match="unknown capability task"):
        capability.problems(tok, seq_len, "mmlu")


def test_bench_regime_calibration_line():
    """The predict bench says how the regime check sorted its predictions (errors of the
    confident vs the rest, and how many large misses it refused to call confident)."""
    bench = load_bench("predict_accuracy")
    rows = [{"relative_error": e, "confident": c} for e, c in ((0.01, True), (-0.03, True), (0.02, False), (0.09, False), (-0.05, True))]
    line = bench.regime_calibration(rows)
    assert line == ("regime check: confident 3 (mean |err| 3.00%, largest 5.00%); not confident 2 (mean |err| 5.50%, "
                    "largest 9.00%); misses over 4%: 1/2 not called confident")


def test_regime_check_flags_a_ladder_near_the_bigram_model():
    """A ladder whose largest rung barely beats a count-based bigram model of the corpus is on the
    plateau whatever its curve looks like; one well below it is not flagged for that."""
    pts = chinchilla_points()
    top = fit.regime(pts, "v", target_flops=1e20)["line"][-1]["loss"]
    near = fit.regime(pts, "v", target_flops=1e20, reference=top * 1.02)
    assert not near["confident"] and any("bigram" in f for f in near["flags"])
    assert near["bigram_margin"] == pytest.approx(1 - 1 / 1.02)
    far = fit.regime(pts, "v", target_flops=1e20, reference=top * 1.2)
    assert far["confident"] and far["bigram_margin"] > 0.05


def test_line_fit_is_on_block_compute_not_exact_flops():
    """An iso-token ladder of real shapes (width 8–128, vocabulary 1,024, T = 256), whose loss follows a
    power law in the blocks' parameters: on fit.compute the target is predicted to round-off; on exact
    FLOPs, where the LM head and attention's T×T products dominate the small rungs, it is not."""
    from glassgpt.config import ModelConfig
    from glassgpt.model import flops

    D = 1.2e6

    def point(width):
        c = flops.count(ModelConfig(depth=2, width=width, head_dim=8 if width < 64 else 64, vocab_size=1024, seq_len=256))
        loss = 3.0 + 40.0 * c.params_blocks ** -0.3
        return {"params_non_embedding": c.params_non_embedding, "params_blocks": c.params_blocks, "tokens": D,
                "flops": D * c.flops_per_token, "final_loss": {"v": loss}}

    pts, tgt = [point(w) for w in (8, 16, 24, 40, 56, 88, 128)], point(256)
    f = fit.fit_set(pts, "v", n_boot=0, tokens=D)["line"]
    assert fit.compute(tgt) == 6 * tgt["params_blocks"] * D
    assert fit.predict_at(f, "line", tgt)[0] == pytest.approx(tgt["final_loss"]["v"], rel=1e-3)
    flops_fit = fit.fit("compute", [p["final_loss"]["v"] for p in pts], C=[p["flops"] for p in pts], n_boot=0)
    assert abs(fit.predict(flops_fit, C=tgt["flops"])[0] / tgt["final_loss"]["v"] - 1) > 5e-3


def test_most_sets_before_a_transition_flag_the_rest():
    """The regime is the rungs' training, whichever held-out set shows it: when most sets are
    concave (the ratio-line bench: val and humaneval), a convex third set is not trusted either."""
    from glassgpt.scaling import predict

    def gradual(N, r):  # concave in log-log, as in the test above
        lnC = math.log(6 * N * N * r / 1e12)
        return 5.0 * math.exp(-0.05 * lnC - 0.003 * lnC ** 2)

    pts = chinchilla_points()
    for p in pts:
        N, r = p["params_non_embedding"], p["tokens"] / p["params_non_embedding"]
        p["final_loss"].update({"a": gradual(N, r), "b": gradual(N, r) * 1.1})
    regimes = lambda names: {n: {"regime": fit.regime(pts, n, target_flops=1e20)} for n in names}
    per_set = regimes(["v", "a", "b"])
    assert per_set["v"]["regime"]["confident"] and per_set["a"]["regime"]["transient"]
    predict.ladder_regime(per_set)
    v = per_set["v"]["regime"]
    assert not v["confident"] and "2 of 3 held-out sets (a, b)" in v["flags"][-1] and "--max-fraction ≥" in v["advice"]
    # one concave set of three decides nothing for the others
    pts2 = [dict(p, final_loss={**p["final_loss"], "w": p["final_loss"]["v"] * 1.05}) for p in pts]
    per_set = {n: {"regime": fit.regime(pts2, n, target_flops=1e20)} for n in ("v", "w", "a")}
    predict.ladder_regime(per_set)
    assert per_set["v"]["regime"]["confident"] and per_set["w"]["regime"]["confident"]
    assert not per_set["a"]["regime"]["confident"]
