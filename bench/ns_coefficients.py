"""Muon's Newton-Schulz schedules: fit them, and measure each against Keller Jordan's on real updates.

    python bench/ns_coefficients.py                          # fit, then the 20M shape's updates (d=512, L=5)
    python bench/ns_coefficients.py --width 256 --depth 4    # the 5M shape

1. Fit: each iteration's odd quintic p(x) = a x + b x³ + c x⁵ minimises max |1 - p(σ)| over the interval
   the singular values are in (a linear programme over a dense grid), and the next interval is
   [min p, max p] (Polar Express's greedy construction, Amsel et al. 2025); the first interval is [l, 1]
   (the iteration divides by the Frobenius norm, so σ ≤ 1). Printed as `optim.NS_SCHEDULES` holds them,
   with a check that the table is the fit, and each schedule's band on [l, 1] against Jordan's.
2. Real updates: the Nesterov momentum Muon orthogonalises, from a short run of the `cpu` preset's
   recipe at the given shape; for each schedule, the error to the exact orthogonal factor U Vᵀ (SVD,
   float64), and the optimizer step's time against Jordan's in interleaved rounds (median), on the path
   an fp32 compiled run takes (the Gram-matrix iteration).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linprog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_vs_peers import cpu_info, shape_args  # noqa: E402

from glassgpt import config as config_mod  # noqa: E402
from glassgpt.data.shards import Corpus, Loader, prepare  # noqa: E402
from glassgpt.model.gpt import build  # noqa: E402
from glassgpt.train import optim  # noqa: E402

LOWER = {"minimax5": 1e-3, "minimax4": 3e-3, "minimax3": 1e-2}  # the l each schedule is fitted from


def fit_step(lo: float, hi: float, n: int = 4000) -> tuple[float, float, float]:
    """The odd quintic closest to 1 in the worst case on [lo, hi]: minimise t with |1 - p(x)| <= t."""
    x = np.concatenate([np.geomspace(lo, hi, n), np.linspace(lo, hi, n)])
    V = np.stack([x, x**3, x**5], 1)
    ones = np.ones((len(x), 1))
    res = linprog([0, 0, 0, 1], A_ub=np.vstack([np.hstack([-V, -ones]), np.hstack([V, -ones])]),
                  b_ub=np.concatenate([-ones[:, 0], ones[:, 0]]), bounds=[(None, None)] * 3 + [(0, None)],
                  method="highs")
    return tuple(res.x[:3])


def fit(steps: int, lo: float) -> list[tuple[float, float, float]]:
    out, hi = [], 1.0
    for _ in range(steps):
        abc = fit_step(lo, hi)
        out.append(abc)
        lo, hi = band([abc], lo, hi)
    return out


def band(coefs, lo: float, hi: float = 1.0) -> tuple[float, float]:
    """Where the schedule (a list of (a, b, c)) sends the singular values in [lo, hi]."""
    x = np.concatenate([np.geomspace(lo, hi, 20000), np.linspace(lo, hi, 20000)])
    for a, b, c in coefs:
        x = a * x + b * x**3 + c * x**5
    return float(x.min()), float(x.max())


def momenta(a) -> list[torch.Tensor]:
    """The stacks of same-shaped matrices Muon orthogonalises at the last step of a short run of the cpu
    preset's recipe, taken from the optimizer's own call."""
    cfg = config_mod.load("cpu", [f"model.width={a.width}", f"model.depth={a.depth}", f"model.head_dim={a.head_dim}",
                                  f"model.seq_len={a.seq}", f"train.batch_size={a.batch}"])
    corpus = Corpus(prepare(cfg.data))
    cfg.model.vocab_size = corpus.tokenizer.vocab_size
    model = build(cfg.model, seed=0)
    opts = optim.build_optimizers(model, cfg)
    loader = Loader(corpus.split("train", a.seq), a.batch, 0)

    def step(it):
        optim.set_lr(opts, optim.lr_multiplier(it, 10 * a.steps, cfg.train.schedule, cfg.train.warmup_frac,
                                               cfg.train.cooldown_frac))
        batch = torch.from_numpy(loader.batch(it))
        model(batch[:, :-1], batch[:, 1:]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)

    for it in range(a.steps - 1):
        step(it)
    stacks, plain = [], optim.zeropower_newton_schulz  # the last step records what Muon hands Newton-Schulz
    optim.zeropower_newton_schulz = lambda g, *rest: (stacks.append(g.clone()), plain(g, *rest))[1]
    try:
        step(a.steps - 1)
    finally:
        optim.zeropower_newton_schulz = plain
    return stacks


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shape_args(p)
    p.add_argument("--steps", type=int, default=40, help="training steps before the momenta are taken")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)

    print(cpu_info())
    print("fitted schedules (as optim.NS_SCHEDULES holds them, 4 decimals):")
    for name, lo in LOWER.items():
        coefs = [tuple(round(float(v), 4) for v in abc) for abc in fit(int(name[-1]), lo)]
        same = [tuple(abc) for abc in optim.NS_SCHEDULES[name]] == coefs
        print(f"  {name} (l={lo:g}): {coefs}  {'= the table' if same else '!= the table'}")
    print("band of the singular values in [l, 1] after the schedule (the table's own coefficients):")
    for name in optim.NS_SCHEDULES:
        for lo in sorted(set(LOWER.values())):
            lo_j, hi_j = band(optim.NS_SCHEDULES["jordan"], lo)
            b_lo, b_hi = band(optim.NS_SCHEDULES[name], lo)
            print(f"  {name:9s} l={lo:<6g} [{b_lo:.3f}, {b_hi:.3f}]  worst |1-σ| {max(1 - b_lo, b_hi - 1):.3f}"
                  f" (jordan {max(1 - lo_j, hi_j - 1):.3f})")

    torch.manual_seed(0)
    stacks = momenta(a)
    gs = [g for s in stacks for g in s]
    print(f"\nreal updates: {len(gs)} matrices after {a.steps} steps at d={a.width}, L={a.depth}, B={a.batch}, T={a.seq}")
    polar, sv = [], []
    for g in gs:
        u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
        polar.append(u @ vh)
        sv.append(s / s.norm())  # as the iteration sees them after its Frobenius normalisation
    sv = torch.cat(sv)
    print("  normalised singular values: " + ", ".join(f"{q:.0%} {float(torch.quantile(sv, q)):.2g}"
                                                         for q in (0.1, 0.5, 0.9)))
    times = {name: [] for name in optim.NS_SCHEDULES}
    for _ in range(a.rounds):
        for name in times:
            t0 = time.perf_counter()
            for s in stacks:
                optim.zeropower_newton_schulz(s, name, gram=True)
            times[name].append(time.perf_counter() - t0)
    print(f"  {'schedule':10s} {'|NS - UVᵀ| / |UVᵀ|':>20s} {'ms/step (Gram path)':>20s} {'vs jordan':>10s}")
    for name in optim.NS_SCHEDULES:
        err = statistics.mean(float((optim.zeropower_newton_schulz(g, name).double() - q).norm() / q.norm())
                              for g, q in zip(gs, polar))
        ms = statistics.median(times[name]) * 1e3
        print(f"  {name:10s} {err:20.3f} {ms:20.1f} {statistics.median(times['jordan']) * 1e3 / ms:9.2f}x")


if __name__ == "__main__":
    main()
