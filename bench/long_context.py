"""The long-context stage and 32K serving, measured (docs/long_context.md).

    python bench/long_context.py --init-from runs/chat_base          # the `long` preset stage, then all below
    python bench/long_context.py --stage runs/chat_long               # measure an existing stage run
    python bench/long_context.py --quick                              # tiny preset, seconds-to-minutes (a test)

Prints: the stage's wall time (and, with --doc-mask-both, held-out loss with and without document
masking from the same parent); the pass-key / needle table over lengths x 10 depths (heatmap PNG),
multi-needle and conversation recall; held-out loss by position bucket (plot); peak memory of a
32K forward (process RSS, against the T x T fp32 matrix it does not allocate) and of a 32K KV
cache; prefill tokens/s at 1K..32K, chunked against whole-prompt prefill (the reference, same run);
inter-token latency p99 of 8 streaming clients idle and while one long prompt prefills, with
chunked prefill and without (the ratio each). Every timing is on this machine's CPU, printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    from glassgpt.train.dist import cpu_name as name

    return name()


def rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> None:
    """Start the kernel's peak-RSS count (VmHWM) afresh (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return rss_mb()


# --- children: peak memory in a fresh process ----------------------------------------------------------
def child(kind: str, spec: dict) -> dict:
    from glassgpt.config import ModelConfig
    from glassgpt.model.gpt import KVCache, build

    torch.set_num_threads(spec.get("threads", 2))
    cfg = ModelConfig(**spec["model"])
    T = cfg.seq_len
    if kind == "forward":
        model = build(cfg)
        model.eval()
        x = torch.randint(0, cfg.vocab_size, (1, T))
        before = rss_now_mb()
        reset_peak()
        t0 = time.time()
        with torch.no_grad():
            model(x, last=True)
        return {"T": T, "peak_rss_mb": peak_mb(), "base_rss_mb": before, "seconds": time.time() - t0}
    before = rss_now_mb()
    reset_peak()
    cache = KVCache(cfg, 1, T, "cpu", torch.float32)
    cache.k.fill_(1.0)
    cache.v.fill_(1.0)
    return {"T": T, "peak_rss_mb": peak_mb(), "base_rss_mb": before, "bytes": cache.k.numel() * 4 * 2}


def in_child(kind: str, spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(spec)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- serving ---------------------------------------------------------------------------------------
def prefill_rate(engine, n: int, reps: int = 1) -> float:
    from glassgpt.serve.engine import SamplingParams

    ids = torch.randint(4, engine.tokenizer.vocab_size, (n - 1,)).tolist()  # + the generated token: n in the window
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        engine.generate(ids, SamplingParams(max_tokens=1, temperature=0.0))
        best = min(best, time.perf_counter() - t0)
    return len(ids) / best


def itl(engine, long_len: int | None, clients: int = 8, warm_tokens: int = 4, tokens: int = 48) -> dict:
    """Inter-token gaps of `clients` streams: idle (long_len None: `tokens` tokens a stream) or while one
    prompt of long_len tokens prefills (gaps inside that prefill's window only; stream_tokens: how many tokens
    past the warm-up the streams had by its end, so that the idle reference can cover the same stream lengths: a stream's
    own decode step slows as it grows, 3x over a 32K prefill at one thread)."""
    from glassgpt.serve.engine import SamplingParams

    stamps = [[] for _ in range(clients)]
    reqs = []
    budget = min(engine.slot_len - 2, 100000) - 1
    for i in range(clients):
        cb = (lambda k: (lambda ev: stamps[k].append(time.perf_counter()) if ev.kind == "token" else None))(i)
        reqs.append(engine.submit([engine.tokenizer.bos_id], SamplingParams(max_tokens=budget, temperature=1.0, seed=i), cb))
    while min(len(s) for s in stamps) < warm_tokens:
        time.sleep(0.005)
    window = None
    if long_len:
        done = threading.Event()
        first = []
        ids = torch.randint(4, engine.tokenizer.vocab_size, (long_len - 1,)).tolist()  # + 1 generated: the window
        t0 = time.perf_counter()
        engine.submit(ids, SamplingParams(max_tokens=1, temperature=0.0),
                      lambda ev: (first.append(time.perf_counter()), done.set()) if ev.kind in ("token", "finish") else None)
        done.wait(timeout=3600)
        window = (t0, first[0] if first else time.perf_counter())
        deadline = time.perf_counter() + 60
        while any(st[-1] <= window[1] for st in stamps) and time.perf_counter() < deadline:
            time.sleep(0.002)  # every stream's first token after the prefill closes its gap
    else:
        start = [len(s) for s in stamps]
        while min(len(s) - a for s, a in zip(stamps, start)) < tokens:
            time.sleep(0.005)
    for r in reqs:
        r.cancel()
    while engine.n_running or engine.prefilling:
        time.sleep(0.01)
    gaps = []
    for s in stamps:
        ts = np.array(s[warm_tokens - 1:])
        if window:  # every gap that overlaps the prefill (a stall is one gap spanning all of it)
            a, b = ts[:-1], ts[1:]
            gaps += list((b - a)[(b >= window[0]) & (a <= window[1])])
        else:
            gaps += list(np.diff(ts))
    gaps = np.array(gaps) * 1000
    out = {"gaps": len(gaps), "p50_ms": float(np.percentile(gaps, 50)) if len(gaps) else float("nan"),
           "p99_ms": float(np.percentile(gaps, 99)) if len(gaps) else float("nan")}
    if window:
        out["prefill_s"] = window[1] - window[0]
        out["stream_tokens"] = int(np.median([np.searchsorted(st, window[1]) + 1 - warm_tokens for st in stamps]))
    return out


# --- the run ---------------------------------------------------------------------------------------
def stage_config(args, doc_mask: bool):
    from glassgpt import config

    if args.quick:  # the tiny preset's shape and corpus, extended 64 -> 256 tokens
        ov = ["model.seq_len=256", "model.rope_scaling=yarn", "model.rope_scale=4", "model.rope_original_len=64",
              "long.curriculum=64:0.5,256:0.5", f"long.doc_mask={'true' if doc_mask else 'false'}",
              "train.batch_size=2", "train.tokens=8192", "train.eval_every=16", "train.eval_tokens=2048",
              "train.checkpoint_every=16", "train.log_every=4", f"data.cache_dir={args.out / 'cache'}"]
        return config.load("tiny", ov + args.overrides)
    return config.load("long", [f"long.doc_mask={'true' if doc_mask else 'false'}"] + args.overrides)


def run_stage(args, parent: Path, doc_mask: bool, out: Path) -> dict:
    from glassgpt.train.trainer import train

    cfg = stage_config(args, doc_mask)
    t0 = time.time()
    rep = train(cfg, out, init_from=parent)
    rep["wall_s"] = time.time() - t0
    return rep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset: a base and a 64 -> 256 stage trained here")
    ap.add_argument("--init-from", type=Path, help="the parent run of the `long` stage (e.g. runs/chat_base)")
    ap.add_argument("--stage", type=Path, help="measure this existing stage run instead of training one")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_long"))
    ap.add_argument("--doc-mask-both", action="store_true", help="train the stage with and without document masking")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-evals", action="store_true", help="the stage (if trained here), memory and serving only: no retrieval grid, no loss by position")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="the serving engines' weights and KV cache (both engines alike)")
    ap.add_argument("--depths", type=int, default=10,
                    help="depths per length in the pass-key/needle grid (10: the issue's grid; fewer: evenly spread, faster)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], json.loads(args.child[1]))))
        return 0
    from glassgpt import config
    from glassgpt.train.checkpoint import load_model

    args.overrides = config.parse_overrides(rest)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"cpu: {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; load average "
          f"{os.getloadavg()[0]:.1f} at start (a shared machine: timings are noisy)")

    # 1. the stage ---------------------------------------------------------------------------------
    stage = args.stage
    if stage is None:
        parent = args.init_from
        if args.quick and parent is None:
            from glassgpt.train.trainer import train

            parent = args.out / "base"
            if not (parent / "report.json").exists():
                train(config.load("tiny", ["train.tokens=32000", f"data.cache_dir={args.out / 'cache'}"]), parent)
        if parent is None:
            ap.error("give --init-from PARENT_RUN (or --stage RUN, or --quick)")
        variants = [True, False] if args.doc_mask_both or args.quick else [stage_config(args, True).long.doc_mask]
        reports = {}
        for dm in variants:
            out = args.out / f"stage_docmask_{'on' if dm else 'off'}"
            if out.exists():
                import shutil

                shutil.rmtree(out)
            reports[dm] = run_stage(args, parent, dm, out)
        print("\n== the long-context stage ==")
        for dm, rep in reports.items():
            held = ", ".join(f"{k} {v['loss']:.4f}" for k, v in rep["heldout"].items())
            print(f"doc_mask={'on ' if dm else 'off'}: wall {rep['wall_s']:.1f} s, {rep['steps']} steps, "
                  f"{rep['tokens']:,} tokens, peak RSS {rep['peak_rss_mb']:.0f} MB; held-out loss: {held}")
        stage = args.out / f"stage_docmask_{'on' if variants[0] else 'off'}"

    model, tok, cfg = load_model(stage)
    T = cfg.model.seq_len
    print(f"\nstage model: {stage} (seq_len {T}, rope {cfg.model.rope_scaling} x{cfg.model.rope_scale:g}, "
          f"original {cfg.model.rope_original_len})")

    if not args.skip_evals:
        evals(args, model, tok, cfg, stage)
    memory_and_serving(args, model, tok, cfg)
    print(f"\npeak RSS of this process: {rss_mb():.0f} MB; load average {os.getloadavg()[0]:.1f} at the end")
    return 0


def evals(args, model, tok, cfg, stage) -> None:
    from glassgpt.evals import longctx
    from glassgpt.serve.engine import Engine

    T = cfg.model.seq_len
    # 2. retrieval across the window -----------------------------------------------------------------
    lengths = [n for n in (longctx.LENGTHS if T >= 1024 else (32, 64, 128, 256)) if n <= T]
    eng = Engine(model, tok, device="cpu", max_batch=8)
    grids = []
    depths = [longctx.DEPTHS[round(i * 9 / max(1, args.depths - 1))] for i in range(args.depths)]
    for kind in ("passkey", "needle"):
        g = longctx.grid(eng, kind, lengths=lengths, depths=depths)
        grids.append(g)
        print("\n" + longctx.format_grid(g))
    cells = [v for g in grids for row in g["acc"] for v in row if v is not None]
    longctx.heatmap(grids, args.out / "retrieval_heatmap.png")
    for kind in ("multi_needle", "conversation"):
        g = longctx.grid(eng, kind, lengths=[lengths[-1]], depths=longctx.DEPTHS[::3])
        vals = [v for v in g["acc"][0] if v is not None]
        print(f"{kind} at {lengths[-1]:,} tokens: {np.mean(vals):.0%} over {len(vals)} prompts")
    print(f"heatmap: {args.out / 'retrieval_heatmap.png'} ({len(cells)} cells, mean {np.mean(cells):.0%})")
    del eng  # its KV cache

    # 3. held-out loss by position -------------------------------------------------------------------
    from glassgpt.data.shards import Corpus, prepare

    corpus = Corpus(prepare(cfg.data, tokenizer=Path(stage) / "tokenizer.json", progress=False))
    series = {}
    for name in corpus.heldout_sets:
        rows = corpus.split(name, T)
        if len(rows):
            idx = np.linspace(0, len(rows) - 1, min(len(rows), 2 if T > 8192 else 8)).round().astype(int)
            series[name] = longctx.loss_by_position(model, rows.get(idx))
    print("\n== held-out loss by position (nats/token) ==")
    if series:
        bks = next(iter(series.values()))
        print(f"{'split':>24} | " + " ".join(f"{b['lo']:>6}-{b['hi']:<6}" for b in bks))
        for name, bs in series.items():
            print(f"{name:>24} | " + " ".join(f"{b['loss']:>13.4f}" for b in bs))
        longctx.plot_loss_by_position(series, args.out / "loss_by_position.png")
        print(f"plot: {args.out / 'loss_by_position.png'}")


def memory_and_serving(args, model, tok, cfg) -> None:
    from glassgpt.serve.engine import Engine

    # 4. memory at 32K -------------------------------------------------------------------------------
    m = cfg.model
    big = dataclasses.replace(m, seq_len=32768)  # the run's model (smear, RoPE, ...) in a 32K window
    if big.rope_original_len and big.rope_original_len * big.rope_scale < big.seq_len:
        big.rope_scale = big.seq_len / big.rope_original_len
    spec = {"model": dataclasses.asdict(big), "threads": args.threads}
    fwd, kv = in_child("forward", spec), in_child("kv", spec)
    print("\n== memory at 32,768 tokens (fresh process each) ==")
    if "error" in fwd:
        print(f"forward: failed: {fwd['error']}")
    else:
        square = 32768 ** 2 * 4 / 2**20
        print(f"32K forward: peak RSS {fwd['peak_rss_mb']:.0f} MB ({fwd['peak_rss_mb'] - fwd['base_rss_mb']:.0f} MB over "
              f"the built model), {fwd['seconds']:.1f} s; one T x T fp32 matrix would be {square:.0f} MB per head "
              f"per layer: ratio {(fwd['peak_rss_mb'] - fwd['base_rss_mb']) / square:.3f}")
    if "error" not in kv:
        print(f"32K KV cache: {kv['bytes'] / 2**20:.0f} MB of keys and values (fp32), peak RSS "
              f"{kv['peak_rss_mb']:.0f} MB ({kv['peak_rss_mb'] - kv['base_rss_mb']:.0f} MB over the process)")

    # 5. prefill speed and latency -------------------------------------------------------------------
    from glassgpt.model.gpt import build

    served = build(big)
    served.load_state_dict(model.state_dict())  # the stage's weights in a 32K window
    max_len = 4096 if args.quick else 32768
    plens = [n for n in (1024, 2048, 4096, 8192, 16384, 32768) if n <= max_len]
    long_len = plens[-1]
    results = {}
    # one engine at a time: at 32K each holds 9 whole-context KV slots (2.3 GB for the chat shape)
    # the reference: each prompt prefilled whole, up to 16K (a 32K prompt in one call would need a 1 GB
    # boolean mask that SDPA turns into a 4 GB float one; it goes in two 16K calls)
    for name, kw in (("chunked", {}), ("whole (<=16K)", {"prefill_chunk": 16384, "prefill_share": None})):
        e = Engine(served, tok, device="cpu", max_batch=9, precision=args.precision, **kw)  # chunked: the defaults (2048, share 2)
        prefill_rate(e, 16)  # warm-up: allocates the KV cache, which the timings below must not include
        rates = [prefill_rate(e, n, reps=2 if n <= 8192 else 1) for n in plens]
        e.end_ids = set()  # the streams run to their budget: none ends early on its own
        e.start()
        try:
            busy = itl(e, long_len)
            results[name] = (rates, itl(e, None, tokens=max(48, busy["stream_tokens"])), busy)
        finally:
            e.stop()
        del e
    print("\n== prefill tokens/s (one prompt alone, 1 generated token) ==")
    print(f"{'prompt':>8} | {'chunked 2048':>12} | {'whole (<=16K)':>13} | ratio")
    for n, a, b in zip(plens, results["chunked"][0], results["whole (<=16K)"][0]):
        print(f"{n:>8,} | {a:>12,.0f} | {b:>13,.0f} | {a / b:.2f}")
    print(f"\n== inter-token latency of 8 streaming clients, idle vs while one {long_len:,}-token prompt prefills "
          "(idle: streams grown as long as they did during the prefill) ==")
    for name, (_, idle, busy) in results.items():
        print(f"{name:>13}: idle p99 {idle['p99_ms']:.1f} ms (p50 {idle['p50_ms']:.1f}, {idle['gaps']} gaps); during the prefill "
              f"({busy['prefill_s']:.1f} s) p99 {busy['p99_ms']:.1f} ms (p50 {busy['p50_ms']:.1f}, {busy['gaps']} gaps): "
              f"ratio {busy['p99_ms'] / idle['p99_ms']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
