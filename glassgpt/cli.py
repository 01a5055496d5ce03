"""The `glassgpt` command: one registry of subcommands that only parse and call the library.

Each cli_*.py module defines its commands' parsers, and command functions that import the
library inside themselves (building the parser imports no torch: `glassgpt keys` stays fast).
Nothing imports this module back, and there is no fallback: a module that fails to import
fails `glassgpt` with its ImportError instead of silently dropping its commands.
"""

from __future__ import annotations

import logging
import sys

from glassgpt import cli_align, cli_data, cli_evals, cli_scaling, cli_serve, cli_train, cli_vision, config
from glassgpt.errors import ArgumentParser, UsageError, exit_code

# Every subcommand: name → the function that adds its parser and sets `fn` (the command) and,
# where they apply, `takes_overrides` (extra --section.key=value arguments become args.overrides)
# and `uses_torch=False` (skip the denormal flush, which imports torch), `engine_threads=True` (the
# main thread keeps one torch thread: Engine.own_threads). `glassgpt --help` order.
COMMANDS = {
    "train": cli_train.add_train,
    "speedrun": cli_train.add_speedrun,
    "prepare": cli_train.add_prepare,
    "data": cli_data.add_data,
    "ladder": cli_scaling.add_ladder,
    "predict": cli_scaling.add_predict,
    "verify": cli_scaling.add_verify,
    "eval": cli_evals.add_eval,
    "align": cli_align.add_align,
    "vision": cli_vision.add_vision,
    "serve": cli_serve.add_serve,
    "chat": cli_serve.add_chat,
    "keys": cli_serve.add_keys,
    "usage": cli_serve.add_usage,
}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="glassgpt", description="An open, hackable GPT-4-style system.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add in COMMANDS.items():
        add(sub, name)
    return p


def _setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        datefmt="[%X]", handlers=[RichHandler(show_path=False, rich_tracebacks=False)])


def _run(argv: list[str] | None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if getattr(args, "takes_overrides", False):
        args.overrides = config.parse_overrides(extra)
    elif extra:
        raise UsageError(f"glassgpt {args.command}: unknown arguments: {' '.join(extra)}")
    _setup_logging(args.verbose)
    if getattr(args, "uses_torch", True):
        from glassgpt.train.dist import flush_denormals

        if getattr(args, "engine_threads", False):  # serve: torch's parallel work on the engine threads
            from glassgpt.serve.engine import Engine

            Engine.own_threads()  # before the flush's check runs torch on this thread's OpenMP threads
        flush_denormals()  # before any torch work starts its threads (they inherit the flag)
    return args.fn(args)


def main(argv: list[str] | None = None) -> int:
    return exit_code(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
