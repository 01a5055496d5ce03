"""Where a glassgpt training step spends its time: torch.profiler over whole steps (forward,
loss, backward, grad clip, the default optimizer), ops grouped by name, self CPU time.

    python bench/profile_step.py                        # 20M shape (d=512, L=5, T=256, B=16, V=1,024), fp32 and bf16
    python bench/profile_step.py --width 256 --depth 4  # the 5M shape

Prints, per precision: the share of the step in matmul kernels (mm, addmm, bmm, linear's
backward matmuls, SDPA) against everything else, and the top ops outside matmuls — the
elementwise work (RoPE, norms, ReLU², cross-entropy, Newton–Schulz's small ops) that a
compiled or fused step would remove. A ratio within one run, never an absolute claim.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext

import torch
from torch.profiler import ProfilerActivity, profile

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
          "aten::_scaled_dot_product_flash_attention_for_cpu",
          "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "mkldnn::_linear_pointwise")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--optimizer", default="muon", choices=["muon", "adamw"])
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--compile", action="store_true", help="the model under torch.compile (as `glassgpt train` runs "
                   "large plain CPU runs); its fused kernels show as one 'CompiledFxGraph' row each")
    a = p.parse_args(argv)

    from glassgpt.config import Config
    from glassgpt.model.gpt import build
    from glassgpt.train.dist import cpu_capability, flush_denormals, tune_cpu_allocator

    tune_cpu_allocator()  # as the trainer's process runs: freed activations stay in the heap (no page faults)
    flush_denormals()
    from glassgpt.train.optim import build_optimizers, fast_newton_schulz

    print(f"cpu: {cpu_capability()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    cfg = Config()
    cfg.model.depth, cfg.model.width, cfg.model.head_dim = a.depth, a.width, 64
    cfg.model.seq_len, cfg.model.vocab_size = a.seq, a.vocab
    cfg.train.optimizer = a.optimizer
    batch = torch.randint(a.vocab, (a.batch, a.seq + 1), generator=torch.Generator().manual_seed(0))
    x, y = batch[:, :-1], batch[:, 1:]
    for prec in a.precisions.split(","):
        model = build(cfg.model, seed=0)
        opts = build_optimizers(model, cfg, prec)
        fast_newton_schulz(opts, prec, a.compile)  # as the trainer sets it
        fwd = torch.compile(model) if a.compile else model
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if prec == "bf16" else nullcontext

        def step():
            with ctx():
                loss = fwd(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for o in opts:
                o.step()
            for o in opts:
                o.zero_grad(set_to_none=True)

        step()  # warm-up (and compile)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(a.steps):
                step()
        rows = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in rows)
        mm = sum(e.self_cpu_time_total for e in rows if e.key in MATMUL)
        print(f"\n{prec}{', compiled' if a.compile else ''}, optimizer {a.optimizer}: {total / a.steps / 1e3:,.0f} ms a step (profiled); "
              f"matmuls {mm / total:.0%}, everything else {1 - mm / total:.0%}")
        groups = {"linear layers (mm, addmm)": ("aten::mm", "aten::addmm", "aten::linear", "mkldnn::_linear_pointwise"),
                  "attention (SDPA forward + backward)": tuple(k for k in MATMUL if "attention" in k),
                  "Newton-Schulz and other batched (bmm, baddbmm)": ("aten::bmm", "aten::baddbmm")}
        print("  " + "; ".join(f"{g} {sum(e.self_cpu_time_total for e in rows if e.key in keys) / total:.0%}"
                               for g, keys in groups.items()))
        print(f"  {'op (outside matmuls)':52s} {'share':>6s} {'calls/step':>10s}")
        for e in sorted((e for e in rows if e.key not in MATMUL), key=lambda e: -e.self_cpu_time_total)[: a.top]:
            print(f"  {e.key[:52]:52s} {e.self_cpu_time_total / total:6.1%} {e.count / a.steps:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
