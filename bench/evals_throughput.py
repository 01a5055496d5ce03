"""Evals throughput and resume, measured side by side in one run.

A 1,000-sample Match eval; the completion function sleeps 50 ms per request (a simulated
network round trip). Prints samples/s sequentially and with --threads 16, their ratio
(target >= 12x), and a kill-at-50%-then-resume check (target: 0 finished samples re-asked).

    .venv/bin/python bench/evals_throughput.py [--samples 1000] [--delay 0.05] [--seq-samples 100]

The sequential rate is measured on the first --seq-samples samples (a rate, so a
subset suffices; the whole 1,000 would take 50 s)."""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from glassgpt.evals import Registry
from glassgpt.evals.completion_fns import ScriptedCompletionFn
from glassgpt.evals.record import read_record
from glassgpt.evals.runner import run_eval


def make_registry(root: Path, n: int) -> Registry:
    (root / "evals").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "evals" / "b.yaml").write_text(
        "bench-match:\n  id: bench-match.dev.v0\nbench-match.dev.v0:\n  class: evals.elsuite.basic.match:Match\n"
        "  args: {samples_jsonl: s.jsonl}\n")
    with open(root / "data" / "s.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"input": [{"role": "user", "content": f"q{i}"}], "ideal": f"a{i}"}) + "\n")
    return Registry([root], builtin=False)


def answer(prompt, **kw):
    i = int(prompt[-1]["content"][1:])
    return f"a{i}" if i % 3 else "wrong"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seq-samples", type=int, default=100)
    ap.add_argument("--delay", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=16)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="glassgpt-evals-bench-"))
    reg = make_registry(tmp / "reg", a.samples)
    common = dict(show_progress=False, completion_fn_names=["sleepy"])

    fn = ScriptedCompletionFn(fn=answer, delay=a.delay)
    t0 = time.perf_counter()
    run_eval("bench-match", [fn], reg, record_path=tmp / "seq.jsonl", threads=1, max_samples=a.seq_samples, **common)
    seq_rate = a.seq_samples / (time.perf_counter() - t0)

    fn = ScriptedCompletionFn(fn=answer, delay=a.delay)
    t0 = time.perf_counter()
    res = run_eval("bench-match", [fn], reg, record_path=tmp / "par.jsonl", threads=a.threads, **common)
    par_rate = a.samples / (time.perf_counter() - t0)
    print(f"sequential: {seq_rate:7.1f} samples/s ({a.seq_samples} samples, {a.delay * 1000:.0f} ms per request)")
    print(f"threads={a.threads}: {par_rate:7.1f} samples/s ({a.samples} samples, accuracy {res.final_report['accuracy']:.3f})")
    print(f"speedup: {par_rate / seq_rate:.1f}x (target >= 12x)")

    # kill at 50%, then resume
    asked_first, lock = [], threading.Lock()

    def dies_at_half(prompt, **kw):
        with lock:
            if len(asked_first) >= a.samples // 2:
                raise KeyboardInterrupt
            asked_first.append(prompt[-1]["content"])
        return answer(prompt)

    path = tmp / "resume.jsonl"
    try:
        run_eval("bench-match", [ScriptedCompletionFn(fn=dies_at_half, delay=a.delay)], reg, record_path=path,
                 threads=a.threads, **common)
    except KeyboardInterrupt:
        pass
    finished = {e.sample_id for e in read_record(path).events}
    finished_prompts = {f"q{sid.rsplit('.', 1)[1]}" for sid in finished}
    asked_again = []

    def counting(prompt, **kw):
        with lock:
            asked_again.append(prompt[-1]["content"])
        return answer(prompt)

    res2 = run_eval("bench-match", [ScriptedCompletionFn(fn=counting, delay=a.delay)], reg, record_path=path,
                    threads=a.threads, resume=True, **common)
    reasked = len(set(asked_again) & finished_prompts)
    total = len(read_record(path).get_events("match"))
    print(f"resume: killed after {len(finished)}/{a.samples} samples finished; resumed run asked {len(asked_again)}, "
          f"re-asked finished: {reasked} (target 0); record has {total} verdicts; "
          f"accuracy {res2.final_report['accuracy']:.3f} = uninterrupted {res.final_report['accuracy']:.3f}")


if __name__ == "__main__":
    main()
