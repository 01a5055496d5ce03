"""Can a model copy what it read? The skill pass-key retrieval and multi-turn recall rest on.

    python bench/copying.py runs/chat_base [runs/other ...] [--lengths 256,1024]

Per run: a random sequence of 100 tokens shown twice (32 of them), the top-1 accuracy on its second
showing, for alphabets of 8, 64 and all plain tokens (with 8 tokens each one recurs ~12 times, so
copying must match the tokens before it too, as text asks: "What is the pass key? The pass key is"),
and the mean loss of the first and second showing over the whole vocabulary; then the built-in pass-key
and needle evals (glassgpt.evals.longctx) inside the given lengths, 10 depths x 2 seeds (--seeds), greedy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F


def copy_scores(model, vocab: int, n: int = 32, length: int = 100) -> dict:
    out = {}
    plain = vocab - 350  # token ids 300 .. vocab-51: past the special tokens (0-8) and the single bytes
    for a in (8, 64, plain):
        g = torch.Generator().manual_seed(0)
        alphabet = torch.randperm(plain, generator=g)[:a] + 300
        seq = alphabet[torch.randint(a, (n, length), generator=g)]
        idx = torch.cat([seq, seq], 1)
        with torch.no_grad():
            logits = model(idx[:, :-1]).float()
        out[f"top1_{a if a < plain else 'all'}"] = float((logits.argmax(-1) == idx[:, 1:])[:, length:].float().mean())
        if a == plain:
            loss = F.cross_entropy(logits.transpose(1, 2), idx[:, 1:], reduction="none")
            out["first"], out["second"] = float(loss[:, : length - 1].mean()), float(loss[:, length:].mean())
    return out


def main() -> None:
    from glassgpt.evals import longctx
    from glassgpt.serve.engine import Engine
    from glassgpt.train.checkpoint import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--lengths", default="", help="pass-key/needle lengths (default: the model's seq_len)")
    ap.add_argument("--seeds", default="0,1", help="pass-key/needle seeds (each: 10 depths a length)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(x) for x in args.seeds.split(",")]
    print(f"{'run':<40} {'top-1, alphabet 8':>18} {'64':>7} {'all':>7}   loss 1st -> 2nd   pass-key   needle")
    for run in args.runs:
        model, tok, cfg = load_model(run)
        c = copy_scores(model, cfg.model.vocab_size)
        lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else [cfg.model.seq_len]
        eng = Engine(model, tok, cfg, max_batch=1)
        hits, per_length = {}, {}
        try:
            for kind in ("passkey", "needle"):
                grids = [longctx.grid(eng, kind, lengths=lengths, seed=seed)["acc"] for seed in seeds]
                rows = [[a for g in grids for a in g[i] if a is not None] for i in range(len(lengths))]
                hits[kind] = f"{round(sum(map(sum, rows)))}/{sum(map(len, rows))}"
                per_length[kind] = ", ".join(f"{n} {round(sum(r))}/{len(r)}" for n, r in zip(lengths, rows) if r)
        finally:
            eng.stop()
        print(f"{str(run):<40} {c['top1_8']:>18.1%} {c['top1_64']:>7.1%} {c['top1_all']:>7.1%}   "
              f"{c['first']:>5.2f} -> {c['second']:<5.2f}   {hits['passkey']:>8}   {hits['needle']:>6}"
              f"   (at {','.join(map(str, lengths))} tokens)")
        if len(lengths) > 1:
            print(f"{'':<40} pass-key by length: {per_length['passkey']}; needle: {per_length['needle']}")


if __name__ == "__main__":
    main()
