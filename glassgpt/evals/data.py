"""Reading samples: JSONL files (or directories of them), with file:line in every error."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

from .errors import EvalError

log = logging.getLogger(__name__)


def _open(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_jsonl(path, skip_bad: bool = False, bad: list | None = None) -> list:
    """All JSON lines of a file, or of every *.jsonl under a directory (sorted).

    A malformed line raises EvalError naming file and line; with skip_bad=True it is
    logged, appended to `bad` as "file:line: why", and skipped."""
    path = Path(path)
    if path.is_dir():
        out = []
        for p in sorted(path.rglob("*.jsonl")):
            out += read_jsonl(p, skip_bad=skip_bad, bad=bad)
        return out
    if not path.exists():
        raise EvalError(f"data file not found: {path}; check the eval's samples_jsonl or pass --registry_path")
    out = []
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                where = f"{path}:{lineno}"
                msg = f"{where}: malformed JSON ({e.msg} at column {e.colno})"
                if not skip_bad:
                    raise EvalError(msg + "; fix the line or pass --skip-bad-samples") from None
                log.warning("skipping %s", msg)
                if bad is not None:
                    bad.append(msg)
    return out
