"""Prediction error against the compute fraction of the largest rung, over seeds.

For each seed: one ladder up to the largest fraction asked for, one target run; then, for each
fraction f, the fits use only the ladder points of ≤ f of the target's FLOPs (a smaller ladder
inside the big one) and predict the target. Prints, per held-out set and fraction: relative
error per seed, mean |error|, how often the actual lies inside the 90% interval, and what the
regime check said. Nothing of a target feeds its fits (the target trains after its ladder).

    python bench/predict_accuracy.py --preset tiny --seeds 3
    python bench/predict_accuracy.py --preset cpu --seeds 3 --fractions 0.3,0.1,0.03 -- --train.tokens=1000000

`--refit` trains nothing: it refits the finished ladders under --out with the current code,
scores the predictions against the targets' report.json already there and prints the same table
(and writes refit.json, seed*/predictions_refit.json); `--drift-correction` applies an optional
correction of the point prediction (see predict.analyse; off by default; files refit_drift-*.json).
`--line`, `--batch`, `--sizes`, `--ratios`, `--width-step`, `--min-steps` override the preset's ladder
options; `--ladder-only` trains and registers the ladders but no target, so that two ladder rules can be
scored against the same targets (link them in as seed<i>/target, then `--refit`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from glassgpt import config
from glassgpt.errors import ScalingError
from glassgpt.scaling import ladder, predict
from glassgpt.train import checkpoint
from glassgpt.train.trainer import train

log = logging.getLogger("bench")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seed index to start from (seed i trains with train.seed=1337+i, under --out/seed<i>)")
    ap.add_argument("--fractions", default=None, help="comma-separated compute fractions of the largest rung")
    ap.add_argument("--out", default="runs/bench_predict")
    ap.add_argument("--n-boot", type=int, default=50)
    ap.add_argument("overrides", nargs="*", help="--section.key=value overrides of the target (after --)")
    ap.add_argument("--replot", action="store_true",
                    help="train and fit nothing: reprint the table and redraw error_vs_fraction.png from --out/results.json")
    ap.add_argument("--refit", action="store_true",
                    help="train nothing: refit the finished ladders under --out with the current code and score them "
                         "against the finished targets")
    ap.add_argument("--drift-correction", choices=predict.DRIFT_CORRECTIONS, default=None,
                    help="with --refit: correct each point prediction by the ladder's own extrapolation bias (off by default)")
    ap.add_argument("--ladder-only", action="store_true",
                    help="train the ladders and register their predictions, not the targets (score them later with "
                         "--refit, e.g. against a target another --out trained: link it as seed<i>/target)")
    add_ladder_args(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.replot:
        rows = json.loads((Path(args.out) / "results.json").read_text())
        print(table(rows, sorted({r["fraction"] for r in rows}, reverse=True)))
        print(plot(rows, Path(args.out) / "error_vs_fraction.png"))
        return 0
    opts = ladder_opts(args)
    fractions = sorted((float(f) for f in args.fractions.split(",")) if args.fractions else
                       [opts.max_fraction, opts.max_fraction / 3, opts.max_fraction / 10], reverse=True)
    if args.refit:
        return refit(args, fractions)
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        ov = config.parse_overrides(args.overrides) + [f"train.seed={1337 + seed}"]
        cfg = config.load(args.preset, ov)
        root = Path(args.out) / f"seed{seed}"
        lad = root / "ladder"
        plan = ladder.plan(cfg, **plan_kwargs_at(opts, fractions[0]))
        ladder.save_plan(plan, lad)
        ladder.run(lad, capability=False)
        # predictions at every fraction are computed (and kept) before the target trains
        preds = predictions(lad, plan, fractions, args.n_boot)
        (root / "predictions.json").write_text(json.dumps(preds, indent=1))
        if args.ladder_only:
            continue
        target = root / "target"
        rep = json.loads((target / "report.json").read_text()) if (target / "report.json").exists() else \
            train(cfg, target, resume=checkpoint.latest(target) is not None)
        rows += score(seed, preds, rep)
    if args.ladder_only:
        print(f"ladders trained under {args.out}; no target trained (--ladder-only): score them with --refit")
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1))
    plot(rows, Path(args.out) / "error_vs_fraction.png")
    print(f"preset {args.preset} {' '.join(args.overrides)}: {args.seeds} seeds")
    print(table(rows, fractions))
    return 0


def add_ladder_args(ap: argparse.ArgumentParser) -> None:
    """Options that override the preset's ladder (its `scaling` section); bench/lr_transfer.py shares them."""
    ap.add_argument("--line", choices=("ratio", "tokens"), default=None, help="the ladder's line (default: the preset's)")
    ap.add_argument("--batch", choices=("halve", "steps"), default=None, help="the ratio line's batch rule (ladder.plan)")
    ap.add_argument("--sizes", type=int, default=None, help="model sizes of the big ladder (default: the preset's)")
    ap.add_argument("--ratios", default=None, help="token budgets of each size, comma-separated (default: the preset's)")
    ap.add_argument("--width-step", type=int, default=None)
    ap.add_argument("--min-steps", type=int, default=None)


def ladder_opts(args) -> config.ScalingConfig:
    """The preset's ladder (its `scaling` section, after the target's overrides) with this command line's flags."""
    opts = config.load(args.preset, config.parse_overrides(args.overrides)).scaling
    return opts.updated(line=args.line, batch=args.batch, n_sizes=args.sizes, width_step=args.width_step,
                        min_steps=args.min_steps,
                        ratios=tuple(float(r) for r in args.ratios.split(",")) if args.ratios else None)


def plan_kwargs_at(opts: config.ScalingConfig, max_fraction: float) -> dict:
    """`ladder.plan`'s arguments with the largest rung at `max_fraction` (the whole ladder allowed ≥ 3× it)."""
    return {**opts.plan_kwargs(), "max_fraction": max_fraction,
            "budget_fraction": max(opts.budget_fraction, 3 * max_fraction)}


def refit(args, fractions) -> int:
    """Predictions from the finished ladders under --out with the current code; nothing trains."""
    rows, out = [], Path(args.out)
    tag = f"refit_drift-{args.drift_correction}" if args.drift_correction else "refit"
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        root = out / f"seed{seed}"
        lad, rep_path = root / "ladder", root / "target" / "report.json"
        if not (lad / "plan.json").exists() or not rep_path.exists():
            raise SystemExit(f"{root} holds no finished ladder and target: run the bench without --refit first")
        plan = json.loads((lad / "plan.json").read_text())
        preds = predictions(lad, plan, fractions, args.n_boot, args.drift_correction)
        (root / f"predictions_{tag}.json").write_text(json.dumps(preds, indent=1))
        rows += score(seed, preds, json.loads(rep_path.read_text()))
    (out / f"{tag}.json").write_text(json.dumps(rows, indent=1))
    plot(rows, out / f"error_vs_fraction_{tag}.png")
    print(f"preset {args.preset}: {args.seeds} seeds, refitted with the current code"
          f"{', drift correction ' + args.drift_correction if args.drift_correction else ''}")
    print(table(rows, fractions))
    return 0


def predictions(lad: Path, plan: dict, fractions, n_boot: int, drift_correction: str | None = None) -> dict:
    """For each fraction f, the prediction from the ladder's sizes of ≤ f of the target's FLOPs."""
    preds = {}
    for f in fractions:
        try:
            a = predict.analyse(lad, n_boot=n_boot, max_flops=f * plan["target"]["flops"], drift_correction=drift_correction)
            preds[f] = {}
            for name, e in a["sets"].items():
                chosen = e["fits"][e["fit"]] if e["fit"] else {}
                preds[f][name] = {"fit": e["fit"], **{k: chosen.get(k) for k in ("loss", "ci90", "ci90_bootstrap", "interval")},
                                  "confident": e["regime"]["confident"], "flags": e["regime"]["flags"],
                                  "max_run_fraction": a["max_run_flops"] / plan["target"]["flops"]}
        except ScalingError as e:
            preds[f] = {"error": str(e)}
    return preds


def score(seed: int, preds: dict, rep: dict) -> list[dict]:
    rows = []
    for f, per in preds.items():
        if "error" in per:
            rows.append({"seed": seed, "fraction": f, "error": per["error"]})
            continue
        for name, p in per.items():
            act = rep["heldout"].get(name, {}).get("loss")
            if act is None or p["loss"] is None:
                continue
            rows.append({"seed": seed, "fraction": f, "set": name, "fit": p["fit"], "predicted": p["loss"], "actual": act,
                         "relative_error": p["loss"] / act - 1, "inside": p["ci90"][0] <= act <= p["ci90"][1],
                         "ci90": p["ci90"], "confident": p["confident"], "flags": p["flags"],
                         "max_run_fraction": p["max_run_fraction"]})
    return rows


def table(rows: list[dict], fractions) -> str:
    """Per set and fraction: errors per seed, mean |error|, coverage, median 90% width (relative), regime."""
    out = [f"{'set':>13} {'fraction':>9} {'errors per seed':>32} {'mean |err|':>10} {'inside 90%':>10} "
           f"{'90% width':>9}  regime check"]
    sets = sorted({r["set"] for r in rows if "set" in r})
    for name in sets:
        for f in fractions:
            rs = [r for r in rows if r.get("set") == name and r["fraction"] == f]
            label = f"{f:.3g}" if f > 0.3 else "1/%.0f" % (1 / f)
            if not rs:
                out.append(f"{name:>13} {label:>9}  no prediction: " +
                           next((r["error"] for r in rows if r["fraction"] == f and "error" in r), "n/a"))
                continue
            errs = " ".join(f"{r['relative_error']:+.2%}" for r in rs)
            mean = sum(abs(r["relative_error"]) for r in rs) / len(rs)
            inside = sum(r["inside"] for r in rs)
            conf = sum(r["confident"] for r in rs)
            flag = next((r["flags"][0] for r in rs if r["flags"]), "")
            widths = sorted((r["ci90"][1] - r["ci90"][0]) / r["predicted"] for r in rs if r.get("ci90"))
            width = f"±{widths[len(widths) // 2] / 2:.1%}" if widths else "n/a"
            out.append(f"{name:>13} {label:>9} {errs:>32} {mean:>10.2%} {inside:>7}/{len(rs)} {width:>9}  "
                       f"confident {conf}/{len(rs)}{'; ' + flag[:70] if flag else ''}")
    scored = [r for r in rows if "set" in r]
    if scored:
        out.append(f"all: mean |err| {sum(abs(r['relative_error']) for r in scored) / len(scored):.2%}, "
                   f"inside the 90% interval {sum(r['inside'] for r in scored)}/{len(scored)}")
        out.append(regime_calibration(scored))
    return "\n".join(out)


def regime_calibration(rows: list[dict], big: float = 0.04) -> str:
    """How well the regime check sorts the predictions: the errors of those it calls confident
    against those it does not, and how many misses larger than `big` it caught."""
    def summary(rs):
        errs = [abs(r["relative_error"]) for r in rs]
        return f"{len(rs)} (mean |err| {sum(errs) / len(errs):.2%}, largest {max(errs):.2%})" if rs else "0"

    conf = [r for r in rows if r["confident"]]
    refused = [r for r in rows if not r["confident"]]
    misses = [r for r in rows if abs(r["relative_error"]) > big]
    return (f"regime check: confident {summary(conf)}; not confident {summary(refused)}; "
            f"misses over {big:.0%}: {sum(not r['confident'] for r in misses)}/{len(misses)} not called confident")


def plot(rows, path: Path) -> Path:
    """Relative error of each seed's prediction against the largest rung's compute fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, color in zip(sorted({r["set"] for r in rows if "set" in r}), ("tab:blue", "tab:orange", "tab:green")):
        rs = [r for r in rows if r.get("set") == name]
        ax.scatter([r["max_run_fraction"] for r in rs], [100 * r["relative_error"] for r in rs], color=color,
                   marker="o", label=name, alpha=0.8)
        for r in rs:
            if not r["confident"]:
                ax.scatter([r["max_run_fraction"]], [100 * r["relative_error"]], s=120, facecolors="none", edgecolors="red")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.axhspan(-1, 1, color="0.9", zorder=0, label="±1% goal")
    return finish_plot(fig, ax, path, "largest rung / target compute", "relative error of predicted loss (%)",
                       "prediction error vs compute fraction (red ring: regime check failed)")


def finish_plot(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Log compute axis, labels, legend; saved and closed."""
    import matplotlib.pyplot as plt

    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
