"""Time-to-loss: how long glassgpt's own recipe takes to reach the loss a real peer ends at.

    NANOGPT_DIR=~/nanoGPT python bench/time_to_loss.py             # the 20M shape, 2M reference tokens
    python bench/time_to_loss.py --lrs 1e-3 --tokens 400000          # a quick look (GPT-2 as the reference)

The reference is nanoGPT's own `model.py` (NANOGPT_DIR), else transformers' `GPT2LMHeadModel` (the same
architecture), trained with nanoGPT's small-model recipe: its own `configure_optimizers` (AdamW, betas
(0.9, 0.99), weight decay 0.1 on 2-D weights), 100 warm-up steps, cosine to lr/10, grad clip 1.0, no dropout,
compiled, bf16 autocast where the CPU has native bf16 — one run per learning rate in `--lrs`; the best final
loss is the target. glassgpt trains with the `cpu` preset's recipe at the same shape (its optimizer, schedule,
precision and compile, from the library's own functions; `--glassgpt-tokens` is its token budget, which sets
its schedule), on the same batches (the `cpu` preset's tokenizer and corpus).

All runs step in turn (one step each, round-robin), so machine noise hits them alike; each run's clock
counts only its own steps, compile included (a run's first steps compile). Every run is scored by one
function: mean nats/token over the first 65,536 tokens of the `val` split in non-overlapping windows of T,
in fp32, outside the clocks (the references at their end; glassgpt's weights are saved every `--eval-every`
steps and scored after the race, once the target is known). Time-to-loss is glassgpt's clock at its first
saved step at or under the target: a bound from above.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_vs_peers import adamw, gpt2_model, hf_loss, nanogpt_loss, nanogpt_model, shape_args  # noqa: E402

from glassgpt import config as config_mod  # noqa: E402
from glassgpt.data.shards import Corpus, Loader, prepare  # noqa: E402
from glassgpt.model.gpt import build  # noqa: E402
from glassgpt.train import dist  # noqa: E402
from glassgpt.train.optim import build_optimizers, fast_newton_schulz, lr_multiplier, set_lr  # noqa: E402
from glassgpt.train.trainer import compile_model  # noqa: E402


def val_windows(corpus: Corpus, n_tokens: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) [n_tokens // T, T]: the first n_tokens (+1) of the val split, cut into non-overlapping windows."""
    split = corpus.manifest["splits"]["val"]
    parts, have = [], 0
    for f in split["files"]:
        if have > n_tokens:
            break
        if f["tokens"]:
            parts.append(np.asarray(np.memmap(corpus.root / f["bin"], dtype=corpus.dtype, mode="r")).astype(np.int64))
            have += len(parts[-1])
    toks = torch.from_numpy(np.concatenate(parts))
    n = min(n_tokens, len(toks) - 1) // T * T
    return toks[:n].view(-1, T), toks[1 : n + 1].reshape(-1, T)


@torch.no_grad()
def score(logits_fn, model, x: torch.Tensor, y: torch.Tensor, batch: int = 16) -> float:
    """Mean nats/token, fp32, one definition for every model."""
    was = model.training
    model.eval()
    nats = 0.0
    for i in range(0, len(x), batch):
        logits = logits_fn(model, x[i : i + batch]).float()
        nats += float(F.cross_entropy(logits.flatten(0, 1), y[i : i + batch].flatten(), reduction="sum"))
    model.train(was)
    return nats / y.numel()


class Run:
    """One training run: its own step function, clock and evaluations."""

    def __init__(self, name: str, total: int, step_fn, model, logits_fn):
        self.name, self.total, self.step_fn, self.model, self.logits_fn = name, total, step_fn, model, logits_fn
        self.done, self.clock, self.first_steps_s = 0, 0.0, 0.0
        self.evals: list[tuple[int, float, float]] = []  # (step, clock s, val loss)
        self.snapshots: list[tuple[int, float, Path]] = []

    def step(self, batch: list[torch.Tensor]) -> float:
        t0 = time.perf_counter()
        loss = self.step_fn(self.done, batch)
        dt = time.perf_counter() - t0
        self.clock += dt
        if self.done < 2:
            self.first_steps_s += dt
        self.done += 1
        return loss

    def evaluate(self, x, y) -> float:
        loss = score(self.logits_fn, self.model, x, y)
        self.evals.append((self.done, self.clock, loss))
        return loss

    def snapshot(self, root: Path) -> None:
        """Weights at this step, scored after the race (an evaluation costs ~30 steps' time here)."""
        path = root / f"{id(self)}-{self.done}.pt"
        torch.save(self.model.state_dict(), path)
        self.snapshots.append((self.done, self.clock, path))

    def first_under(self, target: float, x, y):
        """(step, clock, loss) of the first snapshot at or under target: a binary search over the
        snapshots (val loss falls with steps), then the final weights' own evaluation."""
        final = self.evals[-1]
        if final[2] > target:
            return None
        live = {k: v.clone() for k, v in self.model.state_dict().items()}
        lo, hi, best = 0, len(self.snapshots) - 1, final
        while lo <= hi:
            mid = (lo + hi) // 2
            step, clock, path = self.snapshots[mid]
            self.model.load_state_dict(torch.load(path))
            loss = score(self.logits_fn, self.model, x, y)
            print(f"  {self.name} step {step}: val {loss:.4f} at {clock:.1f} s", flush=True)
            if loss <= target:
                best, hi = (step, clock, loss), mid - 1
            else:
                lo = mid + 1
        self.model.load_state_dict(live)
        return best


def reference(a, lr: float, total: int, precision: str) -> Run:
    """nanoGPT's model.py (its own optimizer setup) or GPT2LMHeadModel, with nanoGPT's recipe."""
    torch.manual_seed(0)
    nano = os.environ.get("NANOGPT_DIR")
    if nano:
        model = nanogpt_model(a, Path(nano).expanduser())
        opt = model.configure_optimizers(0.1, lr, (0.9, 0.99), "cpu")  # nanoGPT's own AdamW setup
        loss_of = nanogpt_loss
        logits_of = lambda m, x: m(x, x)[0]  # noqa: E731  (targets make nanoGPT return logits at every position)
        name = f"nanoGPT lr {lr:g}"
    else:
        model = gpt2_model(a)
        opt = adamw(model, lr)[0]
        loss_of = hf_loss
        logits_of = lambda m, x: m(input_ids=x).logits  # noqa: E731
        name = f"GPT2LMHeadModel lr {lr:g}"
    model.train()
    fwd = torch.compile(model)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    warmup, min_lr = 100, lr / 10

    def lr_at(it):  # nanoGPT's train.py get_lr, decaying over the whole run
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        ratio = (it - warmup) / max(1, total - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    def step(it, batch):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        x, y = batch
        with ctx():
            loss = loss_of(fwd, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return Run(name, total, step, model, logits_of)


def glassgpt(a, cfg, total: int, label: str = "") -> Run:
    """The cpu preset's recipe, stepped as glassgpt's trainer steps (the same library functions)."""
    t = cfg.train
    torch.manual_seed(t.seed)
    model = build(cfg.model, seed=t.seed)
    precision = dist.resolve_precision(t.precision, "cpu")
    opts = build_optimizers(model, cfg, precision)
    fwd, compiled = compile_model(model, t.compile, "cpu")
    fast_newton_schulz(opts, precision, compiled)

    def step(it, batch):
        set_lr(opts, lr_multiplier(it, total, t.schedule, t.warmup_frac, t.cooldown_frac))
        with dist.autocast("cpu", precision):
            loss = fwd(*batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        for o in opts:
            o.step()
        for o in opts:
            o.zero_grad(set_to_none=True)
        return float(loss.detach())

    name = f"glassgpt {total * t.batch_size * cfg.model.seq_len / 1e6:.2g}M ({precision}, {'compiled' if compiled else 'eager'})"
    if label:
        name += f" {label}"
    return Run(name, total, step, model, lambda m, x: m(x))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shape_args(p)
    p.add_argument("--tokens", type=int, default=2_000_000, help="the reference's token budget")
    p.add_argument("--lrs", default="3e-4,6e-4,1e-3,2e-3", help="the reference's learning rates")
    p.add_argument("--glassgpt-tokens", default="1000000",
                   help="glassgpt's token budgets, comma-separated (each sets its own schedule; one run each)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of glassgpt's cpu preset")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE[,KEY=VALUE]",
                   help="another glassgpt run at every budget with these overrides on top (repeatable): an A/B in one "
                        "race; train.tokens=N among them runs it at that budget only (an equal-time A/B of a faster step)")
    p.add_argument("--eval-every", type=int, default=10, help="glassgpt's snapshots (scored after the race), in steps")
    p.add_argument("--eval-tokens", type=int, default=65_536)
    a = p.parse_args(argv)

    dist.tune_cpu_allocator()
    dist.flush_denormals()
    budgets = [int(float(b)) for b in a.glassgpt_tokens.split(",")]
    base = [f"model.width={a.width}", f"model.depth={a.depth}", f"model.head_dim={a.head_dim}",
            f"model.seq_len={a.seq}", f"train.batch_size={a.batch}", "train.compile=on", *a.set]
    cfg = config_mod.load("cpu", base)
    variants = [("", cfg, budgets)]
    for v in a.variant:
        label, _, sets = v.partition(":")
        sets = [kv for kv in sets.split(",") if kv]
        own = [int(float(kv.split("=", 1)[1])) for kv in sets if kv.startswith("train.tokens=")]
        variants.append((label, config_mod.load("cpu", base + sets), own or budgets))
    corpus = Corpus(prepare(cfg.data))
    for _, c, _ in variants:
        c.model.vocab_size = a.vocab = corpus.tokenizer.vocab_size
    precision = dist.resolve_precision("auto", "cpu")
    per_step = a.batch * a.seq
    x_val, y_val = val_windows(corpus, a.eval_tokens, a.seq)
    loader = Loader(corpus.split("train", a.seq), a.batch, cfg.train.seed)

    print(f"cpu: {dist.cpu_name()}; {dist.cpu_capability()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"shape: d={a.width}, L={a.depth}, head_dim={a.head_dim}, T={a.seq}, B={a.batch}, V={a.vocab}; "
          f"val: {y_val.numel():,} tokens; reference precision {precision}, compiled")
    ref_steps = math.ceil(a.tokens / per_step)
    refs = [reference(a, float(lr), ref_steps, precision) for lr in a.lrs.split(",")]
    ours = [glassgpt(a, c, math.ceil(b / per_step), label) for label, c, bs in variants for b in bs]
    runs = refs + ours
    if not os.environ.get("NANOGPT_DIR"):
        print("reference: GPT2LMHeadModel (set NANOGPT_DIR to a checkout of karpathy/nanoGPT for its model.py)")
    print(f"reference: {ref_steps} steps x {per_step:,} tokens; glassgpt: {', '.join(str(r.total) for r in ours)} steps; "
          f"glassgpt's recipe: cpu preset, optimizer {cfg.train.optimizer}, schedule {cfg.train.schedule}")

    snaps = Path(tempfile.mkdtemp(prefix="glassgpt-ttl-"))
    for it in range(max(r.total for r in runs)):
        batch = torch.from_numpy(loader.batch(it))
        batch = [batch[:, :-1].contiguous(), batch[:, 1:].contiguous()]  # nanoGPT views targets flat
        for r in runs:
            if r.done < r.total:
                r.step(batch)
                if r.done == r.total:
                    loss = r.evaluate(x_val, y_val)
                    print(f"  {r.name} step {r.done}: val {loss:.4f} at {r.clock:.1f} s", flush=True)
                elif r in ours and r.done % a.eval_every == 0:
                    r.snapshot(snaps)

    print(f"{'run':40s} {'steps':>6s} {'tokens':>10s} {'final val':>9s} {'clock s':>8s} {'first 2 steps s':>15s}")
    for r in runs:
        print(f"{r.name:40s} {r.done:6d} {r.done * per_step:10,d} {r.evals[-1][2]:9.4f} {r.clock:8.1f} "
              f"{r.first_steps_s:15.1f}")
    best = min(refs, key=lambda r: r.evals[-1][2])
    target, ref_time = best.evals[-1][2], best.clock
    print(f"target: {best.name} ends at {target:.4f} after {ref_time:.1f} s")
    hits = [r.first_under(target, x_val, y_val) for r in ours]
    shutil.rmtree(snaps, ignore_errors=True)
    for r, hit in zip(ours, hits):
        if hit is None:
            print(f"time-to-loss: {r.name}: not reached (final {r.evals[-1][2]:.4f})")
        else:
            s, c, v = hit
            print(f"time-to-loss: {r.name}: {v:.4f} at step {s} ({s * per_step:,} tokens) after {c:.1f} s: "
                  f"{c / ref_time:.2f}x the reference's time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
