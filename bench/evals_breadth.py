"""Breadth: load and run every registry eval whose class glassgpt implements, with the
scripted completion function (the grader too, for model-graded evals), and print counts.

    glassgpt eval fetch-registry            # or: --registry_path of an unpacked wheel
    .venv/bin/python bench/evals_breadth.py --registry_path ~/.cache/glassgpt/evals-registry/registry

MultipleChoice evals on hf:// data sets need the `datasets` library and the data locally;
without them they are counted separately as "needs a data set", not as failures."""

from __future__ import annotations

import argparse
import collections
import logging
import tempfile
import time
from pathlib import Path

from glassgpt.evals import Registry
from glassgpt.evals.completion_fns import ScriptedCompletionFn
from glassgpt.evals.errors import EvalError
from glassgpt.evals.runner import run_eval


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--registry_path", required=True)
    ap.add_argument("--max_samples", type=int, default=3)
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    reg = Registry([a.registry_path])
    rows = reg.listing()
    supported = [r for r in rows if r["supported"]]
    print(f"{len(rows)} evals in the registries; {len(supported)} use classes glassgpt implements")
    tmp = Path(tempfile.mkdtemp(prefix="glassgpt-breadth-"))
    ok, needs_data, failed = collections.Counter(), [], []
    t0 = time.perf_counter()
    for r in supported:
        cls = r["class"].split(":")[-1]
        fns = [ScriptedCompletionFn(echo=True, name="echo", loglikelihood_fn=lambda c, x: (-float(len(x)), False))]
        if cls == "ModelBasedClassify":
            if reg.get_eval(r["name"]).args.get("multicomp_n") == "from_models":
                fns.append(ScriptedCompletionFn(default="another answer", name="echo2"))
            fns.append(ScriptedCompletionFn(default="Yes", name="grader"))
        try:
            res = run_eval(r["name"], fns, reg, record_path=tmp / f"{r['name']}.jsonl", max_samples=a.max_samples,
                           threads=4, show_progress=False, command="breadth")
            if res.errors:
                failed.append((r["name"], f"{res.errors} sample errors"))
            else:
                ok[cls] += 1
        except EvalError as e:
            if "hf://" in str(e) or "datasets" in str(e):
                needs_data.append(r["name"])
            else:
                failed.append((r["name"], str(e)[:160]))
    print(f"ran {sum(ok.values())}/{len(supported)} evals cleanly in {time.perf_counter() - t0:.0f}s "
          f"({a.max_samples} samples each): " + ", ".join(f"{k} {v}" for k, v in sorted(ok.items())))
    print(f"needs a local hf data set (datasets library): {len(needs_data)}")
    print(f"failed: {len(failed)}")
    for name, why in failed:
        print(f"  {name}: {why}")


if __name__ == "__main__":
    main()
