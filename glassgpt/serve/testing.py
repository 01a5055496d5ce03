"""Helpers for tests and benchmarks: a tiny trained checkpoint, a server in a thread, random
JSON schemas.

Only loopback addresses: the server binds 127.0.0.1 on a free port chosen by the OS.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

_TINY: dict[str, Path] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc, seconds: float = 60.0) -> None:
    """Wait for a server subprocess's /health; RuntimeError with its last output if it exits first
    (its stdout must be a pipe) or does not answer in time."""
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError("server exited: " + out[-2000:])
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not answer /health within {seconds:.0f} s")


def tiny_checkpoint(tokens: int = 20000, seq_len: int | None = None) -> Path:
    """Train the `tiny` preset once per process (seconds) and return its run directory.
    seq_len: a longer context than the preset's 64 tokens (e.g. for whole JSON answers)."""
    key = f"{tokens}:{seq_len}"
    if key not in _TINY:
        from glassgpt import config
        from glassgpt.train.trainer import train

        root = Path(tempfile.mkdtemp(prefix="glassgpt-serve-"))
        atexit.register(shutil.rmtree, root, True)
        extra = [f"model.seq_len={seq_len}"] if seq_len else []
        cfg = config.load("tiny", [f"train.tokens={tokens}", f"data.cache_dir={root / 'cache'}", "data.heldout=[]", *extra])
        train(cfg, root / "run")
        _TINY[key] = root / "run"
    return _TINY[key]


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app, host: str = "127.0.0.1", **config):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2,
                                                    **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > 60:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


WORDS = ["name", "age", "city", "tags", "id", "score", "items", "ok", "kind", "note", "size", "level", "meta", "x"]


def random_schema(rng, depth: int = 0) -> dict:
    """A seeded random schema: objects (nested), arrays, enums, strings, integers, numbers,
    booleans, required fields. Strings and arrays are bounded so that an answer fits."""
    kinds = ["string", "integer", "number", "boolean", "enum"] + (["object", "object", "array"] if depth < 3 else [])
    kind = "object" if depth == 0 else rng.choice(kinds)
    if kind == "object":
        names = rng.sample(WORDS, rng.randint(1, 4 if depth < 2 else 2))
        props = {n: random_schema(rng, depth + 1) for n in names}
        return {"type": "object", "properties": props, "required": rng.sample(names, rng.randint(0, len(names))),
                "additionalProperties": False}
    if kind == "array":
        s = {"type": "array", "items": random_schema(rng, depth + 1), "maxItems": rng.randint(1, 3)}
        if rng.random() < 0.5:
            s["minItems"] = 1
        return s
    if kind == "string":
        s = {"type": "string", "maxLength": rng.randint(1, 12)}
        if rng.random() < 0.3:
            s["minLength"] = 1
        return s
    if kind == "integer":
        s = {"type": "integer"}
        if rng.random() < 0.5:
            lo = rng.randint(-50, 50)
            s.update(minimum=lo, maximum=lo + rng.randint(0, 1000))
        return s
    if kind == "number":
        return {"type": "number"} if rng.random() < 0.5 else {"type": "number", "minimum": 0, "maximum": 1}
    if kind == "boolean":
        return {"type": "boolean"}
    values = rng.sample(["red", "green", "blue", 1, 2, 3, "a b", None, True], rng.randint(1, 4))
    return {"enum": values}
