"""Prediction error against compute fraction from several ladders of one target (the GPU lease).

A lease is short, so the ladders of one target come from separate commands (`speedrun` at ≤ 1/1,000,
then `ladder plan/run --max-fraction 0.03`, `0.2`, ...) and the largest may stop unfinished. This
merges every size that follows the target's line (the same transfer rule, the same target config)
into one ladder, drops the budgets that did not run (a size keeps its finished ones), then scores
the prediction from the sizes of ≤ f of the target's FLOPs for each fraction f, with the same table
and plot as `bench/predict_accuracy.py`. It trains nothing; the target trained after every ladder.

    D=docs/scaling/gpu_2026-11-29   # the 2026-11-29 lease, reports only
    python bench/gpu_ladders.py --target $D/gpu_sr/target --out /tmp/gpu_merged $D/gpu_sr/ladder $D/gpu_lad30 $D/gpu_lad5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import predict_accuracy as pa  # noqa: E402  (bench/ is not a package)

from glassgpt.scaling import ladder  # noqa: E402


def merge(ladders: list[Path], out: Path) -> dict:
    """One plan holding every size of the given ladders (first ladder wins a name); each size's
    run directories are linked, and a budget that did not finish is dropped from its size."""
    plans = [ladder.load_plan(d) for d in ladders]
    sha = {p["target"]["config_sha256"] for p in plans}
    if len(sha) != 1:
        raise SystemExit("the ladders were planned for different targets (config_sha256 differs)")
    merged = json.loads(json.dumps(plans[0]))
    merged["sizes"] = []
    (out / "rungs").mkdir(parents=True, exist_ok=True)
    seen = set()
    for d, p in zip(ladders, plans):
        for s in p["sizes"]:
            if s["name"] in seen:
                continue
            keep = [k for k, b in enumerate(s["budgets"])
                    if (ladder.branch_dir(d, s, b) / "report.json").exists()]
            if len(keep) < 2:
                continue
            s = dict(s, **{key: [s[key][k] for k in keep] for key in ("budgets", "decay_starts", "tokens", "flops")})
            link = out / "rungs" / s["name"]
            if not link.exists():
                os.symlink((Path(d) / "rungs" / s["name"]).resolve(), link)
            merged["sizes"].append(s)
            seen.add(s["name"])
    merged["sizes"].sort(key=lambda s: s["params"])
    merged["max_run_flops"] = max(max(s["flops"]) for s in merged["sizes"])
    (out / "plan.json").write_text(json.dumps(merged, indent=1))
    return merged


def plot_line(ladder_dir: Path, rep: dict, path: Path) -> Path:
    """Each size's point on the target's line and the target itself, loss against compute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from glassgpt.scaling import fit

    c = ladder.collect(ladder_dir)
    done = [x for x in c["points"] if x["status"] == "done"]
    line = fit.on_line(done, **fit.line_of(c["plan"]["target"], c["plan"].get("line")))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, color in zip(sorted(rep["heldout"]), ("tab:blue", "tab:orange", "tab:green")):
        ax.plot([x["flops"] for x in line], [x["final_loss"][name] for x in line], "o-", color=color, ms=4, label=name)
        ax.plot([rep["flops"]], [rep["heldout"][name]["loss"]], "*", color=color, ms=14)
    ax.set_yscale("log")
    return pa.finish_plot(fig, ax, path, "training FLOPs (rungs on the target's line; star: the target)",
                          "held-out loss (nats/token)", "gpu preset: the rungs steepen towards the target")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ladders", nargs="+", type=Path)
    ap.add_argument("--target", required=True, type=Path, help="the target's run directory (its report.json)")
    ap.add_argument("--out", required=True, type=Path, help="a new directory for the merged ladder and results")
    ap.add_argument("--fractions", default="0.05,0.025,0.0125,0.005,0.0025,0.001")
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args(argv)
    fractions = [float(x) for x in args.fractions.split(",")]
    plan = merge(args.ladders, args.out)
    rep = json.loads((args.target / "report.json").read_text())
    rows = pa.score(0, pa.predictions(args.out, plan, fractions, args.n_boot), rep)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    pa.plot([r for r in rows if "set" in r], args.out / "error_vs_fraction.png")
    plot_line(args.out, rep, args.out / "line.png")
    sizes = ", ".join(f"{s['name']} (≤ 1/{plan['target']['flops'] / max(s['flops']):.0f})" for s in plan["sizes"])
    print(f"target {rep['params_non_embedding']:,} non-embedding params, {rep['tokens']:,} tokens, "
          f"{rep['flops']:.3g} FLOPs; sizes: {sizes}")
    print(pa.table(rows, fractions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
