"""Helpers for tests and benchmarks: a tiny trained checkpoint, a server in a thread.

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


def tiny_checkpoint(tokens: int = 20000) -> Path:
    """Train the `tiny` preset once per process (seconds) and return its run directory."""
    key = str(tokens)
    if key not in _TINY:
        from glassgpt import config
        from glassgpt.train.trainer import train

        root = Path(tempfile.mkdtemp(prefix="glassgpt-serve-"))
        atexit.register(shutil.rmtree, root, True)
        cfg = config.load("tiny", [f"train.tokens={tokens}", f"data.cache_dir={root / 'cache'}", "data.heldout=[]"])
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
