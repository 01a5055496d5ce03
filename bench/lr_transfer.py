"""Does the learning-rate transfer rule hold across the ladder's widths? A sweep, size by size.

The ladder's rungs and its target take their learning rates from one rule (`train.optim`: Muon's
rate fixed, the AdamW rates of embedding and head ∝ width^-1/2). If the rule were off, the small
rungs would sit further from their best rate than the large ones (or the reverse), the loss line
would bend for a reason that is not the law, and the prediction would carry it. This trains the
preset's ladder (and, with --target, the target) once per multiplier of one rate, with the same plan,
seed and data, and prints per held-out set each size's loss at its longest budget under every
multiplier, the best one, and how much the rule's own rate (×1) loses against the best tried.

    python bench/lr_transfer.py --preset tiny --knob muon --mults 0.5,1,2
    python bench/lr_transfer.py --preset cpu --knob adam --mults 0.5,1,2 --target -- --model.aspect=384 --model.head_dim=192

--knob muon scales train.muon_lr; --knob adam scales train.adam_lr_mult (embedding and head rates, or
every rate with optimizer adamw). Ladder options as in bench/predict_accuracy.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from predict_accuracy import add_ladder_args, ladder_opts, plan_kwargs_at

from glassgpt import config
from glassgpt.scaling import ladder
from glassgpt.train import checkpoint
from glassgpt.train.trainer import train

KNOBS = {"muon": "muon_lr", "adam": "adam_lr_mult"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--knob", choices=sorted(KNOBS), default="muon")
    ap.add_argument("--mults", default="0.5,1,2", help="comma-separated multipliers of the rule's rate (1 must be one)")
    ap.add_argument("--max-fraction", type=float, default=None, help="largest rung / target (default: the preset's)")
    ap.add_argument("--target", action="store_true", help="train the target at every multiplier too")
    ap.add_argument("--out", default="runs/bench_lr")
    ap.add_argument("overrides", nargs="*", help="--section.key=value overrides of the target (after --)")
    add_ladder_args(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    mults = sorted(float(m) for m in args.mults.split(","))
    if 1.0 not in mults or any(m <= 0 for m in mults):
        raise SystemExit(f"--mults must be positive and include 1 (the rule's own rate), not {args.mults}")
    opts = ladder_opts(args)
    kwargs = opts.plan_kwargs() if args.max_fraction is None else plan_kwargs_at(opts, args.max_fraction)
    ov = config.parse_overrides(args.overrides)
    base = config.load(args.preset, ov)
    field = KNOBS[args.knob]
    losses = {}  # multiplier -> {size name or "target": {set: loss or None (diverged)}}
    for m in mults:
        rate = getattr(base.train, field) * m
        cfg = config.load(args.preset, ov + [f"train.{field}={rate}"])
        root = Path(args.out) / f"{args.knob}_x{m:g}"
        ladder.save_plan(ladder.plan(cfg, **kwargs), root / "ladder")
        ladder.run(root / "ladder", capability=False)
        losses[m] = longest(root / "ladder")
        if args.target:
            t = root / "target"
            rep = json.loads((t / "report.json").read_text()) if (t / "report.json").exists() else \
                train(cfg, t, resume=checkpoint.latest(t) is not None)
            losses[m]["target"] = {k: v["loss"] for k, v in rep["heldout"].items()}
    (Path(args.out) / f"{args.knob}.json").write_text(json.dumps({str(m): v for m, v in losses.items()}, indent=1))
    print(f"preset {' '.join([args.preset, *args.overrides])}: {field} = {getattr(base.train, field):g} × multiplier")
    print(table(losses))
    return 0


def longest(lad: Path) -> dict:
    """Each size's held-out losses at its longest budget (None where that run diverged)."""
    out = {}
    for p in ladder.collect(lad)["points"]:  # ascending budgets within a size: the last one wins
        out[p["size"]] = p.get("final_loss") if p["status"] == "done" else None
    return out


def table(losses: dict) -> str:
    """Per set: each size's loss under every multiplier, the best, and what ×1 loses against it."""
    mults = sorted(losses)
    names = list(losses[1.0])
    sets = sorted({k for v in losses[1.0].values() if v for k in v})
    lines, summary = [], []
    for s in sets:
        lines.append(f"{s}: loss at the longest budget")
        lines.append(f"{'size':>10} " + " ".join(f"{'×%g' % m:>8}" for m in mults) + f" {'best':>6} {'×1 vs best':>10}")
        best_at_1, excess = 0, []
        for n in names:
            row = {m: (losses[m].get(n) or {}).get(s) for m in mults}
            ok = {m: v for m, v in row.items() if v is not None}
            cells = " ".join(f"{row[m]:8.4f}" if row[m] is not None else f"{'div':>8}" for m in mults)
            if not ok or row[1.0] is None:
                lines.append(f"{n:>10} {cells}")
                continue
            b = min(ok, key=ok.get)
            best_at_1 += b == 1.0
            excess.append(row[1.0] / ok[b] - 1)
            lines.append(f"{n:>10} {cells} {'×%g' % b:>6} {excess[-1]:>+10.2%}")
        if excess:
            summary.append(f"{s}: ×1 best at {best_at_1}/{len(excess)}, loses {sum(excess) / len(excess):.2%} on average "
                           f"(largest {max(excess):.2%}) against the best multiplier tried")
    return "\n".join(lines + summary)


if __name__ == "__main__":
    sys.exit(main())
