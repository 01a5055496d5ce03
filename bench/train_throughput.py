"""Training throughput: glassgpt vs a plain nanoGPT-style model of the same shape, and both
vs the fp32 matmul throughput torch reaches on this machine — all measured in this run.

    python bench/train_throughput.py [--sizes 1m,5m,20m] [--steps 6] [--batch 16]

Prints, per size: tokens/s and achieved FLOP/s of each model, the ratio of achieved FLOP/s
to measured matmul peak, and glassgpt's tokens/s over the reference's. FLOPs are counted
the same way for both (6·matmul params + attention, glassgpt.model.flops).
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from glassgpt.config import Config, ModelConfig
from glassgpt.model.flops import count
from glassgpt.model.gpt import build
from glassgpt.train.optim import build_optimizers

SIZES = {  # name: (depth, width) at vocab 4096, seq 256
    "1m": (2, 128),
    "5m": (4, 256),
    "20m": (5, 512),
}
VOCAB, SEQ = 4096, 256


# --- the reference: a minimal nanoGPT (GPT-2 style: learned positions, LayerNorm with
# bias, GELU MLP, biases, tied embedding), written here so both run in one process.
class RefBlock(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class RefGPT(nn.Module):
    def __init__(self, depth, d, heads):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, d), nn.Embedding(SEQ, d)
        self.blocks = nn.ModuleList(RefBlock(d, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for b in self.blocks:
            x = b(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, VOCAB), targets.reshape(-1))


def matmul_peak(n: int = 1024, reps: int = 10) -> float:
    """Best fp32 GFLOP/s of torch.mm on n×n matrices (the hardware's practical peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def time_steps(model, opt_step, batch, steps):
    x = torch.randint(0, VOCAB, (batch, SEQ + 1))
    times = []
    for i in range(steps + 2):  # first two are warm-up
        t = time.perf_counter()
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt_step()
        times.append(time.perf_counter() - t)
    times = sorted(times[2:])
    return times[len(times) // 2]  # median


def bench_size(name, batch, steps, optimizer, compile_too):
    depth, d = SIZES[name]
    cfg = Config()
    cfg.model = ModelConfig(depth=depth, width=d, head_dim=64, seq_len=SEQ, vocab_size=VOCAB)
    cfg.train.optimizer = optimizer
    ours = build(cfg.model, seed=0)
    opts = build_optimizers(ours, cfg)

    def our_step():
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)

    ref = RefGPT(depth, d, d // 64)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, betas=(0.9, 0.95))

    def ref_step():
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    compiled = torch.compile(ours) if compile_too else None
    # interleave the variants (and the peak measurement) so machine noise hits them alike
    t_ours, t_ref, t_comp, peaks = [], [], [], []
    for _ in range(2):
        peaks.append(matmul_peak())
        t_ours.append(time_steps(ours, our_step, batch, steps))
        t_ref.append(time_steps(ref, ref_step, batch, steps))
        if compiled is not None:
            t_comp.append(time_steps(compiled, our_step, batch, steps))
    c = count(cfg.model)
    tok = batch * SEQ
    rate = {"glassgpt": tok / min(t_ours), "nanoGPT": tok / min(t_ref)}
    if t_comp:
        rate["glassgpt+compile"] = tok / min(t_comp)
    return c, rate, max(peaks)


def main():
    from glassgpt.train.dist import tune_cpu_allocator

    tune_cpu_allocator()  # what glassgpt's trainer does; applies to both models alike
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1m,5m,20m")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"])
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seq {SEQ}, vocab {VOCAB}, "
          f"batch {args.batch}, glassgpt optimizer {args.optimizer}, reference AdamW")
    peak = matmul_peak()
    print(f"measured fp32 matmul peak (1024³ torch.mm, best of 10): {peak:.1f} GFLOP/s")
    header = f"{'size':>5} {'params':>11} {'variant':>17} {'tok/s':>9} {'GFLOP/s':>8} {'of peak':>8} {'vs nanoGPT':>10}"
    print(header)
    for name in args.sizes.split(","):
        c, rate, size_peak = bench_size(name, args.batch, args.steps, args.optimizer, not args.no_compile)
        peak = max(peak, size_peak)  # the best matmul rate seen so far in this run
        for variant, tps in rate.items():
            gf = tps * c.flops_per_token / 1e9
            print(f"{name:>5} {c.params:>11,} {variant:>17} {tps:>9,.0f} {gf:>8.1f} {gf / peak:>8.1%} "
                  f"{tps / rate['nanoGPT']:>9.2f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; matmul peak used: {peak:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
