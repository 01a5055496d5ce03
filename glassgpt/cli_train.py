"""`glassgpt train | speedrun | prepare`: argument parsing only; the work is in glassgpt.train,
glassgpt.scaling.speedrun and glassgpt.data."""

from __future__ import annotations

import json
import os
from pathlib import Path

from glassgpt import config


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _config(args) -> config.Config:
    return config.load(args.preset, _data_overrides(args) + args.overrides)


def _data_overrides(args) -> list[str]:
    return [f"data.paths={json.dumps(args.data)}"] if args.data else []


def cmd_train(args):
    from glassgpt.train.trainer import train

    cfg = _config(args)
    report = train(cfg, args.out, resume=args.resume, init_from=Path(args.init_from) if args.init_from else None)
    if not _is_main_process():
        return
    for name, r in report["heldout"].items():
        print(f"held-out {name}: {r['loss']:.4f} nats/token, {r['bpb']:.4f} bits/byte")


def cmd_speedrun(args):
    from glassgpt.scaling import predict, speedrun

    report = speedrun.speedrun(args.preset, _data_overrides(args) + args.overrides, args.out, workers=args.workers,
                               chat=True if args.chat else None)
    if not _is_main_process():
        return
    t = report["target"]
    print(f"speedrun ({args.preset}): target {t['params']:,} params, {t['tokens']:,} tokens, {t['flops']:.3g} FLOPs")
    for line in predict.headline(report):
        print(line)
    if "stages" in report:
        st = report["stages"]
        print("stages: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in st["wall_seconds"].items()))
        print("SFT chat eval: " + speedrun.rates(st["sft"].get("chat_eval") or {}))
        print("image chat, held-out phrasings: " + speedrun.image_rates(st["vision"]["image_chat"]))
        for row, h in st["alignment_evals"].items():
            print(f"alignment evals, {row}: " + speedrun.rates(h))
    print(f"report: {args.out}/report.md, {args.out}/scaling.png")


def cmd_prepare(args):
    from glassgpt.data.shards import prepare

    print(prepare(_config(args).data))


def _configured(sub, name: str, help: str, fn, description: str):
    """A command that reads a preset and takes --section.key=value overrides (cli.main parses them)."""
    s = sub.add_parser(name, help=help, description=f"{description} Extra --section.key=value arguments override the preset.")
    s.add_argument("--preset", default="cpu",
                   help=f"a preset ({', '.join(config.preset_names())}) or a YAML config file (default cpu)")
    s.add_argument("--data", action="append", metavar="PATH_OR_GLOB",
                   help="training text/JSONL/parquet (repeatable); default: the stdlib corpus")
    s.set_defaults(fn=fn, takes_overrides=True)
    return s


def add_train(sub, name):
    s = _configured(sub, name, "Train a model.", cmd_train,
                    "Train a model (any stage: the preset and --init-from say which).")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    s.add_argument("--init-from", default=None, metavar="RUN_OR_CHECKPOINT",
                   help="start a new stage from another run's (or checkpoint's) weights")


def add_speedrun(sub, name):
    # No --resume: the speedrun always continues what --out holds (finished rungs, the registered
    # prediction, the target's latest checkpoint) and refuses a ladder planned for another config.
    s = _configured(sub, name, "The main job: data, tokenizer, ladder, prediction, target, verification.", cmd_speedrun,
                    "The main job: data, tokenizer, scaling ladder (the preset's scaling: section), registered "
                    "prediction, target training and verification (report.json, report.md, scaling.png). "
                    "Rerunning with the same --out continues where it stopped.")
    s.add_argument("--out", default="runs/speedrun", help="run directory (default runs/speedrun)")
    s.add_argument("--workers", type=int, default=1, help="parallel worker processes for the ladder")
    s.add_argument("--chat", action="store_true",
                   help="go on to chat SFT, RL and the report card (the chat preset always does; with --preset tiny, "
                        "a seconds-long mechanics check)")


def add_prepare(sub, name):
    _configured(sub, name, "Tokenize a corpus into shards (cached) and print where.", cmd_prepare,
                "Tokenize a corpus into shards (cached) and print where.")
