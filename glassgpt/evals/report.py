"""`glassgpt eval report`: compare record files (ours or the reference's) side by side."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from .record import read_record

_SKIP = {"boostrap_std", "bootstrap_std", "errors", "bad_samples"}


def summarize(path) -> dict:
    rec = read_record(path)
    spec = rec.spec
    failed = {e.sample_id for e in rec.events if e.type == "error"}
    done = {e.sample_id for e in rec.events if e.type != "error" and e.sample_id is not None}
    final = rec.final_report or {}
    return {
        "path": str(Path(path)),
        "eval": spec.get("eval_name", "?"),
        "completion_fns": ",".join(spec.get("completion_fns") or []),
        "run_id": spec.get("run_id", ""),
        "samples": len(done),
        "errors": len(failed - done),
        "finished": rec.final_report is not None,
        "report": final,
    }


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def metric_cell(report: dict) -> str:
    parts = []
    if "accuracy" in report:
        std = report.get("bootstrap_std", report.get("boostrap_std"))
        parts.append(f"accuracy {_fmt(report['accuracy'])}" + (f" ± {_fmt(std)}" if std is not None else ""))
    for k, v in report.items():
        if k == "accuracy" or k in _SKIP or k.startswith("usage_") or k == "cost_usd":
            continue
        if isinstance(v, (int, float)):
            parts.append(f"{k} {_fmt(v)}")
    return "; ".join(parts) or "-"


def rows(paths: Sequence) -> list[dict]:
    return [summarize(p) for p in paths]


def render(paths: Sequence, console=None) -> list[dict]:
    from rich.console import Console
    from rich.table import Table

    data = rows(paths)
    table = Table(title="eval runs")
    for col in ("eval", "completion fn", "samples", "errors", "metrics", "tokens", "cost $", "record"):
        table.add_column(col, overflow="fold")
    for r in data:
        rep = r["report"]
        tokens = rep.get("usage_total_tokens", "-")
        table.add_row(r["eval"], r["completion_fns"], str(r["samples"]), str(r["errors"]),
                      metric_cell(rep) if r["finished"] else "(unfinished: use --resume)",
                      _fmt(tokens), _fmt(rep["cost_usd"]) if "cost_usd" in rep else "-", Path(r["path"]).name)
    (console or Console()).print(table)
    return data
