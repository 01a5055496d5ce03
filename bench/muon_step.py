"""Muon's optimizer step alone: glassgpt's Newton-Schulz paths against torch's own Muon and AdamW.

    python bench/muon_step.py                        # the 20M shape's hidden matrices (d=512, L=5)
    python bench/muon_step.py --width 256 --depth 4  # the 5M shape

The step updates the hidden matrices of a glassgpt model of the given shape (what Muon updates in a
run) from fixed random gradients. Variants, timed in interleaved rounds (median):
- glassgpt Muon, fp32, the plain iteration (what an eager fp32 run takes: the reference arithmetic),
- glassgpt Muon, fp32, the Gram-matrix iteration (what a compiled fp32 run takes),
- glassgpt Muon, bf16 Newton-Schulz (what a bf16 run takes),
- torch.optim.Muon (the peer: torch's own, Newton-Schulz in bf16 always),
  (the two bf16 variants only where the CPU has native bf16, or with --bf16: emulated, they are ~30x slower),
- glassgpt Muon, fp32, Gram path, a block step of block-periodic Muon (train.ns_block; its update differs by design),
- torch.optim.AdamW on the same matrices (the floor: a step without orthogonalisation).
Each Newton-Schulz variant's FLOPs (the plain iteration's count, so rates compare like for like)
are set against a 2048² matmul timed in the run, and each glassgpt update against the plain fp32
one (max |difference| / max |reference|).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_vs_peers import cpu_info, matmul_peak, shape_args  # noqa: E402


def plain_ns_flops(shapes, steps: int = 5) -> float:
    """FLOPs of the plain quintic iteration: per step X Xᵀ, A·A and B·X (m ≤ n)."""
    total = 0
    for r, c in shapes:
        m, n = min(r, c), max(r, c)
        total += steps * (2 * m * m * n + 2 * m**3 + 2 * m * m * n)
    return total


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shape_args(p)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--block", type=int, default=128, help="the block-periodic variant's blocks (train.ns_block); it "
                   "times a block step, the other P-1 of every P")
    p.add_argument("--bf16", action="store_true", help="time the bf16 variants on a CPU without native bf16 too")
    a = p.parse_args(argv)

    from glassgpt.config import Config
    from glassgpt.model.gpt import build
    from glassgpt.train import optim
    from glassgpt.train.dist import flush_denormals, native_bf16, tune_cpu_allocator

    tune_cpu_allocator()
    flush_denormals()
    cfg = Config()
    cfg.model.depth, cfg.model.width, cfg.model.head_dim = a.depth, a.width, a.head_dim
    cfg.model.seq_len, cfg.model.vocab_size = a.seq, a.vocab
    model = build(cfg.model, seed=0)
    _, groups = optim.param_groups(model, cfg)
    hidden = [p for g in groups for p in g["params"]]
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in hidden]
    start = [p.detach().clone() for p in hidden]
    flops = plain_ns_flops([tuple(p.shape) for p in hidden])

    def fresh():
        ps = [torch.nn.Parameter(s.clone()) for s in start]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        return ps

    def glassgpt(bf16=False, gram=False, block=0):
        ps = fresh()
        return ps, optim.Muon([{"params": ps, "lr": 0.02, "weight_decay": 0.0}], ns_bf16=bf16, ns_gram=gram,
                              ns_block=block, ns_full_every=0)

    def torch_muon():
        ps = fresh()
        return ps, torch.optim.Muon(ps, lr=0.02, weight_decay=0.0)

    def torch_adamw():
        ps = fresh()
        return ps, torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.0)

    variants = {"glassgpt muon fp32 (eager)": glassgpt(), "glassgpt muon fp32 gram (compiled)": glassgpt(gram=True),
                f"glassgpt fp32 gram, block step {a.block}": glassgpt(gram=True, block=a.block),
                "glassgpt muon bf16": glassgpt(bf16=True), "torch.optim.Muon (bf16 NS)": torch_muon(),
                "torch.optim.AdamW": torch_adamw()}
    if not (native_bf16("cpu") or a.bf16):  # emulated bf16 is ~30x slower than fp32: minutes a step at 20M
        variants = {k: v for k, v in variants.items() if "bf16" not in k}
    updates = {}
    for name, (ps, opt) in variants.items():  # one step from the same start: the update each makes
        opt.step()
        updates[name] = torch.cat([(p.detach() - s).flatten() for p, s in zip(ps, start)])
    times = {name: [] for name in variants}
    for _ in range(a.rounds):
        for name, (_, opt) in variants.items():
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    fp32_peak = matmul_peak(torch.float32)

    print(f"cpu: {cpu_info()}" + ("" if "glassgpt muon bf16" in variants else "; bf16 variants skipped (emulated; --bf16 times them)"))
    print(f"hidden matrices of d={a.width}, L={a.depth}: {len(hidden)} ({sum(p.numel() for p in hidden) / 1e6:.1f}M "
          f"params); plain Newton-Schulz {flops / 1e9:.1f} GFLOP a step; matmul fp32 2048² {fp32_peak:,.0f} GFLOP/s")
    ref = updates["glassgpt muon fp32 (eager)"]
    base = statistics.median(times["glassgpt muon fp32 (eager)"])
    print(f"{'variant':36s} {'ms/step':>9s} {'vs fp32':>8s} {'GFLOP/s':>8s} {'vs matmul':>9s} {'update vs fp32':>15s}")
    for name, ts in times.items():
        s = statistics.median(ts)
        rate = "" if "AdamW" in name else f"{flops / s / 1e9:8,.0f} {flops / s / 1e9 / fp32_peak:9.0%}"
        dev = (f"{(updates[name] - ref).abs().max() / ref.abs().max():15.1e}" if name.startswith("glassgpt")
               else f"{'':>15s}")
        print(f"{name:36s} {s * 1e3:9,.1f} {base / s:7.2f}x {rate:18s} {dev}")


if __name__ == "__main__":
    main()
