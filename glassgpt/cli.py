"""The `glassgpt` command. Subcommands only parse arguments and call the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from glassgpt.errors import GlassError

log = logging.getLogger("glassgpt")


def _setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        datefmt="[%X]", handlers=[RichHandler(show_path=False, rich_tracebacks=False)])


def _overrides(args, extra: list[str]) -> list[str]:
    """--data paths and --section.key=value arguments as config overrides."""
    data = [f"data.paths={json.dumps(args.data)}"] if args.data else []
    return data + _split_overrides(extra)


def _config(args, extra: list[str]):
    from glassgpt import config

    return config.load(args.preset, _overrides(args, extra))


def _split_overrides(extra: list[str]) -> list[str]:
    """`--model.depth=6` or `--model.depth 6` → ['model.depth=6']."""
    out, i = [], 0
    while i < len(extra):
        a = extra[i]
        if not a.startswith("--") or "." not in a.split("=")[0]:
            raise GlassError(f"unknown argument '{a}' (config overrides look like --model.depth=6)")
        if "=" in a:
            out.append(a[2:])
        elif i + 1 < len(extra):
            out.append(f"{a[2:]}={extra[i + 1]}")
            i += 1
        else:
            raise GlassError(f"override '{a}' has no value")
        i += 1
    return out


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def cmd_train(args, extra):
    from glassgpt.train.trainer import train

    cfg = _config(args, extra)
    report = train(cfg, args.out, resume=args.resume)
    if not _is_main_process():
        return
    for name, r in report["heldout"].items():
        print(f"held-out {name}: {r['loss']:.4f} nats/token, {r['bpb']:.4f} bits/byte")


def cmd_speedrun(args, extra):
    from glassgpt.scaling import predict, speedrun

    report = speedrun.speedrun(args.preset, _overrides(args, extra), args.out, workers=getattr(args, "workers", 1) or 1)
    if not _is_main_process():
        return
    t = report["target"]
    print(f"speedrun ({args.preset}): target {t['params']:,} params, {t['tokens']:,} tokens, {t['flops']:.3g} FLOPs")
    for line in predict.headline(report):
        print(line)
    print(f"report: {args.out}/report.md, {args.out}/scaling.png")


def cmd_prepare(args, extra):
    from glassgpt.data.shards import prepare

    cfg = _config(args, extra)
    print(prepare(cfg.data))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glassgpt", description="An open, hackable GPT-4-style system.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def trainish(name, fn, help, preset="cpu"):
        s = sub.add_parser(name, help=help, description=help + " Extra --section.key=value arguments override the preset.")
        s.add_argument("--preset", default=preset, help="preset name (tiny, cpu, gpu) or a YAML config file")
        s.add_argument("--data", action="append", metavar="PATH_OR_GLOB", help="training text/JSONL/parquet (repeatable); default: the stdlib corpus")
        if name != "prepare":
            s.add_argument("--out", required=name == "train", default="runs/speedrun", help="run directory")
            s.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
        s.set_defaults(fn=fn)

    trainish("train", cmd_train, "Train a model.")
    trainish("speedrun", cmd_speedrun, "The main job: data, tokenizer, training and held-out evaluation.")
    trainish("prepare", cmd_prepare, "Tokenize a corpus into shards (cached) and print where.")
    try:
        from glassgpt.cli_evals import add_eval_parser
    except ImportError:
        pass
    else:
        add_eval_parser(sub)
    try:
        from glassgpt.cli_scaling import add_scaling_parser
    except ImportError:
        pass
    else:
        add_scaling_parser(sub)
    try:
        from glassgpt.cli_serve import add_serve_parser
    except ImportError:
        pass
    else:
        add_serve_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    _setup_logging(args.verbose)
    if args.command not in ("keys", "usage"):  # those two never import torch (1.3 s)
        from glassgpt.train.dist import flush_denormals

        flush_denormals()  # before any torch work starts its threads (they inherit the flag)
    try:
        fn = args.fn
        if getattr(fn, "__code__", None) and fn.__code__.co_argcount == 1:
            if extra:
                raise GlassError(f"unknown arguments: {' '.join(extra)}")
            rv = fn(args)
        else:
            rv = fn(args, extra)
        return int(rv or 0)
    except GlassError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
