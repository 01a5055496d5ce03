"""`glassgpt eval ...`: argument parsing only; the work is in glassgpt.evals.

    glassgpt eval COMPLETION_FN[,GRADER_FN] EVAL_OR_SET [options]
    glassgpt eval list [--registry_path DIR] [--all] [--json]
    glassgpt eval report RECORD... [--json]
    glassgpt eval fetch-registry [--dest DIR] [--wheel FILE]

Also runnable as `python -m glassgpt.cli_evals ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from glassgpt.errors import ArgumentParser, exit_code

SUBCOMMANDS = ("list", "report", "fetch-registry")


def _registry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry_path", "--registry-path", action="append", default=[], metavar="DIR",
                   help="a registry directory in the openai/evals layout (repeatable); also $GLASSGPT_EVALS_REGISTRY; "
                        "the one `glassgpt eval fetch-registry` unpacked is always read")


def run_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="glassgpt eval", description="Run an eval or eval set (openai/evals registry format). "
                       "Other forms: `glassgpt eval list`, `glassgpt eval report RECORD...`, "
                       "`glassgpt eval fetch-registry`.")
    p.add_argument("completion_fn", help="model[,grader]: scripted[:echo|:const:TEXT|:file:PATH], local:RUN_DIR, "
                   "completions:MODEL, or a chat model name on an OpenAI-compatible endpoint")
    p.add_argument("eval", help="an eval or eval set name from the registries")
    p.add_argument("--max_samples", "--max-samples", type=int, default=None)
    p.add_argument("--seed", type=int, default=20220722)
    p.add_argument("--record_path", "--record-path", default=None,
                   help="JSONL record file (a directory for eval sets); default /tmp/evallogs/...")
    _registry_args(p)
    p.add_argument("--completion_args", "--completion-args", default="",
                   help="key=value,... passed to the completion functions (e.g. price_per_1k=0.002,max_tokens=64)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                   help="local:RUN models only: bf16 (auto: where the hardware has native bf16) or fp32 (default)")
    p.add_argument("--extra_eval_params", "--extra-eval-params", default="", help="key=value,... added to the eval's args")
    p.add_argument("--threads", type=int, default=10, help="samples evaluated concurrently (default 10)")
    p.add_argument("--rpm", "--requests-per-minute", type=float, default=None, dest="rpm",
                   help="limit on requests per minute to the endpoint (429/5xx are retried with backoff)")
    p.add_argument("--base-url", "--base_url", default=None, dest="base_url",
                   help="OpenAI-compatible endpoint (default $OPENAI_BASE_URL); the key comes from $OPENAI_API_KEY")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="on-disk response cache keyed by (model, prompt, sampling args) (default on)")
    p.add_argument("--cache-dir", default=None, help="response cache directory (default ~/.cache/glassgpt/eval-responses)")
    p.add_argument("--resume", action="store_true", help="continue the --record_path file; finished samples are not re-asked")
    p.add_argument("--skip-bad-samples", action="store_true", help="skip malformed JSONL lines (counted) instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--user", default="", help="ignored (reference compatibility)")
    return p


def _print_results(res) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    for r in res.results:
        t = Table(title=f"{r.eval_name}  (record: {r.record_path})")
        t.add_column("metric")
        t.add_column("value")
        for k, v in r.final_report.items():
            t.add_row(str(k), f"{v:.4g}" if isinstance(v, float) else str(v))
        con.print(t)
        if r.resumed:
            con.print(f"resumed: {r.resumed} samples were already finished and not re-asked")
        if r.errors:
            con.print(f"[yellow]{r.errors} samples failed (recorded as error events); rerun with --resume to retry them")
    if res.skipped:
        con.print(f"[yellow]skipped {len(res.skipped)} evals with classes glassgpt does not implement:")
        for name, why in res.skipped:
            con.print(f"  {name}: {why}")
    if res.failed:
        con.print(f"[red]{len(res.failed)} evals could not run:")
        for name, why in res.failed:
            con.print(f"  {name}: {why}")


def cmd_run(argv: list[str]) -> int:
    from glassgpt.evals.completion_fns import parse_kv
    from glassgpt.evals.registry import Registry, default_registry_paths
    from glassgpt.evals.runner import run_target

    a = run_parser().parse_args(argv)
    registry = Registry(default_registry_paths(a.registry_path))
    cache_dir = None
    if a.cache:
        cache_dir = Path(a.cache_dir) if a.cache_dir else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "glassgpt" / "eval-responses"
    res = run_target(a.eval, a.completion_fn, registry, base_url=a.base_url, rpm=a.rpm, cache_dir=cache_dir,
                     completion_args={**parse_kv(a.completion_args), **({"precision": a.precision} if a.precision else {})},
                     record_path=a.record_path, seed=a.seed,
                     max_samples=a.max_samples, threads=a.threads, resume=a.resume,
                     skip_bad_samples=a.skip_bad_samples, show_progress=not a.no_progress,
                     extra_eval_params=parse_kv(a.extra_eval_params))
    _print_results(res)
    return 0


def cmd_list(argv: list[str]) -> int:
    from glassgpt.evals.registry import Registry, default_registry_paths

    p = ArgumentParser(prog="glassgpt eval list", description="List the evals the registries hold.")
    _registry_args(p)
    p.add_argument("--all", action="store_true", help="also list evals whose class glassgpt does not implement")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    reg = Registry(default_registry_paths(a.registry_path))
    rows = reg.listing()
    n_ok = sum(r["supported"] for r in rows)
    if a.json:
        print(json.dumps({"evals": rows, "total": len(rows), "runnable": n_ok, "eval_sets": reg.names("eval_sets")}, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="registry evals")
    for c in ("name", "class", "runnable", "description"):
        t.add_column(c, overflow="fold")
    for r in rows:
        if r["supported"] or a.all:
            t.add_row(r["name"], r["class"].split(":")[-1], "yes" if r["supported"] else "no", r["description"][:80])
    con = Console()
    con.print(t)
    con.print(f"{len(rows)} evals in {len(reg.paths)} registries; {n_ok} runnable with glassgpt, "
              f"{len(rows) - n_ok} use classes glassgpt does not implement; {len(reg.names('eval_sets'))} eval sets")
    return 0


def cmd_report(argv: list[str]) -> int:
    from glassgpt.evals.report import render, rows

    p = ArgumentParser(prog="glassgpt eval report", description="Compare eval record files (ours or openai/evals').")
    p.add_argument("records", nargs="+")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.json:
        print(json.dumps(rows(a.records), indent=1, default=str))
    else:
        render(a.records)
    return 0


def cmd_fetch(argv: list[str]) -> int:
    from glassgpt.evals.fetch import EVALS_VERSION, fetch_registry

    p = ArgumentParser(prog="glassgpt eval fetch-registry",
                       description="Download the evals wheel (pip download --no-deps) and unpack only evals/registry/.")
    p.add_argument("--dest", default=None, help="cache directory (default ~/.cache/glassgpt/evals-registry)")
    p.add_argument("--version", default=EVALS_VERSION)
    p.add_argument("--wheel", default=None, help="unpack this already-downloaded wheel instead")
    a = p.parse_args(argv)
    path = fetch_registry(a.dest, a.version, a.wheel)
    if a.dest is None:
        print(f"registry unpacked to {path}\nfound by default from now on: glassgpt eval list")
    else:
        print(f"registry unpacked to {path}\nuse it with: glassgpt eval list --registry_path {path}")
    return 0


def dispatch(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        return {"list": cmd_list, "report": cmd_report, "fetch-registry": cmd_fetch}[argv[0]](argv[1:])
    return cmd_run(argv)


def _handle(args) -> int:
    try:
        return dispatch(list(args.eval_argv))
    except KeyboardInterrupt:
        print("interrupted (finished samples are in the record; continue with --resume)", file=sys.stderr)
        return 130


def add_eval(sub, name):
    """`eval` on the main CLI; everything after it goes to dispatch() (prefix_chars: no option is
    the main parser's, so `glassgpt eval --help` is the eval parser's help)."""
    s = sub.add_parser(name, help="Run evals (openai/evals registry format), list them, compare records.",
                       add_help=False, prefix_chars="\0")
    s.add_argument("eval_argv", nargs=argparse.REMAINDER)
    s.set_defaults(fn=_handle)


def main(argv: list[str] | None = None) -> int:
    """`python -m glassgpt.cli_evals ARGS` is `glassgpt eval ARGS`, with the same one-line errors."""
    return exit_code(_handle, argparse.Namespace(eval_argv=sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
