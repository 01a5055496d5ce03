"""Fits for the ladder, the regime check and the leave-largest-out test.

Two laws, both fitted in log space as a log-sum-exp (the corrected Chinchilla "approach 3",
Besiroglu et al. 2024): Huber loss (δ = 1e-3) on log-loss residuals, summed over points,
L-BFGS from the best starts of a grid.

- `line`:       L(C)    = exp(a)·C^(−k) + exp(e)         on the target's tokens-per-parameter line
- `frontier`:   L(C), the same law                        on the compute frontier (reported only)
- `chinchilla`: L(N, D) = exp(e) + exp(a)/N^α + exp(b)/D^β  on every point

C and N are the laws' own coordinates (`compute`): N counts the transformer blocks' parameters and
C = 6·N·D, not the exact FLOPs that budgets and fractions use.

A 90% interval (`interval`) adds to a bootstrap over points (all resamples optimised together as
one batched problem) the law's own extrapolation error, measured by a rolling-origin backtest
inside the ladder (`backtest`), and the rungs' seed scatter. A fit is refused as degenerate when
its irreducible term is at or above the lowest observed loss, an exponent leaves (0.01, 3), or
L-BFGS did not converge.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import torch

from glassgpt.errors import ScalingError

log = logging.getLogger(__name__)

DELTA = 1e-3
MIN_LINE_SIZES = 5  # the minimum ladder: 5 sizes
MIN_ORIGIN_SIZES = 4  # a backtest fits at least 4 sizes: one more than the 3 parameters along compute
EXP_RANGE = (0.01, 3.0)


def _huber(r: torch.Tensor, delta: float = DELTA) -> torch.Tensor:
    a = r.abs()
    return torch.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _logpred(kind: str, th: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """th [B, P], X [n, k] (log features) → log L̂ [B, n]."""
    if kind == "compute":
        a, k, e = th[:, 0:1], th[:, 1:2], th[:, 2:3]
        terms = torch.stack([a - k * X[None, :, 0], e.expand(-1, X.shape[0])], -1)
    else:
        a, b, e, al, be = (th[:, i : i + 1] for i in range(5))
        terms = torch.stack([a - al * X[None, :, 0], b - be * X[None, :, 1], e.expand(-1, X.shape[0])], -1)
    return torch.logsumexp(terms, -1)


GRIDS = {
    "compute": [[0.0, 5.0, 10.0, 15.0, 20.0, 25.0], [0.05, 0.1, 0.2, 0.4, 0.8], [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]],
    "chinchilla": [[0.0, 5.0, 10.0, 15.0, 20.0, 25.0], [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
                   [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5], [0.05, 0.2, 0.4, 0.7, 1.0], [0.05, 0.2, 0.4, 0.7, 1.0]],
}


def _objective(kind, th, X, logy, w):
    # scaled by 1/δ² (same minimiser): values of order one, so L-BFGS tolerances mean something
    return (w * _huber(_logpred(kind, th, X) - logy[None])).sum() / DELTA ** 2


def _lbfgs(kind, th0, X, logy, w, max_iter=150) -> tuple[torch.Tensor, float]:
    th = th0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([th], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-10,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _objective(kind, th, X, logy, w)
        loss.backward()
        return loss

    opt.step(closure)
    th.grad = None
    loss = _objective(kind, th, X, logy, w)
    loss.backward()
    gnorm = float(th.grad.abs().max())
    return th.detach(), gnorm


def _features(kind, N=None, D=None, C=None) -> torch.Tensor:
    if kind == "compute":
        return torch.tensor(np.log(np.asarray(C, dtype=np.float64)))[:, None]
    return torch.tensor(np.stack([np.log(np.asarray(N, dtype=np.float64)), np.log(np.asarray(D, dtype=np.float64))], 1))


def params_dict(kind: str, th) -> dict:
    th = [float(v) for v in th]
    if kind == "compute":
        return {"a": math.exp(th[0]), "b": -th[1], "c": math.exp(th[2]), "form": "L(C) = a·C^b + c, C = 6·N_blocks·D"}
    return {"E": math.exp(th[2]), "A": math.exp(th[0]), "alpha": th[3], "B": math.exp(th[1]), "beta": th[4],
            "form": "L(N, D) = E + A/N^alpha + B/D^beta, N = block parameters"}


def degenerate(kind: str, th, min_loss: float, gnorm: float) -> str | None:
    p = params_dict(kind, th)
    floor = p["c"] if kind == "compute" else p["E"]
    exps = [-p["b"]] if kind == "compute" else [p["alpha"], p["beta"]]
    if not all(math.isfinite(v) for v in th) or not math.isfinite(gnorm) or gnorm > 0:
        return "L-BFGS did not converge; add rungs or widen the ladder's compute span"
    if floor >= min_loss * (1 - 1e-3):
        return (f"irreducible term {floor:.4f} ≥ the lowest observed loss {min_loss:.4f}: the rungs sit on a plateau; "
                "use larger rungs (raise --max-fraction)")
    bad = [x for x in exps if not (EXP_RANGE[0] < x < EXP_RANGE[1])]
    if bad:
        return (f"exponent {bad[0]:.3g} outside {EXP_RANGE}: the points do not follow a power law; "
                "use more rung sizes spanning more compute")
    return None


def fit(kind: str, y, N=None, D=None, C=None, n_boot: int = 100, top_k: int = 4, seed: int = 0) -> dict:
    """Fit one law; returns params, residual RMS, the fitted theta and bootstrap thetas."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    n_par = 3 if kind == "compute" else 5
    if n < n_par + 1:
        raise ScalingError(f"{n} points are too few to fit {kind} ({n_par} parameters); the ladder needs more surviving rungs")
    X = _features(kind, N, D, C)
    logy = torch.tensor(np.log(y))
    grid = torch.tensor(list(itertools.product(*GRIDS[kind])), dtype=torch.float64)
    with torch.no_grad():
        obj = _huber(_logpred(kind, grid, X) - logy[None]).sum(1)
    starts = grid[torch.argsort(obj)[:top_k]]
    # a short run from each start, then polish the best
    ths = torch.cat([_lbfgs(kind, s[None], X, logy, torch.ones(1, n, dtype=torch.float64), max_iter=60)[0]
                     for s in starts])
    with torch.no_grad():
        objs = _huber(_logpred(kind, ths, X) - logy[None]).sum(1)
    objs = torch.where(torch.isfinite(objs), objs, torch.full_like(objs, float("inf")))
    ones = torch.ones(1, n, dtype=torch.float64)
    best, best_g = _lbfgs(kind, ths[int(torch.argmin(objs))][None], X, logy, ones, max_iter=400)
    best_obj = float(_objective(kind, best, X, logy, ones))
    # converged: a further polish no longer moves the objective (the gradient can stay large in
    # Huber's linear region, so it is not the test)
    again, g2 = _lbfgs(kind, best, X, logy, ones, max_iter=200)
    obj2 = float(_objective(kind, again, X, logy, ones))
    stalled = math.isfinite(obj2) and abs(obj2 - best_obj) <= 1e-4 + 1e-4 * abs(best_obj)
    if math.isfinite(obj2) and obj2 <= best_obj:
        best, best_obj = again, obj2
    best_g = 0.0 if stalled else max(g2, 1.0)
    resid = (_logpred(kind, best, X)[0] - logy).detach().numpy()
    out = {"kind": kind, "theta": best[0].tolist(), "params": params_dict(kind, best[0]), "objective": best_obj,
           "converged": best_g == 0.0, "rms_log_residual": float(np.sqrt(np.mean(resid ** 2))), "n_points": n,
           "min_loss": float(y.min())}
    out["refused"] = degenerate(kind, best[0].tolist(), float(y.min()), best_g)
    if n_boot:
        rng = np.random.default_rng(seed)
        w = torch.tensor(np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]),
                         dtype=torch.float64)
        th_b, _ = _lbfgs(kind, best.expand(n_boot, -1).clone(), X, logy, w)
        out["boot_theta"] = th_b.tolist()
    return out


def predict(f: dict, N=None, D=None, C=None) -> tuple[float, list[float] | None]:
    """(point prediction, [5%, 95%] bootstrap interval) of the loss."""
    kind = f["kind"]
    X = _features(kind, [N] if N is not None else None, [D] if D is not None else None, [C] if C is not None else None)
    with torch.no_grad():
        mid = float(torch.exp(_logpred(kind, torch.tensor([f["theta"]], dtype=torch.float64), X))[0, 0])
        ci = None
        if f.get("boot_theta"):
            b = torch.exp(_logpred(kind, torch.tensor(f["boot_theta"], dtype=torch.float64), X))[:, 0].numpy()
            b = b[np.isfinite(b)]
            ci = [float(np.percentile(b, 5)), float(np.percentile(b, 95))]
    return mid, ci


def frontier(points: list[dict], key) -> list[dict]:
    """The compute frontier: points whose loss is below every point of smaller or equal compute."""
    out, best = [], float("inf")
    for p in sorted(points, key=lambda p: (compute(p), key(p))):
        if key(p) < best:
            out.append(p)
            best = key(p)
    return out


def on_line(points: list[dict], ratio: float | None = None, tokens: float | None = None) -> list[dict]:
    """Each size's point made "with the same methodology" as the target, by compute: the one
    nearest the target's tokens-per-parameter line (D = ratio·N), or with `tokens`, the one nearest
    the target's own token count (an iso-token ladder). With neither, the second-largest budget
    of each size (the planner's ratio 1 of ¼, ½, 1, 2)."""
    groups: dict[int, list[dict]] = {}
    for p in points:
        groups.setdefault(p["params_non_embedding"], []).append(p)
    line = []
    for n, ps in sorted(groups.items()):
        ps = sorted(ps, key=lambda p: p["tokens"])
        if tokens or ratio:
            want = tokens or ratio * n
            best = min(ps, key=lambda p: abs(math.log(p["tokens"] / want)))
            if abs(math.log(best["tokens"] / want)) <= math.log(1.5):  # a size with no run near the line has none on it
                line.append(best)
        else:
            line.append(ps[min(len(ps) - 1, max(0, len(ps) - 2))] if len(ps) >= 3 else ps[-1])
    return sorted(line, key=lambda p: p["flops"])


def line_of(target: dict, kind: str | None) -> dict:
    """`on_line`'s arguments for a target (params_non_embedding, tokens) and a ladder's line kind:
    its tokens per parameter ("ratio", the default) or its own tokens ("tokens", iso-token)."""
    if kind == "tokens":
        return {"tokens": target["tokens"]}
    return {"ratio": target["tokens"] / target["params_non_embedding"]}


# The fits: "line" and "frontier" are L(C); "chinchilla" is L(N, D). The line fit predicts a target
# trained like its rungs (GPT-4's "same methodology"); the frontier fit predicts the best loss any
# size reaches at that compute, which is the target's only when the target is compute-optimal.
FITS = ("line", "chinchilla", "frontier")
CHOOSABLE = ("line", "chinchilla")


COMPUTE_AXIS = "6·N_blocks·D"  # recorded in prediction.json: the coordinate its L(C) thetas are in


def compute(p: dict) -> float:
    """The laws' compute coordinate: C = 6·N·D with N the transformer blocks' parameters only —
    neither the token embedding nor the LM head (Kaplan et al. 2020's non-embedding N, their head
    being tied) — and without attention's T×T products. Budgets and fractions stay in exact FLOPs.
    Why: in a small rung the vocabulary matrices and attention's T×T products hold most of the FLOPs
    and grow only linearly with width, so exact FLOPs squeeze the small end of the axis and the
    fitted curve flattens too early (docs/devlog.md, 2026-11-30: the laws' compute axis)."""
    return 6.0 * p["params_blocks"] * p["tokens"]


def _fit_points(kind: str, pts: list[dict], name: str, n_boot: int) -> dict:
    loss = [p["final_loss"][name] for p in pts]
    if kind == "chinchilla":
        return fit("chinchilla", loss, N=[p["params_blocks"] for p in pts], D=[p["tokens"] for p in pts], n_boot=n_boot)
    return fit("compute", loss, C=[compute(p) for p in pts], n_boot=n_boot)


def select(kind: str, points: list[dict], name: str, ratio: float | None, tokens: float | None = None) -> list[dict]:
    """The points a fit uses: the line, the frontier, or all of them."""
    if kind == "line":
        return on_line(points, ratio, tokens)
    if kind == "frontier":
        return frontier(points, lambda p: p["final_loss"][name])
    return points


def predict_at(f: dict, kind: str, p: dict):
    """A fit's prediction for a run `p` (params_blocks, tokens)."""
    return predict(f, N=p["params_blocks"], D=p["tokens"]) if kind == "chinchilla" else predict(f, C=compute(p))


def fit_set(points: list[dict], name: str, n_boot: int = 100, ratio: float | None = None,
            tokens: float | None = None) -> dict:
    """The three fits for one held-out set, each with its rolling-origin backtest (`backtest`) and
    its leave-the-largest-size-out error: the backtest's last origin (fitted without the largest
    size on the line) predicting that size's point on the line."""
    res = {}
    for kind in FITS:
        try:
            f = _fit_points(kind, select(kind, points, name, ratio, tokens), name, n_boot)
        except ScalingError as e:
            res[kind] = {"kind": kind, "refused": str(e)}
            continue
        f["backtest"] = backtest(points, name, kind, ratio, tokens)
        last = max((b["origin"] for b in f["backtest"]), default=None)
        n_line = len(on_line(points, ratio, tokens))
        if last == n_line - 1:
            b = next(b for b in f["backtest"] if b["origin"] == last)
            f["leave_largest_out"] = {"predicted": b["predicted"], "actual": b["actual"],
                                      "relative_error": b["predicted"] / b["actual"] - 1}
        else:
            f["leave_largest_out"] = {"refused": f"leaving the largest size out needs {MIN_ORIGIN_SIZES + 1} sizes "
                                                 f"on the line that the {kind} fit can use: add rungs"}
        res[kind] = f
    return res


def backtest(points: list[dict], name: str, kind: str, ratio: float | None = None,
             tokens: float | None = None) -> list[dict]:
    """Rolling-origin backtest of one law inside the ladder. For each prefix of at least
    `MIN_ORIGIN_SIZES` sizes on the target's line (an *origin*: its largest size), fit the points
    of those sizes only (the same `fit`, no bootstrap) and predict every larger size's line point.
    Each miss is kept with its *reach*, ln(compute predicted / compute of the origin's largest
    point): how far that extrapolation went. Fewer sizes cannot test a law along compute: both laws
    spend 3 parameters on it (a, k, c; E, A, α), and with 2 sizes A and α are not even identified,
    so such a "miss" is the optimiser's whim, not the law's error."""
    line = on_line(points, ratio, tokens)
    out = []
    for m in range(MIN_ORIGIN_SIZES, len(line)):
        top = line[m - 1]
        sub = [p for p in points if p["params_non_embedding"] <= top["params_non_embedding"]]
        try:
            g = _fit_points(kind, select(kind, sub, name, ratio, tokens), name, 0)
        except ScalingError:  # too few points for this law yet
            continue
        for q in line[m:]:
            pred, _ = predict_at(g, kind, q)
            if math.isfinite(pred) and pred > 0:
                out.append({"origin": m, "reach": math.log(compute(q) / compute(top)), "predicted": pred,
                            "actual": q["final_loss"][name], "log_error": math.log(pred / q["final_loss"][name])})
    return out


# Student's t, upper 5% point (a two-sided 90% interval), by degrees of freedom; the value at the
# largest tabulated dof not above the one asked for (conservative in between)
_T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812,
        12: 1.782, 15: 1.753, 20: 1.725, 30: 1.697, 60: 1.671, 120: 1.658}


def t95(dof: int) -> float:
    if dof < 1:
        return math.inf
    return _T95[max(k for k in _T95 if k <= dof)]


def interval(f: dict, mid: float, boot_ci: list[float] | None, reach: float) -> dict:
    """The 90% interval of the target's loss from a fit `f` (with `f["backtest"]`), its point
    prediction `mid`, the bootstrap interval and the target's reach: ln(target compute / compute of
    the largest point on the line).

    Why: a bootstrap over 5–7 points sees only how much the fitted parameters move; it knows
    nothing of the law being wrong when extrapolated (the cpu bench: 5 of 36 covered). So three
    independent errors add (in log loss, half-widths in quadrature):

    - fit noise: the bootstrap's half-width on each side;
    - model error: the rolling-origin backtest (`backtest`) measures, inside the ladder, how far
      off the law lands per e-fold of compute it extrapolates: rate = RMS(log miss / reach) over
      every (origin, later size) pair; at the target, σ_model = rate · reach (misses grow about
      linearly with reach in the bench's ladders). The rate is estimated from k origins, so its
      upper 5% point is Student's t with k dof (k = 1, the bare leave-largest-out: t = 6.3 — one
      miss cannot vouch for an extrapolation);
    - seed noise: the target is one more run with its own seed, scattered about the law as the
      rungs are; σ_noise = the fit's RMS log residual · √(n/(n−p)) (on the cpu bench 0.3–0.8%,
      as the same rung's spread over three seeds, 0.1–1.3%), with Student's t at n − p dof.

    The backtest misses hold the rungs' seed noise too, so σ_model is, if anything, too large at
    short reach; it is kept whole (subtracting the noise emptied it at 3 sizes on the bench).

    Without any backtest (fewer than 5 sizes) the model error is unknown and left out: the
    interval then covers fit and seed noise only and says so (`note`); the regime check already
    refuses such a ladder a confident prediction."""
    n_par = 5 if f["kind"] == "chinchilla" else 3
    sigma_noise = f["rms_log_residual"] * math.sqrt(f["n_points"] / (f["n_points"] - n_par))  # fit needs n > p
    lo, hi = boot_ci if boot_ci else (mid, mid)
    b_lo, b_hi = math.log(mid / min(lo, mid)), math.log(max(hi, mid) / mid)
    bt = f.get("backtest") or []
    out = {"reach": reach, "sigma_noise": sigma_noise, "ci90_bootstrap": [min(lo, mid), max(hi, mid)],
           "n_backtests": len(bt), "drift": {}}
    if bt:
        rates = [b["log_error"] / b["reach"] for b in bt]
        dof = len({b["origin"] for b in bt})
        rate = math.sqrt(sum(r * r for r in rates) / len(rates))
        sigma_model, t = rate * max(reach, 0.0), t95(dof)
        last = max(b["origin"] for b in bt)
        llo = next(b for b in bt if b["origin"] == last)
        # candidate drift corrections of the point prediction (not applied unless asked: see analyse)
        out["drift"] = {"llo": mid * math.exp(-llo["log_error"] / llo["reach"] * reach),
                        "backtest": mid * math.exp(-sum(rates) / len(rates) * reach)}
        out.update({"error_per_efold": rate, "sigma_model": sigma_model, "t_model": t, "dof": dof})
    else:
        sigma_model, t = 0.0, 0.0
        out.update({"error_per_efold": None, "sigma_model": None, "t_model": None, "dof": 0,
                    "note": f"no backtest possible (fewer than {MIN_ORIGIN_SIZES + 1} sizes): the interval holds fit "
                            "and seed noise only, not the law's own error"})
    extra = (t * sigma_model) ** 2 + (t95(f["n_points"] - n_par) * sigma_noise) ** 2
    out["ci90"] = [mid * math.exp(-math.sqrt(b_lo ** 2 + extra)), mid * math.exp(math.sqrt(b_hi ** 2 + extra))]
    return out


def regime(points: list[dict], name: str, target_flops: float, span_decades: float = 1.5,
           llo_error: float | None = None, llo_tolerance: float = 0.01, ratio: float | None = None,
           tokens: float | None = None, reference: float | None = None, reference_margin: float = 0.05) -> dict:
    """Is the ladder in the power-law regime? Local slopes d ln L / d ln C along the sizes (each
    at its budget nearest the target's tokens-per-parameter line), their trend and the
    leave-largest-out miss. A power law with an irreducible term has slopes that flatten as C
    grows (convex in log-log); slopes that *steepen* towards the largest rung mean the ladder
    sits on a plateau before a transition it cannot see past. `reference`: the set's loss under a
    count-based bigram model of the corpus (shards.bigram_losses); a largest rung within
    `reference_margin` of it has learned token pairs only and sits on the plateau."""
    line = on_line(points, ratio, tokens)
    x = np.log([compute(p) for p in line])
    y = np.log([p["final_loss"][name] for p in line])
    out = {"set": name, "line": [{"flops": p["flops"], "compute": compute(p), "loss": p["final_loss"][name]} for p in line],
           "flags": []}
    if len(line) < 3:
        out["flags"].append("fewer than 3 sizes survive: no regime check possible")
        out["confident"] = False
        return out
    slopes = np.diff(y) / np.diff(x)
    out["local_slopes"] = [float(s) for s in slopes]
    if len(line) < MIN_LINE_SIZES:
        # a 3-parameter law through 3–4 points fits anything (cpu bench: confident at 1/20, 12–19% off)
        out["flags"].append(f"only {len(line)} sizes on the target's line; a confident prediction needs {MIN_LINE_SIZES}")
    h = len(line) // 2
    lo_slope = float(np.polyfit(x[: h + 1], y[: h + 1], 1)[0])
    hi_slope = float(np.polyfit(x[h:], y[h:], 1)[0])
    curv = float(np.polyfit(x, y, 2)[0]) if len(line) >= 4 else 0.0
    out.update({"slope_small": lo_slope, "slope_large": hi_slope, "curvature": curv})
    steep = -hi_slope > 1.5 * max(-lo_slope, 0.0) + 0.01
    if steep:
        out["flags"].append(f"the local slope steepens from {lo_slope:.3f} (small rungs) to {hi_slope:.3f} (large): "
                            "the rungs sit on a plateau before a transition")
    # The sign of the quadratic term of ln L over ln C: a power law with a floor is convex. On the GPU
    # ladders (docs/devlog.md, 2026-11-29: the first GPU lease) a steady steepening too gradual for the slope test above
    # left 9 predictions 41–94% high called confident; every one had curvature < 0, every cpu-bench
    # ladder at 1/3–1/10 (errors 0–7.5%) > 0.
    concave = len(line) >= 4 and curv <= 0 and not steep
    if concave:
        out["flags"].append(f"ln L is concave in ln C along the line (curvature {curv:+.4f}); a power law with an "
                            "irreducible term is convex: the rungs sit before a transition")
    # On the cpu bench the top rung beat the bigram by ~7% at 1/10 (errors 0–7%) and by −2% to +0.5% at
    # 1/20 (errors 3–19%); one threshold from one preset: a floor, not a calibration.
    near_bigram = False
    if reference is not None:
        margin = 1 - math.exp(y[-1]) / reference
        out.update({"bigram_reference": reference, "bigram_margin": margin})
        near_bigram = margin < reference_margin
        if near_bigram:
            out["flags"].append(f"the largest rung ({math.exp(y[-1]):.3f} nats) beats a bigram model of the corpus "
                                f"({reference:.3f}) by {margin:.1%} (< {reference_margin:.0%}): token pairs only, a plateau")
    flat = abs(float(np.polyfit(x, y, 1)[0])) < 0.01
    if flat:
        out["flags"].append("loss is flat across the ladder (slope > −0.01): a plateau")
    out["transient"] = bool(steep or concave or near_bigram or flat)  # the line's shape, not its fit, says so
    if llo_error is not None and abs(llo_error) > llo_tolerance:
        out["flags"].append(f"leaving the largest size out misses it by {llo_error:+.1%} (tolerance {llo_tolerance:.0%})")
    out["confident"] = not out["flags"]
    if out["flags"]:
        # the bend is at or beyond the largest rung: the rungs must start there and span the decades above
        c_top = float(line[-1]["flops"])
        need = c_top * 10 ** span_decades
        out["transition_flops_at_least"] = c_top if steep or concave or near_bigram else None
        out["needed_max_run_flops"] = need
        out["needed_max_fraction"] = need / target_flops
        out["advice"] = (f"rungs are not in the power-law regime; make the smallest rung ≥ {c_top:.3g} FLOPs, i.e. "
                         f"--max-fraction ≥ {need / target_flops:.3g}" +
                         (" (above 1: no ladder smaller than this target can see the regime; use a larger target)"
                          if need > target_flops else ""))
    return out
