"""Capability prediction error against the compute fraction of the largest rung, over seeds.

Reads the finished ladders and targets of a `bench/predict_accuracy.py` run (--out), scores every
run on the target's line that has no current capability.json (glassgpt.scaling.capability: the
last tokens of held-out code lines, sampled pass rate at T = 1), then for each fraction f fits the
GPT-4 form −E[log pass rate](C) = α·C^(−k) on the line points of ≤ f of the target's FLOPs, over
the problems they solve at least sometimes, and compares with the target. The reference, from the
same runs: predicting that the target scores what the largest rung scored (no scaling law at all).
It also prints how often the actual lies inside the prediction's 90% interval (cN: N of them
confident, i.e. with a backtest inside the ladder). A second table fits the same power law to the mean
over every problem (no solvable filter: our pass rates are exact, so none is −∞), with its own 90%
interval, against the target's mean over every problem; it still predicts where too few problems are
solvable for the GPT-4 form.

    python bench/capability_accuracy.py --out runs/bench_predict --fractions 0.34,0.2,0.1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np

from glassgpt.errors import CheckpointError, ScalingError
from glassgpt.scaling import capability, fit, ladder


def rows_for_seed(root: Path, fractions: list[float]) -> list[dict]:
    lad, target = root / "ladder", root / "target"
    coll = ladder.collect(lad)
    plan = coll["plan"]
    T = plan["target"]["flops"]
    pts = [p for p in coll["points"] if p["status"] == "done"]
    line = fit.on_line(pts, **fit.line_of(plan["target"], plan.get("line")))
    tgt = {"dir": str(target)}
    for p in line + [tgt]:
        p["capability"] = capability.load(p["dir"])
        if p["capability"] is None:
            logging.info("scoring %s", p["dir"])
            try:
                capability.evaluate_run(Path(p["dir"]))
            except CheckpointError as e:  # e.g. a size stopped by a time limit before its scoring
                if p is tgt:
                    raise
                logging.warning("left out: %s (unscored, %s)", p["dir"], e)
                continue
            p["capability"] = capability.load(p["dir"])
    line = [p for p in line if p["capability"] is not None]
    tgt = tgt["capability"]
    rows = []
    for task in capability.TASKS:
        for f in fractions:
            use = sorted((p for p in line if p["flops"] <= f * T * (1 + 1e-9)), key=lambda p: p["flops"])
            row = {"seed": root.name, "task": task, "fraction": f, "max_run_fraction": use[-1]["flops"] / T if use else None}
            try:
                pr = capability.fit_and_predict([fit.compute(p) for p in use], [p["capability"][task] for p in use],
                                                fit.compute(plan["target"]), task)
            except ScalingError as e:  # too few rungs at this fraction
                rows.append({**row, "refused": str(e)})
                continue
            # the same law on every problem, no solvable filter (capability.fit_and_predict)
            row["unfiltered"] = _versus(pr["unfiltered"], capability.compare(pr["unfiltered"], tgt[task]))
            if pr.get("refused"):
                rows.append({**row, "refused": pr["refused"]})
                continue
            S = pr["problems"]
            c = capability.compare(pr, tgt[task], S)
            largest = -float(np.mean(np.asarray(use[-1]["capability"][task])[S]))
            rows.append({**row, **_versus(pr, c), "k": pr["k"], "predicted": pr["predicted_neg_mean_log_pass"],
                         "actual": c["actual_neg_mean_log_pass"],
                         "largest_rung_error": largest / c["actual_neg_mean_log_pass"] - 1})
    return rows


def _versus(pr: dict, c: dict) -> dict:
    """A bench row's view of a prediction compared with the target (capability.compare)."""
    return {"n_problems": pr["n_problems"], "pass_predicted": pr["predicted"], "pass_actual": c["actual"],
            "ci90": pr["ci90"], "confident": pr["confident"], "error": c["neg_mean_log_pass_error"],
            "inside": c["inside_ci90"]}


def _label(rs: list[dict]) -> str:
    frac = np.median([r["max_run_fraction"] for r in rs])
    return f"{frac:.2f}" if frac > 0.3 else f"1/{1 / frac:.0f}"


def _passes(rs: list[dict]) -> str:
    return "  ".join(f"{r['pass_predicted']:.3g} [{r['ci90'][0]:.3g}, {r['ci90'][1]:.3g}] / {r['pass_actual']:.3g}" for r in rs)


def table(rows: list[dict]) -> str:
    """Two tables: the GPT-4 form over the solvable problems, then the same law over every problem."""
    keys = sorted({(r["task"], r["fraction"]) for r in rows}, key=lambda k: (capability.TASKS.index(k[0]), -k[1]))
    head = f"{'task':>13} {'fraction':>9} {'problems':>11} {'−E[log p] error per seed':>28} {'mean |err|':>10} "
    tail = f"{'inside 90%':>10}   geometric-mean pass rate: predicted [90% interval] / actual"

    def section(title, pick, with_ref):
        out = [title, head + (f"{'largest rung as the prediction':>31} " if with_ref else "") + tail]
        for task, f in keys:
            rs = [r for r in rows if r["task"] == task and r["fraction"] == f]
            ok = [pick(r) for r in rs if pick(r)]
            if not ok:
                out.append(f"{task:>13} {f:>9.3g}  refused: {rs[0]['refused']}")
                continue
            errs = " ".join(f"{r['error']:+7.1%}" for r in ok) + "".join("   refused" for r in rs if not pick(r))
            ref = " ".join(f"{r['largest_rung_error']:+7.1%}" for r in ok) if with_ref else ""
            inside = f"{sum(r['inside'] for r in ok)}/{len(ok)} c{sum(r['confident'] for r in ok)}"
            out.append(f"{task:>13} {_label(ok):>9} {'/'.join(str(r['n_problems']) for r in ok):>11} {errs:>28} "
                       f"{np.mean([abs(r['error']) for r in ok]):>10.1%} " + (f"{ref:>31} " if with_ref else "")
                       + f"{inside:>10}   {_passes(ok)}")
        return out

    return "\n".join(section("the GPT-4 form, over the problems the rungs solve at least sometimes:",
                             lambda r: r if "error" in r else None, True) + [""]
                     + section("the same law over every problem (no solvable filter):",
                               lambda r: r.get("unfiltered") and r["unfiltered"] | {"max_run_fraction": r["max_run_fraction"]},
                               False))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_predict", help="a finished bench/predict_accuracy.py output folder")
    ap.add_argument("--fractions", default="0.34,0.2,0.1", help="comma-separated compute fractions of the largest rung")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    fractions = sorted((float(f) for f in args.fractions.split(",")), reverse=True)
    seeds = sorted(p for p in Path(args.out).glob("seed*") if (p / "target" / "report.json").exists())
    if not seeds:
        raise SystemExit(f"{args.out} holds no finished seed*/ladder and target: run bench/predict_accuracy.py first")
    rows = [r for s in seeds for r in rows_for_seed(s, fractions)]
    (Path(args.out) / "capability.json").write_text(json.dumps(rows, indent=1))
    print(f"{args.out}: {len(seeds)} seeds; task: {capability.task_label('<set>')}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
