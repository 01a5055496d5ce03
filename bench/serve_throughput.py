"""Serving throughput, every number a ratio against a reference measured in the same run.

    .venv/bin/python bench/serve_throughput.py [--checkpoint RUN_DIR] [--seconds 15]

With the `cpu` preset's model shape (random weights unless --checkpoint; speed does not
depend on the weights) and its context stretched to 1024 so that 512 tokens fit:

1. decode tokens/s with the engine's KV cache vs recomputing the whole prefix for every
   token, at 512 tokens of context (goal >= 5x);
2. aggregate decode tokens/s with 16 concurrent clients vs 1 (goal >= 4x on 2 CPU cores,
   from continuous batching: the 16 share each forward pass);
3. time to first token p50/p99 for a 100-token prompt under that 16-client load, next to
   the same prompt's TTFT on an idle engine;
4. decode tokens/s with bf16 weights and KV cache against fp32 (the same weights), single
   stream at 512 tokens of context and 16 clients, each phase alternated twice, best kept
   (goal >= 1.5x on a CPU with native bf16). `--width 512 --depth 5` is the 20M shape.
5. constrained decoding (`response_format` json_schema through llguidance, random schemas from
   glassgpt.serve.testing), single stream and 16 clients: the time spent inside the grammar per
   sequence-token as a share of the constrained decode step, and the decode time per token
   against unconstrained decoding of the same prompts (first token to last, so prefill and
   grammar compilation are left out). `--only-structured` runs this section alone.
6. DRY, the sampling chat-tuned models get by default, against none: aggregate decode tokens/s with
   16 clients (sampled at temperature 1), alternated twice, best kept. `--only-dry` runs it alone.

Clients are threads calling the engine directly (the HTTP layer is measured by the load
test in tests/test_serve_load.py, not here).
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

import torch


def build_engine(checkpoint: str | None, max_batch: int, shape: list[str] = (), threads: int | None = None):
    from glassgpt import config
    from glassgpt.data.tokenizer import Tokenizer
    from glassgpt.model.gpt import build
    from glassgpt.serve.engine import Engine

    if checkpoint:
        return Engine.from_checkpoint(checkpoint, name="bench", device="cpu", max_batch=max_batch, threads=threads)
    # A tokenizer from stdlib source (a second or two), the cpu preset's model shape.
    import sysconfig

    texts, size = [], 0
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        t = p.read_text(errors="ignore")
        texts.append(t)
        size += len(t)
        if size > 3_000_000:
            break
    tok = Tokenizer.train(texts, 4096)
    cfg = config.load("cpu", ["model.seq_len=1024", *shape])
    cfg.model.vocab_size = tok.vocab_size
    cfg.model.image_token_id = tok.image_id
    model = build(cfg.model, device="cpu", seed=0)
    # Small random weights everywhere (init zeroes the residual projections; random ones
    # make the logits vary as a trained model's do, so that sampling is not degenerate).
    with torch.no_grad():
        for p_ in model.parameters():
            if p_.dim() == 2 and p_.abs().sum() == 0:
                p_.normal_(0, 0.02)
    return Engine(model, tok, cfg, name="bench", device="cpu", max_batch=max_batch, threads=threads)


def kv_vs_recompute(engine, ctx: int = 512, new: int = 32) -> tuple[float, float]:
    model = engine.model
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(300, engine.tokenizer.vocab_size - 20, (ctx,), generator=g).tolist()
    kv = kv_vs_recompute_kv_only(engine, ctx, new)  # the decode phase only (first token → last), greedy
    # recompute: the whole prefix through the model for every new token
    idx = torch.tensor([prompt])
    n = max(4, new // 4)
    with torch.no_grad():
        model(idx)  # warm-up
        t0 = time.perf_counter()
        for _ in range(n):
            nxt = model(idx)[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], 1)
        re = n / (time.perf_counter() - t0)
    return kv, re


def load(engine, clients: int, seconds: float, prompt_len: int = 100, max_tokens: int = 64, **sampling):
    """`clients` threads, each sending one request after another for `seconds` (sampling: more
    SamplingParams fields). Returns (generated tokens/s over the whole window, TTFTs of the requests)."""
    from glassgpt.serve.engine import SamplingParams

    vocab = engine.tokenizer.vocab_size
    stop_at = time.perf_counter() + seconds
    ttfts, counts = [], []
    lock = threading.Lock()

    def client(i):
        g = torch.Generator().manual_seed(i)
        n_tok = 0
        while time.perf_counter() < stop_at:
            prompt = torch.randint(300, vocab - 20, (prompt_len,), generator=g).tolist()
            q: queue.Queue = queue.Queue()
            t0 = time.perf_counter()
            req = engine.submit(prompt, SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=i, **sampling),
                                q.put)
            first = None
            while True:
                ev = q.get()
                if ev.kind == "token" and first is None:
                    first = time.perf_counter() - t0
                if ev.kind in ("finish", "error"):
                    break
            n_tok += req.completion_tokens
            if first is not None:
                with lock:
                    ttfts.append(first)
        with lock:
            counts.append(n_tok)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0), ttfts


def precision_compare(engine, clients: int, seconds: float) -> None:
    import copy

    from glassgpt.serve.engine import Engine
    from glassgpt.train.dist import cpu_capability

    bf = Engine(copy.deepcopy(engine.model), engine.tokenizer, engine.cfg, name="bench-bf16", device="cpu",
                max_batch=engine.max_batch, precision="bf16", threads=engine.threads)
    try:
        single = {"fp32": [], "bf16": []}
        multi = {"fp32": [], "bf16": []}
        for _ in range(2):
            for name, e, other in (("fp32", engine, bf), ("bf16", bf, engine)):
                # one engine thread at a time: each idle one keeps OpenMP threads, and more of them than
                # cores slows every parallel region (Engine.own_threads)
                other.stop()
                e.start()
                single[name].append(kv_vs_recompute_kv_only(e))
                multi[name].append(load(e, clients, seconds)[0])
        engine.start()
        s32, s16, m32, m16 = max(single["fp32"]), max(single["bf16"]), max(multi["fp32"]), max(multi["bf16"])
        print(f"[4] bf16 vs fp32 decode (CPU: {cpu_capability()}): single stream at 512 context {s16:.1f} vs "
              f"{s32:.1f} tok/s -> {s16 / s32:.2f}x; {clients} clients {m16:.1f} vs {m32:.1f} tok/s -> "
              f"{m16 / m32:.2f}x  (goal >= 1.5x)")
    finally:
        bf.stop()


def dry_compare(engine, clients: int, seconds: float) -> None:
    """The cost of DRY, the sampling a chat-tuned model gets by default (chat.DEFAULT_SAMPLING), on the
    aggregate decode of `clients` clients: with it against without, alternated twice, best kept."""
    from glassgpt.data.chat import DEFAULT_SAMPLING

    off, on = [], []
    for _ in range(2):
        off.append(load(engine, clients, seconds)[0])
        on.append(load(engine, clients, seconds, **DEFAULT_SAMPLING)[0])
    print(f"[6] DRY ({DEFAULT_SAMPLING}) vs none, {clients} clients: {max(on):.1f} vs {max(off):.1f} tok/s -> "
          f"{max(on) / max(off):.2f}x")


def kv_vs_recompute_kv_only(engine, ctx: int = 512, new: int = 32) -> float:
    """The engine's decode tokens/s at ctx tokens of context (the first half of kv_vs_recompute)."""
    from glassgpt.serve.engine import SamplingParams

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(300, engine.tokenizer.vocab_size - 20, (ctx,), generator=g).tolist()
    stamps, done = [], threading.Event()

    def on(ev):
        if ev.kind == "token":
            stamps.append(time.perf_counter())
        if ev.kind == "finish":
            done.set()

    saved, engine.end_ids = engine.end_ids, set()
    engine.submit(prompt, SamplingParams(max_tokens=new + 1, temperature=0), on)
    done.wait()
    engine.end_ids = saved
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def structured_compare(engine, clients: int, n_requests: int = 32) -> None:
    """Constrained vs unconstrained decoding, the same prompts and seeds. Two measures: the
    decode time per token of each request (first token to last: prefill and grammar compilation
    left out), and the time spent inside the grammar (mask and advance, timed where the engine
    calls them) per constrained token. The first is at the mercy of a shared machine; the second
    is the overhead itself, next to the decode time per token measured in the same run."""
    import random

    from glassgpt.serve import grammar
    from glassgpt.serve.api import Server
    from glassgpt.serve.engine import SamplingParams
    from glassgpt.serve.testing import random_schema

    grammars = Server([engine], None, auth=False).grammars(engine)
    rng = random.Random(0)
    schemas = [random_schema(rng) for _ in range(n_requests)]
    vocab = engine.tokenizer.vocab_size
    inside = [0.0]  # seconds spent in the grammar's mask and advance (engine thread only)
    mask, accept = grammar.Constraint.mask, grammar.Constraint.accept

    def timed(f):
        def wrapped(*a):
            t0 = time.perf_counter()
            try:
                return f(*a)
            finally:
                inside[0] += time.perf_counter() - t0
        return wrapped

    def run(k: int, constrained: bool) -> tuple[float, int]:
        """k concurrent clients share the requests; returns (decode seconds summed over requests, tokens)."""
        spans, lock = [], threading.Lock()

        def client(c):
            for i in range(c, n_requests, k):
                g = torch.Generator().manual_seed(i)
                prompt = torch.randint(300, vocab - 20, (32,), generator=g).tolist()
                con = grammars.matcher(grammars.json_schema(schemas[i], "s"), "s") if constrained else None
                stamps, q = [], queue.Queue()
                engine.submit(prompt, SamplingParams(max_tokens=64, temperature=1.0, seed=i, constraint=con), q.put)
                while True:
                    ev = q.get()
                    if ev.kind == "token":
                        stamps.append(time.perf_counter())
                    if ev.kind in ("finish", "error"):
                        break
                if len(stamps) > 1:
                    with lock:
                        spans.append((stamps[-1] - stamps[0], len(stamps) - 1))

        threads = [threading.Thread(target=client, args=(c,)) for c in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(s for s, _ in spans), sum(n for _, n in spans)

    grammar.Constraint.mask, grammar.Constraint.accept = timed(mask), timed(accept)
    try:
        for k in (1, clients):
            free, con, work = [], [], []
            for _ in range(2):  # alternated, best kept: the machine is shared
                t, n = run(k, False)
                free.append(t / n)
                inside[0] = 0.0
                t, n = run(k, True)
                con.append(t / n)
                work.append(inside[0] / n)  # grammar seconds per constrained token (every sequence's)
            f, c, w = min(free), min(con), min(work)
            # with k sequences per step, a step's grammar work is k x w: compare per step
            print(f"[5] constrained decoding (json_schema, llguidance), {k} client(s): grammar work {w * 1e3:.3f} ms per "
                  f"sequence-token = {w * k / c:.1%} of a constrained decode step ({c * 1e3:.2f} ms; unconstrained "
                  f"{f * 1e3:.2f} ms, ratio {c / f:.2f}x on this shared machine)")
    finally:
        grammar.Constraint.mask, grammar.Constraint.accept = mask, accept


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a run directory (default: cpu-preset shape, random weights)")
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each load phase")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--width", type=int, default=0, help="model width (default: the cpu preset's); 512 with --depth 5: 20M")
    ap.add_argument("--depth", type=int, default=0)
    ap.add_argument("--only-precision", action="store_true", help="run section 4 only")
    ap.add_argument("--only-structured", action="store_true", help="run section 5 only")
    ap.add_argument("--only-dry", action="store_true", help="run section 6 only")
    ap.add_argument("--threads", type=int, default=0, help="the engine's torch threads (default: all)")
    a = ap.parse_args(argv)
    from glassgpt.serve.engine import Engine

    threads = Engine.own_threads()  # as `glassgpt serve` runs: torch's parallel work on the engine thread
    threads = a.threads or threads
    torch.manual_seed(0)
    shape = ([f"model.width={a.width}"] if a.width else []) + ([f"model.depth={a.depth}"] if a.depth else [])
    engine = build_engine(a.checkpoint, max_batch=max(16, a.clients), shape=shape, threads=threads).start()
    try:
        m = engine.mcfg
        print(f"model: depth {m.depth}, d_model {m.d_model}, {sum(p.numel() for p in engine.model.parameters()):,} params, "
              f"context {engine.context_window}, engine threads {engine.threads}")
        if a.only_precision:
            precision_compare(engine, a.clients, a.seconds)
            return 0
        if a.only_structured:
            structured_compare(engine, a.clients)
            return 0
        if a.only_dry:
            dry_compare(engine, a.clients, a.seconds)
            return 0
        kv, re = kv_vs_recompute(engine)
        print(f"[1] decode at 512 context: KV cache {kv:.1f} tok/s vs recompute {re:.1f} tok/s  -> {kv / re:.1f}x  (goal >= 5x)")
        one, _ = load(engine, 1, a.seconds)
        many, ttft = load(engine, a.clients, a.seconds)
        print(f"[2] aggregate decode: {a.clients} clients {many:.1f} tok/s vs 1 client {one:.1f} tok/s  -> "
              f"{many / one:.1f}x  (goal >= 4x)")
        _, idle = load(engine, 1, min(3.0, a.seconds))
        idle50 = statistics.median(idle)
        p50, p99 = pct(ttft, 50), pct(ttft, 99)
        print(f"[3] TTFT, 100-token prompt, {a.clients} clients: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
              f"({len(ttft)} requests) = {p50 / idle50:.1f}x / {p99 / idle50:.1f}x the idle-engine TTFT "
              f"({idle50 * 1000:.0f} ms)")
        precision_compare(engine, a.clients, a.seconds)
        structured_compare(engine, a.clients)
        dry_compare(engine, a.clients, a.seconds)
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
