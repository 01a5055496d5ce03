"""Metering survives a crash: a server killed with SIGKILL mid-stream has billed the tokens
it streamed up to about a second before it died, and the next server closes that row."""

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from glassgpt.serve.testing import free_port, wait_healthy

pytestmark = pytest.mark.slow

# Every token takes 50 ms and no answer ends early, so a stream lasts long enough to be killed.
SLOW = """
import time
from glassgpt.serve import engine as E
_sample, _init = E.Engine._sample, E.Engine.__init__
def slow(self, seqs, logits):  # one call samples a whole step's rows
    time.sleep(0.05 * len(seqs))
    return _sample(self, seqs, logits)
def init(self, *a, **k):
    _init(self, *a, **k)
    self.end_ids = set()
E.Engine._sample, E.Engine.__init__ = slow, init
"""



def start(db, port, slow: bool):
    from glassgpt.serve.testing import tiny_checkpoint

    code = (SLOW if slow else "") + (
        "from glassgpt.serve.api import serve\n"
        f"serve([{str(tiny_checkpoint())!r}], host='127.0.0.1', port={port}, db={str(db)!r}, names=['tiny'])\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, 120)
    return proc, url


def test_sigkill_mid_stream_keeps_the_streamed_tokens_billed(tmp_path):
    from glassgpt.serve.store import Store

    db = tmp_path / "crash.db"
    key, _ = Store(db).create_key("crash")
    proc, url = start(db, free_port(), slow=True)
    try:
        seen = 0
        with httpx.stream("POST", url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50,
                                "stream": True}, timeout=60) as r:
            for line in r.iter_lines():
                seen += line.startswith("data: {") and '"content":"' in line and '"role"' not in line
                if seen >= 35:  # ~1.75 s of tokens
                    proc.send_signal(signal.SIGKILL)
                    break
        proc.wait(10)
    finally:
        proc.kill()
        proc.wait(10)
    rows = Store(db).db.execute("SELECT completion_tokens, status FROM usage").fetchall()
    assert len(rows) == 1 and rows[0][1] == "running"
    billed = rows[0][0]
    assert seen - 21 <= billed <= seen + 2, (billed, seen)  # at most ~1 s (20 tokens) behind
    proc, url = start(db, free_port(), slow=False)
    try:
        rows = Store(db).db.execute("SELECT completion_tokens, status FROM usage").fetchall()
        assert rows == [(billed, "error")]
    finally:
        proc.terminate()
        proc.wait(30)
