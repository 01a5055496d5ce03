"""`glassgpt ladder plan|run|fit`, `glassgpt predict`, `glassgpt verify`: parsing only;
the work is in glassgpt.scaling."""

from __future__ import annotations

import json

from glassgpt import config
from glassgpt.errors import ScalingError


def _target(args) -> config.Config:
    return config.load(args.target, args.overrides)


def _ratios(text: str) -> tuple[float, ...]:
    try:
        r = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ScalingError(f"--ratios must be comma-separated numbers like 0.25,0.5,1,2, not {text!r}") from None
    if len(r) < 2 or any(x <= 0 for x in r):
        raise ScalingError(f"--ratios needs at least two positive numbers, got {text!r}")
    return r


def cmd_plan(args):
    from glassgpt.scaling import ladder

    cfg = _target(args)
    # a flag overrides the target's scaling: section (which holds the defaults), like --scaling.key=value
    opts = cfg.scaling.updated(max_fraction=args.max_fraction, budget_fraction=args.budget_fraction, n_sizes=args.sizes,
                               min_steps=args.min_steps, width_step=args.width_step, line=args.line, batch=args.batch,
                               ratios=_ratios(args.ratios) if args.ratios is not None else None)
    p = ladder.plan(cfg, flops_per_second=args.flops_per_second, **opts.plan_kwargs())
    print(ladder.format_plan(p))
    if args.ladder:
        print(f"plan written to {ladder.save_plan(p, args.ladder)}")


def cmd_run(args):
    from glassgpt.scaling import ladder

    res = ladder.run(args.ladder, workers=args.workers, shard=args.shard, capability=not args.no_capability)
    for name, st in res.items():
        print(f"{name}: " + ", ".join(f"{k} steps {v}" for k, v in st.items()))


def cmd_fit(args):
    from glassgpt.scaling import predict

    a = predict.analyse(args.ladder, n_boot=args.n_boot, llo_tolerance=args.llo_tolerance)
    t = a["plan"]["target"]
    if a["diverged"]:
        print(f"excluded {len(a['diverged'])} diverged points: " +
              "; ".join(f"{x['size']} {x['tokens']:,} tokens ({x.get('reason')})" for x in a["diverged"]))
    for name, e in a["sets"].items():
        print(f"== {name}")
        for k, f in e["fits"].items():
            if f.get("refused"):
                print(f"  {k}: refused — {f['refused']}")
                continue
            llo = f.get("leave_largest_out") or {}
            llo_s = f"{llo['relative_error']:+.2%}" if "relative_error" in llo else llo.get("refused", "n/a")
            params = ", ".join(f"{kk}={v:.4g}" for kk, v in f["params"].items() if kk != "form")
            print(f"  {k}: {f['params']['form']}: {params}; RMS log residual {f['rms_log_residual']:.4f}; "
                  f"leave-largest-out {llo_s}; target ({t['flops']:.3g} FLOPs) → {f['loss']:.4f} "
                  f"[{f['ci90'][0]:.4f}, {f['ci90'][1]:.4f}]")
        r = e["regime"]
        print("  on the target's tokens-per-parameter line (FLOPs → loss): " +
              ", ".join(f"{q['flops']:.3g} → {q['loss']:.4f}" for q in r["line"]))
        print(f"  chosen: {e['fit']}; local slopes {', '.join(f'{s:.3f}' for s in r.get('local_slopes', []))}; "
              f"{predict.shape_words(r)}")
        for fl in r["flags"]:
            print(f"  REGIME: {fl}")
        if r.get("advice"):
            print(f"  {r['advice']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: v for k, v in a.items() if k != "plan"}, f, indent=1, default=str)


def cmd_predict(args):
    from glassgpt.scaling import predict

    cfg = _target(args)
    n_boot = cfg.scaling.n_boot if args.n_boot is None else args.n_boot
    doc = predict.register(cfg, args.ladder, args.out, target_dir=args.target_dir, n_boot=n_boot,
                           allow_unconfident=args.allow_unconfident)
    for k, p in doc["prediction"].items():
        print(f"{k}: {p['loss']:.4f} nats/token [{p['ci90'][0]:.4f}, {p['ci90'][1]:.4f}] ({p['fit']})"
              f"{'' if p['confident'] else ' — NOT CONFIDENT: regime check failed'}")
    def rate(c):
        return (f"geometric-mean pass rate {c['predicted']:.4g} [{c['ci90'][0]:.4g}, {c['ci90'][1]:.4g}] "
                f"over {c['n_problems']} problems" + ("" if c.get("confident") else " — NOT CONFIDENT: no backtest"))

    for c in (doc.get("capability_tasks") or {}).values():
        print(f"capability {c['task']}: " + (f"refused ({c['refused']})" if c.get("refused") else rate(c))
              + (f"; unfiltered: {rate(c['unfiltered'])}" if c.get("unfiltered") else ""))
    print(f"registered {args.out} sha256 {doc['sha256']}")


def cmd_verify(args):
    from glassgpt.scaling import predict

    r = predict.verify(args.prediction, args.run, args.out)
    for line in predict.headline(r):
        print(line)
    print(f"wrote {args.out}/report.json, report.md, scaling.png")


def _preset_help() -> str:
    return f"the target: a preset ({', '.join(config.preset_names())}) or a YAML config file"


def add_ladder(sub, name):
    lad = sub.add_parser(name, help="Plan, run and fit the scaling ladder.")
    lsub = lad.add_subparsers(dest="ladder_command", required=True)
    p = lsub.add_parser("plan", help="Choose the rungs for a target; print the table (and save it with --ladder). "
                        "The options default to the target's scaling: section; extra --section.key=value arguments "
                        "override the target config.")
    p.add_argument("--target", required=True, help=_preset_help())
    p.add_argument("--ladder", default=None, help="ladder directory to write plan.json into")
    d = "(default: the target's scaling.%s)"
    p.add_argument("--max-fraction", type=float, default=None, help="largest rung's FLOPs / the target's " + d % "max_fraction")
    p.add_argument("--budget-fraction", type=float, default=None, help="whole ladder's FLOPs / the target's " + d % "budget_fraction")
    p.add_argument("--sizes", type=int, default=None, help="model sizes (≥ 5) " + d % "n_sizes")
    p.add_argument("--min-steps", type=int, default=None, help="optimizer steps of the shortest budget " + d % "min_steps")
    p.add_argument("--width-step", type=int, default=None, help="rung widths are multiples of this " + d % "width_step")
    p.add_argument("--flops-per-second", type=float, default=None, help="for the time estimate")
    p.add_argument("--ratios", default=None, help="token budgets of each size, comma-separated, as multiples of the "
                   "target's tokens per parameter (or of its tokens on the iso-token line) " + d % "ratios")
    p.add_argument("--line", default=None, choices=("ratio", "tokens"),
                   help="ratio: each size at the target's tokens per parameter; tokens: each size on the target's "
                        "own tokens and schedule (iso-token), only the width differs " + d % "line")
    p.add_argument("--batch", default=None, choices=("halve", "steps"),
                   help="the ratio line's batch: halve (the target's, halved until the shortest budget gets "
                        "--min-steps steps) or steps (∝ the size's tokens, so its point on the line takes the "
                        "target's number of steps) " + d % "batch")
    p.set_defaults(fn=cmd_plan, takes_overrides=True)
    r = lsub.add_parser("run", help="Train the planned rungs (finished ones are skipped).")
    r.add_argument("--ladder", required=True)
    r.add_argument("--workers", type=int, default=1, help="parallel worker processes on this machine")
    r.add_argument("--shard", default=None, help="i/n: train only this machine's share of the sizes")
    r.add_argument("--no-capability", action="store_true", help="skip the capability scoring of each rung")
    r.set_defaults(fn=cmd_run)
    f = lsub.add_parser("fit", help="Fit L(C) and L(N, D), leave-largest-out and the regime check.")
    f.add_argument("--ladder", required=True)
    f.add_argument("--n-boot", type=int, default=200)
    f.add_argument("--llo-tolerance", type=float, default=0.01)
    f.add_argument("--json", default=None, help="also write the analysis here")
    f.set_defaults(fn=cmd_fit)


def add_predict(sub, name):
    pr = sub.add_parser(name, help="Register a prediction for a target before it trains. "
                        "Extra --section.key=value arguments override the target config.")
    pr.add_argument("--target", required=True, help=_preset_help())
    pr.add_argument("--ladder", required=True)
    pr.add_argument("--out", default="prediction.json")
    pr.add_argument("--target-dir", default=None, help="the target's run directory: refused if it has started")
    pr.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default: the target's scaling.n_boot)")
    pr.add_argument("--allow-unconfident", action="store_true", help="register even when the regime check fails (flagged)")
    pr.set_defaults(fn=cmd_predict, takes_overrides=True)


def add_verify(sub, name):
    v = sub.add_parser(name, help="Compare a registered prediction with the trained target; write the report.")
    v.add_argument("--prediction", required=True)
    v.add_argument("--run", required=True, help="the target's run directory")
    v.add_argument("--out", required=True, help="where report.json, report.md and scaling.png go")
    v.set_defaults(fn=cmd_verify)
