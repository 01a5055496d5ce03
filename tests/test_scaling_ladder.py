"""Ladder mechanics: plan budgets, resume, divergence, registered prediction and verify.

Most tests swap the trainer for a stand-in that writes a report whose losses follow a known
law (fast, exact); one test trains a real tiny ladder end to end through the CLI."""

import json
import math
from pathlib import Path

import pytest

from glassgpt import cli, config
from glassgpt.errors import ScalingError, TrainingError
from glassgpt.model import flops
from glassgpt.scaling import fit, ladder, predict
from glassgpt.train import trainer

from conftest import load_bench, tiny_overrides

E, A, ALPHA, B, BETA = 1.6, 300.0, 0.3, 350.0, 0.28


def law(N, D):
    return E + A / N ** ALPHA + B / D ** BETA


def fake_report(cfg, out, loss=None):
    m = cfg.model
    m.vocab_size = m.vocab_size or cfg.data.vocab_size
    c = flops.count(m)
    tokens = cfg.train.tokens
    L = law(c.params_blocks, tokens) if loss is None else loss  # exact in the fits' N
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 100.0}) + "\n")
    rep = {"params": c.params, "params_non_embedding": c.params_non_embedding, "params_blocks": c.params_blocks, "tokens": tokens,
           "flops": float(tokens * c.flops_per_token), "seconds": 0.01, "config": cfg.to_dict(),
           "heldout": {"val": {"loss": L, "bpb": L * 0.6, "tokens": 100}}}
    (out / "report.json").write_text(json.dumps(rep))
    return rep


@pytest.fixture
def fake_train(monkeypatch):
    calls = []

    def train(cfg, out, resume=False, branch_from=None, lr_fn=None, save_at=()):
        calls.append((str(out), branch_from))
        return fake_report(cfg, out)

    monkeypatch.setattr(trainer, "train", train)
    # made-up losses: no comparison with a real corpus's bigram model (whether one is cached here or not)
    monkeypatch.setattr(predict, "bigram_references", lambda plan: {})
    return calls


def big_target():
    return config.load("cpu", ["data.vocab_size=1024", "train.tokens=20000000", "model.depth=6"])


def test_plan_respects_budgets_and_shape_family():
    cfg = big_target()
    p = ladder.plan(cfg, max_fraction=1e-2, budget_fraction=5e-2)
    tgt = p["target"]["flops"]
    sizes = p["sizes"]
    assert len(sizes) >= 5
    assert p["max_run_flops"] <= 1e-2 * tgt and p["total_flops"] <= 5e-2 * tgt
    assert max(s["flops"][-1] for s in sizes) / min(s["flops"][-1] for s in sizes) >= 10 ** 1.5 * 0.999
    for s in sizes:
        rc = s["config"]
        assert rc["model"]["seq_len"] == cfg.model.seq_len and rc["data"] == cfg.to_dict()["data"]
        assert rc["train"]["optimizer"] == cfg.train.optimizer and rc["model"]["mlp"] == cfg.model.mlp
        assert rc["model"]["width"] % rc["model"]["head_dim"] == 0 and 2 <= rc["model"]["depth"] <= cfg.model.depth
        assert len(s["budgets"]) == 4 and s["budgets"] == sorted(s["budgets"]) and s["budgets"][0] >= 50
        assert all(st < b for st, b in zip(s["decay_starts"], s["budgets"]))
        assert s["spent_flops"] < sum(s["flops"])  # branching is cheaper than separate runs
    text = ladder.format_plan(p)
    assert "fraction" in text and "est. time" in text


def test_steps_batch_rule_gives_every_line_point_the_targets_steps():
    cfg = config.load("cpu", ["model.aspect=64", "train.tokens=7900000", "train.batch_size=64"])
    target_steps = cfg.train.tokens / (cfg.train.batch_size * cfg.model.seq_len)
    kw = dict(max_fraction=0.2, budget_fraction=0.6, n_sizes=7, width_step=8, min_steps=50)
    steps, halve = ladder.plan(cfg, batch="steps", **kw), ladder.plan(cfg, **kw)
    assert steps["batch"] == "steps" and halve["batch"] == "halve"
    for s in steps["sizes"]:
        line_steps = s["budgets"][2]  # ratios ¼, ½, 1, 2: the third is the line's
        # whole sequences, at least one: the smallest size's rounding is the coarsest
        assert abs(math.log(line_steps / target_steps)) < math.log(1.3)
    # the default rule halves the target's batch instead: its line points' steps spread far wider
    spread = lambda p: max(s["budgets"][2] for s in p["sizes"]) / min(s["budgets"][2] for s in p["sizes"])
    assert spread(steps) < 1.35 < spread(halve)
    with pytest.raises(ScalingError, match="--batch"):
        ladder.plan(cfg, batch="double", **kw)


def test_infeasible_budgets_name_the_smallest_feasible_one():
    cfg = big_target()
    with pytest.raises(ScalingError, match=r"smallest feasible --max-fraction is [0-9.e-]+"):
        ladder.plan(cfg, max_fraction=1e-6, budget_fraction=1e-2)
    with pytest.raises(ScalingError, match=r"smallest feasible --budget-fraction is [0-9.e-]+"):
        ladder.plan(cfg, max_fraction=1e-2, budget_fraction=1.1e-2)
    small = config.load("tiny")
    with pytest.raises(ScalingError, match="max-fraction"):
        ladder.plan(small)


def test_run_resume_skips_finished_rungs_and_shards(tmp_path, fake_train):
    cfg = big_target()
    p = ladder.plan(cfg, max_fraction=1e-2, budget_fraction=5e-2)
    ladder.save_plan(p, tmp_path)
    ladder.run(tmp_path, shard="0/2", capability=False)
    first = len(fake_train)
    coll = ladder.collect(tmp_path)
    assert 0 < sum(x["status"] == "done" for x in coll["points"]) < len(coll["points"])
    ladder.run(tmp_path, shard="1/2", capability=False)
    n_total = len(p["sizes"]) * 5  # a stable run + 4 branches per size
    assert len(fake_train) == n_total and first < n_total
    ladder.run(tmp_path, capability=False)  # everything finished: nothing re-runs
    assert len(fake_train) == n_total
    branch_calls = [c for c in fake_train if c[1] is not None]
    assert all("stable/checkpoints/step_" in str(c[1]) for c in branch_calls)
    with pytest.raises(ScalingError, match="i/n"):
        ladder.run(tmp_path, shard="3")


def test_prediction_registered_before_target_and_verified(tmp_path, fake_train):
    cfg = big_target()
    p = ladder.plan(cfg, max_fraction=1e-2, budget_fraction=5e-2)
    lad = tmp_path / "ladder"
    ladder.save_plan(p, lad)
    ladder.run(lad, capability=False)
    target_dir = tmp_path / "target"
    doc = predict.register(cfg, lad, tmp_path / "prediction.json", target_dir=target_dir, n_boot=5)
    assert doc["sha256"] == predict.content_sha256(doc) and doc["confident"]
    pv = doc["prediction"]["val"]
    # the 90% interval: the bootstrap's, widened by the backtest's model error and the seed noise
    assert pv["ci90"][0] <= pv["ci90_bootstrap"][0] <= pv["loss"] <= pv["ci90_bootstrap"][1] <= pv["ci90"][1]
    # an exact L(N, D) ladder: the chinchilla law backtests to round-off, so the interval stays tight
    assert pv["fit"] == "chinchilla" and pv["interval"]["dof"] >= 1 and pv["interval"]["reach"] > 0
    assert pv["interval"]["sigma_model"] < 1e-6 and pv["ci90"][1] - pv["ci90"][0] < 1e-5 * pv["loss"]
    with pytest.raises(ScalingError, match="never overwritten"):
        predict.register(cfg, lad, tmp_path / "prediction.json", n_boot=0)
    # the target trains only now
    rep = fake_report(config.load("cpu", ["data.vocab_size=1024", "train.tokens=20000000", "model.depth=6"]), target_dir)
    with pytest.raises(ScalingError, match="already started"):
        predict.register(cfg, lad, tmp_path / "p2.json", target_dir=target_dir, n_boot=0)
    r = predict.verify(tmp_path / "prediction.json", target_dir, tmp_path / "out")
    assert abs(r["relative_error"]["val"]) < 1e-3  # the fake ladder follows the law exactly
    assert r["actual"]["val"]["loss"] == pytest.approx(rep["heldout"]["val"]["loss"])
    for key in ("target", "ladder", "prediction", "actual", "relative_error", "capability"):
        assert key in r
    assert set(r["ladder"]) >= {"runs", "max_run_flops", "total_flops"}
    assert set(r["prediction"]["val"]) == {"loss", "ci90", "fit"}
    assert (tmp_path / "out" / "report.md").exists() and (tmp_path / "out" / "scaling.png").stat().st_size > 1000
    # an edited prediction is refused
    d = json.loads((tmp_path / "prediction.json").read_text())
    d["prediction"]["val"]["loss"] *= 0.99
    (tmp_path / "prediction.json").write_text(json.dumps(d))
    with pytest.raises(ScalingError, match="sha256 mismatch"):
        predict.verify(tmp_path / "prediction.json", target_dir, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_plans_and_predictions_from_before_the_block_axis(tmp_path, fake_train):
    """A plan written before `params_blocks` existed still fits the same (counted from the configs); a
    prediction registered before `compute_axis` is drawn on exact FLOPs, as its thetas were fitted."""
    from glassgpt.scaling import plot

    cfg = big_target()
    lad = tmp_path / "ladder"
    ladder.save_plan(ladder.plan(cfg, max_fraction=1e-2, budget_fraction=5e-2), lad)
    ladder.run(lad, capability=False)
    doc = predict.register(cfg, lad, tmp_path / "prediction.json", n_boot=0)
    assert doc["compute_axis"] == fit.COMPUTE_AXIS and doc["target"]["params_blocks"] > 0
    # the plan stores no params_blocks (collect counts it from the configs), so every plan is one "from before"
    assert "params_blocks" not in (lad / "plan.json").read_text()
    assert predict.analyse(lad, n_boot=0)["sets"]["val"]["fits"]["line"]["loss"] > 0
    rep = fake_report(config.load("cpu", ["data.vocab_size=1024", "train.tokens=20000000", "model.depth=6"]), tmp_path / "t")
    old = {k: v for k, v in doc.items() if k != "compute_axis"}
    for r in old["ladder"]["runs"]:
        del r["params_blocks"]
    report = {"target": {"flops": rep["flops"]}, "actual": {"val": {"loss": 3.0}}, "relative_error": {"val": 0.0}}
    assert plot.scaling_png(old, report, tmp_path / "old.png").stat().st_size > 1000


def test_diverged_rungs_excluded_and_too_few_refused(tmp_path, monkeypatch):
    cfg = big_target()
    p = ladder.plan(cfg, max_fraction=1e-2, budget_fraction=5e-2)
    ladder.save_plan(p, tmp_path)
    names = [s["name"] for s in p["sizes"]]
    bad = set(names[:3])  # three sizes diverge: too few survive

    def train(cfg_, out, resume=False, branch_from=None, lr_fn=None, save_at=()):
        size = out.parent.name
        if size == names[3] and "stable" not in str(out):
            return fake_report(cfg_, out, loss=150.0)  # final loss above the start (100): diverged
        if size in bad:
            raise TrainingError("loss became nan at step 3")
        return fake_report(cfg_, out)

    monkeypatch.setattr(trainer, "train", train)
    ladder.run(tmp_path, capability=False)
    coll = ladder.collect(tmp_path)
    div = [x for x in coll["points"] if x["status"] == "diverged"]
    assert len(div) == 4 * 4 and all(x.get("reason") for x in div)
    with pytest.raises(ScalingError, match="survived"):
        predict.register(cfg, tmp_path, tmp_path / "prediction.json", n_boot=0)
    assert not (tmp_path / "prediction.json").exists()


def test_unconfident_prediction_refused_without_flag(tmp_path, monkeypatch):
    cfg = big_target()
    p = ladder.plan(cfg, max_fraction=1e-2, budget_fraction=5e-2)
    ladder.save_plan(p, tmp_path)

    def train(cfg_, out, resume=False, branch_from=None, lr_fn=None, save_at=()):  # a plateau, then a drop
        c = flops.count(cfg_.model if cfg_.model.vocab_size else config.load(None, []).model)
        n = cfg_.model.width
        L = 3.0 - 0.01 * math.log(n) - (0.3 * math.log(n / 40) ** 2 if n > 40 else 0) - 1e-9 * cfg_.train.tokens
        return fake_report(cfg_, out, loss=L)

    monkeypatch.setattr(trainer, "train", train)
    ladder.run(tmp_path, capability=False)
    with pytest.raises(ScalingError, match="no confident prediction"):
        predict.register(cfg, tmp_path, tmp_path / "prediction.json", n_boot=0)
    assert not (tmp_path / "prediction.json").exists()


def test_cli_plan_and_errors(capsys, tmp_path):
    # the flags override the cpu preset's own (iso-token) ladder: a ratio line of 6 sizes
    rc = cli.main(["ladder", "plan", "--target", "cpu", "--data.vocab_size=1024", "--train.tokens=20000000",
                   "--model.depth=6", "--max-fraction", "1e-2", "--budget-fraction", "5e-2", "--ladder", str(tmp_path),
                   "--line", "ratio", "--ratios", "0.25,0.5,1,2", "--sizes", "6", "--min-steps", "50", "--width-step", "16"])
    out = capsys.readouterr().out
    assert rc == 0 and "largest rung" in out and (tmp_path / "plan.json").exists()
    p = ladder.load_plan(tmp_path)
    assert p["line"] == "ratio" and p["max_fraction"] == 1e-2 and all(s["width"] % 16 == 0 for s in p["sizes"])
    rc = cli.main(["ladder", "plan", "--target", "tiny", "--max-fraction", "1e-3", "--budget-fraction", "1e-2",
                   "--min-steps", "50", "--width-step", "16"])
    err = capsys.readouterr().err
    assert rc == 2 and "larger target" in err and "Traceback" not in err
    rc = cli.main(["verify", "--prediction", str(tmp_path / "nope.json"), "--run", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no prediction" in capsys.readouterr().err
    for bad in ("1,x", "1", "0,1"):
        rc = cli.main(["ladder", "plan", "--target", "cpu", "--ratios", bad])
        err = capsys.readouterr().err
        assert rc == 2 and "--ratios" in err and "Traceback" not in err


@pytest.mark.slow
def test_real_tiny_ladder_end_to_end(tmp_path, corpus_dir, cache_dir):
    """Train a real (tiny) ladder, register, train the target, verify: the same code path as speedrun."""
    ov = tiny_overrides(corpus_dir, cache_dir, train__tokens=60000, model__seq_len=32)
    cfg = config.load(None, ov)
    p = ladder.plan(cfg, max_fraction=0.9, budget_fraction=3.0, n_sizes=5, ratios=(0.5, 1.0), min_steps=5, width_step=8)
    lad = tmp_path / "ladder"
    ladder.save_plan(p, lad)
    ladder.run(lad, workers=2, capability=True)  # two worker processes
    coll = ladder.collect(lad)
    assert all(x["status"] == "done" for x in coll["points"])
    # only each size's point on the target's line is scored for capability: the fit reads no other
    scored = {(x["size"], x["tokens"]) for x in coll["points"] if "capability" in x}
    line = ladder.line_budgets(p)
    assert scored == {(x["size"], x["tokens"]) for x in coll["points"]
                      if x["tokens"] == next(s for s in p["sizes"] if s["name"] == x["size"])["tokens_per_step"] * line[x["size"]]}
    assert len(scored) == len(line) >= 1
    # a finished line point left unscored (a crash, an older task version) is scored on the next run
    first = next(x for x in coll["points"] if "capability" in x)
    (Path(first["dir"]) / "capability.json").unlink()
    ladder.run(lad, workers=1, capability=True)
    assert (Path(first["dir"]) / "capability.json").exists()
    stable = lad / "rungs" / p["sizes"][0]["name"] / "stable"
    assert sorted(c.name for c in (stable / "checkpoints").glob("step_*")) == \
        [f"step_{s:07d}" for s in p["sizes"][0]["decay_starts"]]
    doc = predict.register(cfg, lad, tmp_path / "prediction.json", target_dir=tmp_path / "target", n_boot=5,
                           allow_unconfident=True)
    assert "humaneval" in doc["prediction"] and set(doc["prediction"]) <= {"val", "humaneval"}
    trainer.train(cfg, tmp_path / "target")
    r = predict.verify(tmp_path / "prediction.json", tmp_path / "target", tmp_path / "out")
    assert r["registered_before_target"] and set(r["relative_error"]) == set(doc["prediction"])
    assert all(abs(e) < 0.5 for e in r["relative_error"].values())


def test_saving_the_same_plan_again_is_a_no_op(tmp_path):
    cfg = big_target()
    p = ladder.plan(cfg, max_fraction=1e-2, budget_fraction=5e-2)
    ladder.save_plan(p, tmp_path)
    ladder.save_plan(ladder.plan(cfg, max_fraction=1e-2, budget_fraction=5e-2), tmp_path)  # a resumed speedrun
    with pytest.raises(ScalingError, match="another plan"):
        ladder.save_plan(ladder.plan(cfg, max_fraction=5e-3, budget_fraction=5e-2), tmp_path)


def test_capability_registered_and_verified(tmp_path, fake_train, capsys):
    """Rungs whose pass rates follow the GPT-4 form exactly: the registered capability prediction
    matches the target's; a capability.json of the first task version is ignored, not fitted."""
    import numpy as np

    from glassgpt.scaling import capability

    cfg = big_target()
    lad = tmp_path / "ladder"
    ladder.save_plan(ladder.plan(cfg, max_fraction=1e-2, budget_fraction=5e-2), lad)
    ladder.run(lad, capability=False)
    difficulty = np.random.default_rng(0).uniform(0.5, 1.5, 30)

    def score(run_dir, C, alpha=20):  # log pass rates = −difficulty · α · C^(−k), C: the fits' compute
        doc = {"version": capability.VERSION, "tasks": {"stdlib_tests": {"task": "t", "logp": list(-difficulty * alpha * C ** -0.1)}}}
        (Path(run_dir) / "capability.json").write_text(json.dumps(doc))

    pts = ladder.collect(lad)["points"]
    for pt in pts:
        score(pt["dir"], fit.compute(pt))
    (Path(pts[0]["dir"]) / "capability.json").write_text(json.dumps({"task": "old", "logp": [0.0] * 30}))
    assert capability.load(pts[0]["dir"]) is None
    older = tmp_path / "scored_by_v2"  # 512 problems a task: other problem lists, re-scored not mixed
    older.mkdir()
    (older / "capability.json").write_text(json.dumps({"version": 2, "tasks": {"stdlib_tests": {"logp": [0.0]}}}))
    assert capability.load(older) is None
    target_dir = tmp_path / "target"
    rc = cli.main(["predict", "--target", "cpu", "--ladder", str(lad), "--out", str(tmp_path / "prediction.json"),
                   "--n-boot", "0", "--data.vocab_size=1024", "--train.tokens=20000000", "--model.depth=6"])
    assert rc == 0 and "geometric-mean pass rate" in capsys.readouterr().out
    doc = json.loads((tmp_path / "prediction.json").read_text())
    assert doc["capability"]["n_problems"] == 30 and doc["capability"]["k"] == pytest.approx(0.1, rel=1e-6)
    rep = fake_report(config.load("cpu", ["data.vocab_size=1024", "train.tokens=20000000", "model.depth=6"]), target_dir)
    score(target_dir, fit.compute(rep))
    r = predict.verify(tmp_path / "prediction.json", target_dir, tmp_path / "out")
    c = r["capabilities"]["stdlib_tests"]
    assert r["capability"] == c and c["actual"] == pytest.approx(c["predicted"], rel=1e-4)
    assert abs(c["neg_mean_log_pass_error"]) < 1e-4 and 0 < c["max_run_fraction"] <= 1e-2
    assert abs(c["unfiltered"]["neg_mean_log_pass_error"]) < 1e-4 and c["unfiltered"]["n_problems"] == 30
    assert any(line.startswith("capability stdlib_tests") and "no filter" in line for line in predict.headline(r))
    # a prediction registered by the first task version is reported as such, not silently dropped
    old = {k: v for k, v in doc.items() if k not in ("capability_tasks", "sha256")}
    old["sha256"] = predict.content_sha256(old)
    (tmp_path / "old.json").write_text(json.dumps(old))
    r_old = predict.verify(tmp_path / "old.json", target_dir, tmp_path / "out_old")
    assert r_old["capability"]["predicted"] is None and "first capability task" in r_old["capability"]["refused"]
    # problems no rung solves: the GPT-4 form is refused, the unfiltered law is registered and verified
    for pt in pts:
        score(pt["dir"], fit.compute(pt), alpha=600)
    score(target_dir, fit.compute(rep), alpha=600)
    cli.main(["predict", "--target", "cpu", "--ladder", str(lad), "--out", str(tmp_path / "hard.json"),
              "--n-boot", "0", "--data.vocab_size=1024", "--train.tokens=20000000", "--model.depth=6"])
    assert "unfiltered: geometric-mean pass rate" in capsys.readouterr().out
    r_hard = predict.verify(tmp_path / "hard.json", target_dir, tmp_path / "out_hard")
    c = r_hard["capability"]
    assert c["predicted"] is None and "only 0 capability problems" in c["refused"]
    assert abs(c["unfiltered"]["neg_mean_log_pass_error"]) < 1e-4 and c["unfiltered"]["inside_ci90"]
    assert any("refused" in line and "no filter" in line for line in predict.headline(r_hard))


def test_gpu_ladders_bench_merges_the_ladders_of_one_target(tmp_path, fake_train):
    """bench/gpu_ladders.py: sizes of several ladders of one target in one plan (the first ladder wins
    a name), an unfinished budget dropped from its size, ladders of another target refused."""

    bench = load_bench("gpu_ladders")
    cfg = big_target()
    a, b = tmp_path / "a", tmp_path / "b"
    for d, frac in ((a, 1e-2), (b, 3e-2)):
        ladder.save_plan(ladder.plan(cfg, max_fraction=frac, budget_fraction=5 * frac), d)
        ladder.run(d, capability=False)
    pb = ladder.load_plan(b)
    top = max(pb["sizes"], key=lambda s: s["params"])
    (ladder.branch_dir(b, top, top["budgets"][-1]) / "report.json").unlink()  # stopped by the time limit
    merged = bench.merge([a, b], tmp_path / "m")
    names = [s["name"] for s in merged["sizes"]]
    assert len(names) == len(set(names)) == len({s["name"] for s in ladder.load_plan(a)["sizes"] + pb["sizes"]})
    got = next(s for s in merged["sizes"] if s["name"] == top["name"])
    assert got["budgets"] == top["budgets"][:-1] and got["tokens"] == top["tokens"][:-1]
    assert all(x["status"] == "done" for x in ladder.collect(tmp_path / "m")["points"])
    other = tmp_path / "other"
    ladder.save_plan(ladder.plan(config.load("cpu", ["data.vocab_size=1024", "train.tokens=30000000", "model.depth=6"]),
                                 max_fraction=1e-2, budget_fraction=5e-2), other)
    with pytest.raises(SystemExit, match="different targets"):
        bench.merge([a, other], tmp_path / "m2")


def test_capability_bench_leaves_out_an_unscored_line_point(tmp_path, fake_train):
    """bench/capability_accuracy.py: a line point with neither scores nor a checkpoint (a size a time
    limit stopped) is left out with a warning; an unscorable target is still an error."""

    from glassgpt.errors import CheckpointError
    from glassgpt.scaling import capability, fit

    bench = load_bench("capability_accuracy")
    root = tmp_path / "seed0"
    cfg = big_target()
    plan = ladder.plan(cfg, max_fraction=1e-2, budget_fraction=5e-2)
    ladder.save_plan(plan, root / "ladder")
    ladder.run(root / "ladder", capability=False)
    done = [x for x in ladder.collect(root / "ladder")["points"] if x["status"] == "done"]
    line = sorted(fit.on_line(done, **fit.line_of(plan["target"], plan.get("line"))), key=lambda x: x["flops"])

    def scores(run_dir, logp):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        tasks = {t: {"logp": [logp - 0.01 * i for i in range(40)], "greedy": [False] * 40} for t in capability.TASKS}
        (Path(run_dir) / "capability.json").write_text(json.dumps({"version": capability.VERSION, "tasks": tasks}))

    for k, x in enumerate(line[:-1]):  # the largest size's line point stays unscored
        scores(x["dir"], -3.0 + 0.3 * k)
    with pytest.raises(CheckpointError):  # no target scores and no checkpoint to score it from
        bench.rows_for_seed(root, [1e-2])
    scores(root / "target", -0.5)
    rows = bench.rows_for_seed(root, [1e-2])
    assert rows and all(r["max_run_fraction"] == pytest.approx(line[-2]["flops"] / plan["target"]["flops"]) for r in rows)



@pytest.mark.parametrize("preset,overrides", [("cpu", []), ("cpu", ["model.aspect=384"]), ("gpu", []), ("gpu_large", [])])
def test_rung_head_counts_never_fall_as_width_grows(preset, overrides):
    """min(target heads, width / 8) heads: a 12-head target used to get 10 heads of 8 at w80 and 4 of 26
    at w104 (a kink in its loss line); the cpu preset's 4-head rungs are what they were."""
    cfg = config.load(preset, overrides)
    for w in range(8, cfg.model.d_model + 1, 8):
        try:
            m = ladder.rung_shape(cfg.model, w)
        except ScalingError:
            continue
        assert m.n_heads == min(cfg.model.n_heads, w // 8) and m.head_dim % 2 == 0 and m.head_dim >= 8
    if preset == "cpu" and not overrides:  # the bench's ladders keep their shapes
        assert [ladder.rung_shape(cfg.model, w).n_heads for w in (8, 16, 24, 40, 56, 88, 128)] == [1, 2, 3, 4, 4, 4, 4]
        return
    p = ladder.plan(cfg, **({"max_fraction": 0.05, "budget_fraction": 0.2, "line": "tokens", "width_step": 8,
                             "ratios": (0.125, 0.25, 0.5, 1.0), "n_sizes": 9, "min_steps": 20} if preset == "cpu" else {}))
    heads = [s["width"] // s["head_dim"] for s in p["sizes"]]
    assert heads == sorted(heads)


def test_plan_takes_fewer_sizes_when_fewer_fit():
    """n_sizes is a wish: with only 5 widths under the cap (never fewer than min_sizes) the plan takes
    those 5 instead of failing (it crashed on an empty pool)."""
    cfg = config.load("gpu", ["model.depth=8", "data.vocab_size=4096", "train.tokens=200000000"])
    p = ladder.plan(cfg, max_fraction=1e-3, budget_fraction=1e-2, n_sizes=8)
    assert len(p["sizes"]) == 5 and p["max_run_flops"] <= 1e-3 * p["target"]["flops"]


def test_lr_transfer_bench_finds_each_sizes_best_rate(tmp_path, monkeypatch, capsys):
    """bench/lr_transfer.py: one ladder (and target) per multiplier of the swept rate, the knob reaching
    every rung's config; per size the best multiplier and what the rule's own rate (×1) loses. The
    stand-in trainer's loss is the law times a penalty that is least at ×2 for widths under 40 and at ×1 above."""

    def train(cfg, out, resume=False, branch_from=None, lr_fn=None, save_at=()):
        best = 2.0 if cfg.model.d_model < 40 else 1.0
        L = fake_report(cfg, out)["heldout"]["val"]["loss"]  # the law's loss, then the rate's penalty on it
        return fake_report(cfg, out, loss=L * (1 + 0.01 * math.log(cfg.train.adam_lr_mult / best) ** 2))

    monkeypatch.setattr(trainer, "train", train)
    bench = load_bench("lr_transfer")
    monkeypatch.setattr(bench, "train", train)
    with pytest.raises(SystemExit, match="include 1"):
        bench.main(["--preset", "tiny", "--mults", "0.5,2", "--out", str(tmp_path)])
    assert not tmp_path.joinpath("adam_x0.5").exists()  # refused before anything trained
    assert bench.main(["--preset", "tiny", "--knob", "adam", "--mults", "0.5,1,2", "--target", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    plan = ladder.load_plan(tmp_path / "adam_x2" / "ladder")
    assert all(s["config"]["train"]["adam_lr_mult"] == 2.0 for s in plan["sizes"])
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip().startswith(("w", "target"))}
    for s in plan["sizes"]:
        assert rows[s["name"]][4] == ("×2" if s["width"] < 40 else "×1")
    assert rows["target"][4] == "×1" and rows["target"][5] == "+0.00%"
    small = [s for s in plan["sizes"] if s["width"] < 40]
    assert f"×1 best at {len(plan['sizes']) + 1 - len(small)}/{len(plan['sizes']) + 1}" in out

