"""How fast can a model shape learn to copy sequences whose tokens recur? A controlled probe of the
copying mechanism alone (token smearing of k previous tokens, `model.smear_tokens`), no text.

    python bench/copy_mechanism.py --smear 1,2 --steps 400      # one process per k, side by side, 1 thread each

Each arm trains the `chat` preset's shape (d=256, L=4, V=4,096) from the same seed with glassgpt's own
optimizers and schedule (Muon + AdamW, WSD) on rows made only of random sequences shown twice (8 to 63
tokens, alphabets log-uniform from 4 tokens to all, scored on the second showing), then prints the
copy scores of bench/copying.py: top-1 on a random 100-token sequence's second showing for alphabets
of 8, 64 and all tokens, and the two showings' mean loss. "Plain" (--smear 0) is the model without
smearing. A quality probe: timings are not compared.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from copying import copy_scores  # noqa: E402

VOCAB, PLAIN, LOW = 4096, 4096 - 350, 300  # copy tokens 300 .. V-51, as bench/copying.py draws them


def batch(g: torch.Generator, B: int = 16, T: int = 256):
    x = torch.zeros(B, T + 1, dtype=torch.long)
    y = torch.full((B, T), -1)
    for b in range(B):
        pos = 1  # position 0 stays token 0
        while pos < T + 1 - 16:
            n = min(int(torch.randint(8, 64, (1,), generator=g)), (T + 1 - pos) // 2)
            a = round(math.exp(torch.empty(1).uniform_(math.log(4), math.log(PLAIN), generator=g).item()))
            seq = (torch.randperm(PLAIN, generator=g)[:a] + LOW)[torch.randint(a, (n,), generator=g)]
            x[b, pos:pos + n] = x[b, pos + n:pos + 2 * n] = seq
            y[b, pos + n - 1:pos + 2 * n - 1] = seq  # targets: the second showing
            pos += 2 * n
    return x[:, :-1], y


def arm(k: int, steps: int, seed: int) -> None:
    from glassgpt.config import Config, ModelConfig
    from glassgpt.model.gpt import build
    from glassgpt.train.optim import build_optimizers, lr_multiplier, set_lr

    torch.set_num_threads(1)
    cfg = Config()
    cfg.model = ModelConfig(depth=4, aspect=64, head_dim=64, seq_len=256, vocab_size=VOCAB, smear=k > 0,
                            smear_tokens=max(k, 1))
    model = build(cfg.model, seed=seed)
    opts = build_optimizers(model, cfg)
    g = torch.Generator().manual_seed(seed + 100)
    t0 = time.time()
    for step in range(steps):
        set_lr(opts, lr_multiplier(step, steps, cfg.train.schedule, cfg.train.warmup_frac, cfg.train.cooldown_frac))
        x, y = batch(g)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
    model.eval()
    c = copy_scores(model, VOCAB)
    name = "plain" if k == 0 else f"smear {k} token{'s' if k > 1 else ''}"
    print(f"{name:<18} {steps:>6} {loss.item():>10.3f} {c['top1_8']:>9.1%} {c['top1_64']:>7.1%} {c['top1_all']:>7.1%}"
          f"   {c['first']:>5.2f} -> {c['second']:<5.2f}  ({time.time() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smear", default="1,2", help="arms: tokens smeared (0: plain), comma-separated")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arm", type=int, default=None, help=argparse.SUPPRESS)  # one arm, in its own process
    args = ap.parse_args()
    if args.arm is not None:
        return arm(args.arm, args.steps, args.seed)
    print(f"torch {torch.__version__}; {args.steps} steps of 16 x 256 copy tokens, seed {args.seed}, 1 thread an arm")
    print(f"{'model':<18} {'steps':>6} {'last loss':>10} {'top-1, a=8':>9} {'64':>7} {'all':>7}   loss 1st -> 2nd")
    procs = [subprocess.Popen([sys.executable, __file__, "--arm", k, "--steps", str(args.steps), "--seed", str(args.seed)])
             for k in args.smear.split(",")]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    main()
