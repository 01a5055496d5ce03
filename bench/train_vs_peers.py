"""Training-step tokens/s: glassgpt against real peers, at the same shape, on the same tokens.

    python bench/train_vs_peers.py                       # the 20M shape: d=512, L=5, T=256, B=16
    python bench/train_vs_peers.py --width 256 --depth 4 # the 5M shape
    NANOGPT_DIR=~/nanoGPT python bench/train_vs_peers.py # adds karpathy/nanoGPT's own model.py
    python bench/train_vs_peers.py --device cuda --precisions bf16 --compile compiled --peak-tflops 989 \
        --width 768 --depth 12 --seq 1024 --batch 32 --vocab 8192   # one GPU, the gpu preset's shape, MFU

Peers (their own code, never a copy written here): transformers' `GPT2LMHeadModel` (nanoGPT's
architecture) and `Qwen3ForCausalLM` (glassgpt's family: RoPE, RMSNorm, QK-norm, SwiGLU), and
nanoGPT's `model.py` when NANOGPT_DIR points to a checkout. Each runs in fp32 and under bf16
autocast, eager and under torch.compile (as nanoGPT's train.py does: the model compiled), with
torch AdamW. glassgpt runs with its default optimizer (Muon for the hidden matrices + AdamW)
and with AdamW. Every step is the whole training step: forward, loss, backward, grad clip 1.0,
optimizer step, zero_grad.

One process, interleaved rounds (each variant takes `--steps` steps per round, in turn, so
machine noise hits all alike); tokens/s is the median over rounds. FLOPs per token are counted
as glassgpt.model.flops counts them (2 per matmul weight per token forward, attention's QKᵀ and
AV included, training = 3 × forward), for every model from its own Linear/Conv1D weights; the
achieved rate is set against matmul rates measured in the same run, in the precision used:
a 2048² matmul, and the step's own linear shapes (forward and backward) timed alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

DEVICE = "cpu"  # --device


def sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
import torch.nn as nn
import torch.nn.functional as F


def cpu_info() -> str:
    name = platform.processor() or platform.machine()
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine()):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    native = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    cap = torch.backends.cpu.get_cpu_capability()
    gpu = f"; {torch.cuda.get_device_name()}" if DEVICE.startswith("cuda") else ""
    return (f"{name}; torch {torch.__version__}, capability {cap}, native bf16: "
            f"{', '.join(native) if native else 'no'}; {torch.get_num_threads()} threads{gpu}")


# --- models -------------------------------------------------------------------------------------
def glassgpt_model(a):
    from glassgpt.config import Config
    from glassgpt.model.gpt import build

    cfg = Config()
    cfg.model.depth, cfg.model.width, cfg.model.head_dim = a.depth, a.width, a.head_dim
    cfg.model.seq_len, cfg.model.vocab_size = a.seq, a.vocab
    return build(cfg.model, device=DEVICE, seed=0), cfg


def glassgpt_optimizers(model, cfg, optimizer: str, precision: str, compiled: bool):
    from glassgpt.train.optim import build_optimizers, fast_newton_schulz

    cfg.train.optimizer = optimizer
    # as the trainer builds them: bf16 runs Newton-Schulz in bf16, a compiled fp32 one on the Gram matrix
    opts = build_optimizers(model, cfg, precision)
    fast_newton_schulz(opts, precision, compiled)
    return opts


def gpt2_model(a):
    from transformers import GPT2Config, GPT2LMHeadModel

    c = GPT2Config(vocab_size=a.vocab, n_positions=a.seq, n_embd=a.width, n_layer=a.depth,
                   n_head=a.width // a.head_dim, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                   bos_token_id=0, eos_token_id=0)
    c._attn_implementation = "sdpa"
    return GPT2LMHeadModel(c)


def qwen3_model(a):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    heads = a.width // a.head_dim
    hidden = -(-round(8 * a.width / 3) // 32) * 32  # SwiGLU at the parameters of a 4×-wide MLP
    c = Qwen3Config(vocab_size=a.vocab, hidden_size=a.width, intermediate_size=hidden, num_hidden_layers=a.depth,
                    num_attention_heads=heads, num_key_value_heads=heads, head_dim=a.head_dim,
                    max_position_embeddings=a.seq, tie_word_embeddings=False)
    c._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(c)


def nanogpt_model(a, root: Path):
    if not (root / "model.py").is_file():
        raise SystemExit(f"NANOGPT_DIR={root} holds no model.py (a checkout of karpathy/nanoGPT)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", root / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # bias=False: nanoGPT's own "a bit better and faster" setting
    c = mod.GPTConfig(block_size=a.seq, vocab_size=a.vocab, n_layer=a.depth, n_head=a.width // a.head_dim,
                      n_embd=a.width, dropout=0.0, bias=False)
    return mod.GPT(c)


def matmul_shapes(model) -> list[tuple[int, int]]:
    """(in, out) of every weight used as a matmul per token: Linear, and HF's Conv1D (GPT-2)."""
    shapes = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            shapes.append((m.in_features, m.out_features))
        elif type(m).__name__ == "Conv1D":  # transformers' GPT-2 keeps its weights as [in, out]
            shapes.append(tuple(m.weight.shape))
    return shapes


def train_flops_per_token(model, a) -> int:
    linear = sum(i * o for i, o in matmul_shapes(model))
    attention = a.depth * 2 * (2 * a.seq * a.width)  # QKᵀ and AV per query token, full T×T as SDPA computes
    return 3 * (2 * linear + attention)


# --- one training step per model kind --------------------------------------------------------------
class Variant:
    def __init__(self, name, model, opts, loss_fn, precision, compiled, flops_per_token):
        self.name, self.model, self.opts, self.precision, self.compiled = name, model, opts, precision, compiled
        self.flops_per_token = flops_per_token
        self.fwd = torch.compile(model) if compiled else model
        self.loss_fn = loss_fn
        self.compile_s = 0.0
        self.rates: list[float] = []
        self.losses: list[float] = []

    def step(self, x, y):
        ctx = torch.autocast(DEVICE.split(":")[0], dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()
        with ctx:
            loss = self.loss_fn(self.fwd, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        for o in self.opts:
            o.step()
        for o in self.opts:
            o.zero_grad(set_to_none=True)
        return float(loss.detach())


def hf_loss(fwd, x, y):
    logits = fwd(input_ids=x).logits
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def nanogpt_loss(fwd, x, y):
    return fwd(x, y)[1]


def glassgpt_loss(fwd, x, y):
    return fwd(x, y)


def adamw(model, lr=1e-3):
    # nanoGPT's recipe: betas (0.9, 0.99), weight decay 0.1 on 2-D weights
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                              lr=lr, betas=(0.9, 0.99))]


def build_variants(a) -> list[Variant]:
    out = []
    nano = os.environ.get("NANOGPT_DIR")
    for precision in a.precisions:
        for compiled in a.compile_modes:
            torch.manual_seed(0)
            for kind in a.models:
                if kind == "nanogpt" and not nano:
                    continue
                if kind.startswith("glassgpt"):
                    model, cfg = glassgpt_model(a)
                    optimizer = "adamw" if kind.endswith("adamw") else "muon"
                    if kind == "glassgpt-bp":  # block-periodic Muon (train.ns_block, train.ns_full_every)
                        cfg.train.ns_block, cfg.train.ns_full_every = a.ns_block, a.ns_full_every
                    opts, loss = glassgpt_optimizers(model, cfg, optimizer, precision, compiled), glassgpt_loss
                elif kind == "gpt2":
                    model = gpt2_model(a).to(DEVICE)
                    opts, loss = adamw(model), hf_loss
                elif kind == "qwen3":
                    model = qwen3_model(a).to(DEVICE)
                    opts, loss = adamw(model), hf_loss
                elif kind == "nanogpt":
                    model = nanogpt_model(a, Path(nano).expanduser()).to(DEVICE)
                    opts, loss = adamw(model), nanogpt_loss
                else:
                    raise SystemExit(f"unknown model {kind!r}; choose from glassgpt, glassgpt-adamw, glassgpt-bp, gpt2, "
                                     "qwen3, nanogpt")
                model.train()
                name = f"{kind} {precision} {'compiled' if compiled else 'eager'}"
                out.append(Variant(name, model, opts, loss, precision, compiled, train_flops_per_token(model, a)))
    return out


# --- matmul rates --------------------------------------------------------------------------------
def time_matmuls(pairs: list[tuple[int, int, int]], dtype, reps: int = 3) -> float:
    """Seconds for one pass of the (m, k, n) matmuls, best of reps."""
    mats = [(torch.randn(m, k, dtype=dtype, device=DEVICE), torch.randn(k, n, dtype=dtype, device=DEVICE))
            for m, k, n in pairs]
    for x, w in mats:
        x @ w
    best = float("inf")
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        for x, w in mats:
            x @ w
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(dtype, n: int = 2048) -> float:
    """GFLOP/s of an n² matmul (four in a row, best of three)."""
    return 2 * n**3 / time_matmuls([(n, n, n)] * 4, dtype) * 4 / 1e9


def matmul_rates(a, shapes, dtype) -> tuple[float, float]:
    """(GFLOP/s of a 2048² matmul, GFLOP/s of the step's linear matmuls alone: forward, grad-input, grad-weight)."""
    peak = matmul_peak(dtype)
    BT = a.batch * a.seq
    pairs = []
    for i, o in shapes:
        pairs += [(BT, i, o), (BT, o, i), (i, BT, o)]
    flops = sum(2 * m * k * n for m, k, n in pairs)
    return peak, flops / time_matmuls(pairs, dtype) / 1e9


def shape_args(p: argparse.ArgumentParser) -> None:
    """The model shape every training bench takes (the 20M shape by default)."""
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shape_args(p)
    p.add_argument("--vocab", type=int, default=1024, help="the cpu preset's tokenizer has 1,024 tokens")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    p.add_argument("--models", default="glassgpt,glassgpt-adamw,nanogpt,gpt2,qwen3")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--compile", default="eager,compiled")
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU")
    p.add_argument("--ns-block", type=int, default=128, help="glassgpt-bp: Muon's blocks (train.ns_block)")
    p.add_argument("--ns-full-every", type=int, default=5,
                   help="glassgpt-bp: whole-matrix steps every N (train.ns_full_every); time it with --steps a multiple of N")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="the device's spec-sheet dense bf16 peak (H100 SXM: 989): prints MFU against it")
    a = p.parse_args(argv)
    global DEVICE
    DEVICE = a.device
    a.models = a.models.split(",")
    a.precisions = a.precisions.split(",")
    a.compile_modes = [m == "compiled" for m in a.compile.split(",")]
    for prec in a.precisions:
        if prec not in ("fp32", "bf16"):
            raise SystemExit(f"unknown precision {prec!r}; choose fp32 or bf16")

    from glassgpt.train.dist import flush_denormals, tune_cpu_allocator

    tune_cpu_allocator()  # what glassgpt's trainer does to its process: every model here gets it alike
    flush_denormals()
    print(f"cpu: {cpu_info()}")
    print(f"shape: d={a.width}, L={a.depth}, head_dim={a.head_dim}, T={a.seq}, B={a.batch}, V={a.vocab}; "
          f"{a.rounds} rounds × {a.steps} steps, median")
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(a.vocab, (a.batch, a.seq + 1), generator=gen)
    x, y = batch[:, :-1].contiguous().to(DEVICE), batch[:, 1:].contiguous().to(DEVICE)
    variants = build_variants(a)
    if not os.environ.get("NANOGPT_DIR"):
        print("nanoGPT: set NANOGPT_DIR to a checkout of karpathy/nanoGPT to include its model.py")
    for v in variants:  # warm-up (and compile), timed separately
        t0 = time.perf_counter()
        for _ in range(2):
            v.step(x, y)
        v.compile_s = time.perf_counter() - t0
    tokens = a.batch * a.seq * a.steps
    for r in range(a.rounds):
        for v in variants:
            t0 = time.perf_counter()
            for _ in range(a.steps):
                v.losses.append(v.step(x, y))
            v.rates.append(tokens / (time.perf_counter() - t0))
    rates = {}
    for prec in a.precisions:
        dtype = torch.bfloat16 if prec == "bf16" else torch.float32
        shapes = matmul_shapes(variants[0].model) if variants else []
        rates[prec] = matmul_rates(a, shapes, dtype)
        print(f"matmul {prec}: 2048² {rates[prec][0]:,.0f} GFLOP/s; the step's linear shapes alone "
              f"{rates[prec][1]:,.0f} GFLOP/s")
    print(f"{'variant':34s} {'params':>8s} {'tok/s':>9s} {'GFLOP/s':>8s} {'vs matmuls':>10s} {'warm-up s':>9s}")
    med = {}
    for v in variants:
        tps = statistics.median(v.rates)
        med[v.name] = tps
        gf = tps * v.flops_per_token / 1e9
        n = sum(p.numel() for p in v.model.parameters())
        mfu = f" MFU {gf / (a.peak_tflops * 1e3):.1%}" if a.peak_tflops else ""
        print(f"{v.name:34s} {n / 1e6:7.1f}M {tps:9,.0f} {gf:8,.1f} {gf / rates[v.precision][1]:9.0%} {v.compile_s:9.1f}{mfu}")
    ours = {k: s for k, s in med.items() if k.startswith("glassgpt ")}
    peers = {k: s for k, s in med.items() if not k.startswith("glassgpt")}
    if ours and peers:
        bo, bp = max(ours, key=ours.get), max(peers, key=peers.get)
        print(f"glassgpt (default optimizer) best: {bo} {ours[bo]:,.0f} tok/s; best peer: {bp} {peers[bp]:,.0f} tok/s; "
              f"ratio {ours[bo] / peers[bp]:.2f}x")
        hf = {k: s for k, s in peers.items() if k.split()[0] in ("gpt2", "qwen3") and "bf16 eager" in k}
        if hf and any("bf16 eager" in k for k in ours):
            best_hf = max(hf, key=hf.get)
            o = max((s for k, s in ours.items() if "bf16 eager" in k))
            print(f"vs transformers as users run it (eager, bf16 autocast): {best_hf} {hf[best_hf]:,.0f} tok/s; "
                  f"glassgpt bf16 eager {o:,.0f}: {o / hf[best_hf]:.2f}x")
            c = ours.get("glassgpt bf16 compiled")
            if c:  # train.compile=auto compiles a plain CPU run of >= AUTO_COMPILE_CPU_FLOPS
                from glassgpt.train.trainer import AUTO_COMPILE_CPU_FLOPS

                print(f"  glassgpt as `glassgpt train` runs it (bf16, compiled: auto compiles plain CPU runs of "
                      f">= {AUTO_COMPILE_CPU_FLOPS:.0e} FLOPs) {c:,.0f}: {c / hf[best_hf]:.2f}x")
    bp = {k: s for k, s in med.items() if k.startswith("glassgpt-bp ")}
    if bp and peers:
        bb, best = max(bp, key=bp.get), max(peers, key=peers.get)
        print(f"glassgpt, block-periodic Muon (block {a.ns_block}, whole every {a.ns_full_every}) best: {bb} "
              f"{bp[bb]:,.0f} tok/s; best peer: {best} {peers[best]:,.0f} tok/s; ratio {bp[bb] / peers[best]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
