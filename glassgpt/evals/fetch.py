"""`glassgpt eval fetch-registry`: get openai/evals' registry without installing evals.

`pip download --no-deps evals==3.0.1.post1` fetches the wheel; only the members under
`evals/registry/` are unpacked (the wheel is a zip) into the cache directory, written to
a temporary folder first and renamed, so an interrupted fetch leaves nothing half-done.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from .errors import EvalError

log = logging.getLogger(__name__)

EVALS_VERSION = "3.0.1.post1"
PREFIX = "evals/registry/"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "glassgpt" / "evals-registry"


def unpack_registry(wheel: Path, dest: Path) -> Path:
    """Extract evals/registry/** from a wheel into dest/registry; returns that path."""
    target = dest / "registry"
    tmp = Path(tempfile.mkdtemp(prefix=".registry-", dir=dest))
    try:
        with zipfile.ZipFile(wheel) as z:
            n = 0
            for info in z.infolist():
                if not info.filename.startswith(PREFIX) or info.is_dir():
                    continue
                rel = Path(info.filename[len(PREFIX):])
                if rel.is_absolute() or ".." in rel.parts:
                    continue
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                n += 1
        if n == 0:
            raise EvalError(f"{wheel} has no {PREFIX} files; is it the evals wheel?")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except zipfile.BadZipFile:
        raise EvalError(f"{wheel} is not a valid wheel (zip) file") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("unpacked %d registry files into %s", n, target)
    return target


def fetch_registry(dest: Optional[os.PathLike] = None, version: str = EVALS_VERSION, wheel: Optional[os.PathLike] = None) -> Path:
    dest = Path(dest) if dest is not None else default_cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    if wheel is not None:
        return unpack_registry(Path(wheel), dest)
    with tempfile.TemporaryDirectory(prefix="glassgpt-evals-wheel-") as d:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", f"evals=={version}", "-d", d]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            raise EvalError(f"pip download evals=={version} failed: {tail[0]}; check the network or pass --wheel FILE")
        wheels = list(Path(d).glob("evals-*.whl"))
        if not wheels:
            raise EvalError(f"pip download left no evals wheel in {d}")
        return unpack_registry(wheels[0], dest)
