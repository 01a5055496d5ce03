"""Eval generation speed: the local completion function (through the engine's KV cache and
continuous batching) against a naive baseline measured in the same run.

    .venv/bin/python bench/eval_generation.py [--prompts 16] [--new 48] [--threads 8]

Both decode the same prompts greedily on the same model (the `cpu` preset's shape, random
weights: speed does not depend on them), with the same stop tokens:

- engine: `LocalModelFn.__call__` from `--threads` threads at once, as the eval runner calls it;
- naive: what local.py did before it used the engine: batches of `--threads` right-padded
  rows, the whole prefix through the model again for every new token (no KV cache).

Prints tokens/s of each, their ratio, and whether the completions are the same.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import sys
import sysconfig
import time
from pathlib import Path

import torch


def cpu_name() -> str:
    from glassgpt.train.dist import cpu_name as name

    return name()


def build(seq_len: int):
    from glassgpt import config
    from glassgpt.data.tokenizer import Tokenizer
    from glassgpt.model.gpt import build as build_model

    texts, size = [], 0
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        t = p.read_text(errors="ignore")
        texts.append(t)
        size += len(t)
        if size > 1_000_000:
            break
    tok = Tokenizer.train(texts, 1024)
    cfg = config.load("cpu", [f"model.seq_len={seq_len}"])
    cfg.model.vocab_size = tok.vocab_size
    model = build_model(cfg.model, device="cpu", seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # init zeroes the residual projections; random ones vary the output
        for p in model.parameters():
            if p.dim() == 2 and p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval(), tok, texts


def naive_greedy(model, prompts: list[list[int]], new: int, stop_ids: set[int], batch: int) -> list[list[int]]:
    """Right-padded batches; every step runs each row's whole prefix again."""
    outs = []
    for s in range(0, len(prompts), batch):
        rows = [list(p) for p in prompts[s : s + batch]]
        start = [len(r) for r in rows]
        done = [False] * len(rows)
        with torch.no_grad():
            while not all(done):
                T = max(len(r) for r, d in zip(rows, done) if not d)
                buf = torch.zeros(len(rows), T, dtype=torch.long)
                for i, r in enumerate(rows):
                    buf[i, : min(len(r), T)] = torch.tensor(r[:T])
                logits = model(buf)
                for i, r in enumerate(rows):
                    if done[i]:
                        continue
                    nxt = int(logits[i, len(r) - 1].argmax())
                    if nxt in stop_ids:
                        done[i] = True
                        continue
                    r.append(nxt)
                    done[i] = len(r) - start[i] >= new
        outs += [r[n:] for r, n in zip(rows, start)]
    return outs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new", type=int, default=48, help="max new tokens per prompt")
    ap.add_argument("--threads", type=int, default=8, help="concurrent callers = the naive batch size")
    a = ap.parse_args(argv)
    from glassgpt.evals.completion_fns.local import LocalModelFn

    model, tok, texts = build(seq_len=256)
    # Eval-like prompts of varied length (64..191 tokens) cut from source text.
    src = tok.encode("\n".join(texts[:20]))
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(64, 192, (a.prompts,), generator=g).tolist()
    offs = torch.randint(0, len(src) - 200, (a.prompts,), generator=g).tolist()
    words = [tok.decode(src[o : o + n]) for o, n in zip(offs, lens)]
    fn = LocalModelFn(model, tok, max_tokens=a.new, batch_size=a.threads, chat=False)
    prompts = [fn.encode_prompt(w) for w in words]
    stop_ids = fn.engine.end_ids

    print(f"cpu: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    m = model.cfg
    print(f"model: depth {m.depth}, d_model {m.d_model}, vocab {m.vocab_size}, "
          f"{sum(p.numel() for p in model.parameters()):,} params; {a.prompts} prompts of "
          f"{min(len(p) for p in prompts)}-{max(len(p) for p in prompts)} tokens, up to {a.new} new, greedy")
    fn(words[0], max_tokens=4)  # warm-up
    naive_greedy(model, prompts[:1], 2, stop_ids, 1)

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(a.threads) as ex:
        results = list(ex.map(lambda w: fn(w, max_tokens=a.new), words))
    t_eng = time.perf_counter() - t0
    n_eng = sum(r.usage["completion_tokens"] for r in results)

    t0 = time.perf_counter()
    naive = naive_greedy(model, prompts, a.new, stop_ids, a.threads)
    t_naive = time.perf_counter() - t0
    n_naive = sum(len(x) for x in naive)

    same = [r.get_completions()[0] for r in results] == [tok.decode(x) for x in naive]
    eng_tps, naive_tps = n_eng / t_eng, n_naive / t_naive
    print(f"local fn through the engine: {n_eng} tokens in {t_eng:.2f} s = {eng_tps:.1f} tok/s")
    print(f"naive full-prefix recompute: {n_naive} tokens in {t_naive:.2f} s = {naive_tps:.1f} tok/s")
    print(f"ratio: {eng_tps / naive_tps:.2f}x; same completions: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
