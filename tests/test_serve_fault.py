"""Must hold under attack (loopback only, bounded in time): `glassgpt serve` with keys, a tiny
vision model, 32 streaming clients for 30 s while a hostile client sends 10 MB prompts, pixel
bombs (a 6000×6000 palette PNG of a few KB), random paths, wrong keys and slowly sent headers.

Asserted: /health p99 <= 250 ms; the streaming clients' time to first token p99 <= 3x the idle
figure measured first in this test; server RSS growth <= 300 MB; /metrics parses (prometheus_client)
with a bounded label set; the ledger equals what the clients saw (one row per request, tokens per
request, status ok or cancelled). Then the server is SIGKILLed mid-load and restarted on the same
ledger: SQLite's integrity check passes and the billed tokens trail the streamed ones by at most
what was streamed in the last flush interval (about 1 s).

The clients are lean asyncio HTTP/1.1 code (no HTTP library) and the probes and the attacker run
in their own processes, so that on 2 shared cores it is the server that is measured, not the
clients. GLASSGPT_FAULT_CLIENTS / GLASSGPT_FAULT_SECONDS change the load (defaults: the issue's
32 clients, 30 s). The file also runs as a script: `python tests/test_serve_fault.py health|hostile ...`
is how the test starts its helper processes.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from glassgpt.serve.testing import free_port

CLIENTS = int(os.environ.get("GLASSGPT_FAULT_CLIENTS", "32"))
SECONDS = float(os.environ.get("GLASSGPT_FAULT_SECONDS", "30"))
HEADER_TIMEOUT = 2.0
MAX_TOKENS = 40
RAMP = 1.0  # seconds over which the clients start; TTFT counts from RAMP + 1 s on (steady state)
QUIT_RATE = 0.1  # share of requests whose client hangs up mid-stream (ledger status 'cancelled')


# --- a lean HTTP/1.1 client -------------------------------------------------------------------
class Conn:
    """One keep-alive connection. request() returns (status, headers, body iterator)."""

    def __init__(self, port: int):
        self.port = port
        self.r = self.w = None

    async def open(self):
        if self.w is None:
            self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)

    def close(self):
        if self.w is not None:
            self.w.transport.abort()
        self.r = self.w = None

    async def send(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        await self.open()
        head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        if body or method == "POST":
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        self.w.write(head.encode() + b"\r\n" + body)
        await self.w.drain()

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        await self.send(method, path, body, headers)
        status_line = await self.r.readline()
        if not status_line:
            raise ConnectionError("closed before a response")
        status = int(status_line.split()[1])
        hdrs = {}
        while True:
            line = await self.r.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return status, hdrs, self._body(hdrs)

    async def _body(self, hdrs):
        if hdrs.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.r.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.r.readline()
                    break
                chunk = await self.r.readexactly(size + 2)
                yield chunk[:-2]
        else:
            n = int(hdrs.get("content-length", 0))
            if n:
                yield await self.r.readexactly(n)
        if hdrs.get("connection") == "close":
            self.close()

    async def call(self, method, path, body=b"", headers=None) -> tuple[int, bytes]:
        status, hdrs, it = await self.request(method, path, body, headers)
        data = b"".join([c async for c in it])
        return status, data


def chat_body(rng: random.Random) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": f"question {rng.random():.6f}"}],
            "max_tokens": rng.randint(1, MAX_TOKENS), "temperature": 1.0, "stream": True, "logprobs": True,
            "stream_options": {"include_usage": True}}


async def one_stream(conn: Conn, key: str, body: dict, quit_after: int | None) -> dict:
    """One streaming chat request; quit_after: hang up after that many tokens (0: before any
    answer, up to 50 ms after sending: while it is tokenized, queued or prefilled)."""
    t0 = time.monotonic()
    if quit_after == 0:
        await conn.send("POST", "/v1/chat/completions", json.dumps(body).encode(), {"authorization": f"Bearer {key}"})
        await asyncio.sleep(random.random() * 0.05)
        conn.close()
        return {"status": None, "t0": t0, "first": None, "times": [], "quit": True, "dropped": True}
    status, hdrs, it = await conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(),
                                          {"authorization": f"Bearer {key}"})
    out = {"status": status, "t0": t0, "t_head": time.monotonic(), "first": None, "times": [], "usage": None, "done": False, "finish": None,
           "quit": False, "max_tokens": body["max_tokens"], "ids": set(), "error": None}
    if status != 200:
        out["error"] = b"".join([c async for c in it])[:300]
        return out
    buf = b""
    async for chunk in it:
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            data = event.removeprefix(b"data: ")
            if data == b"[DONE]":
                out["done"] = True
                continue
            c = json.loads(data)
            if "error" in c:
                out["error"] = c
                continue
            out["ids"].add(c["id"])
            if c.get("usage"):
                out["usage"] = c["usage"]
            for ch in c["choices"]:
                n = len((ch.get("logprobs") or {}).get("content") or [])
                if n:
                    now = time.monotonic()
                    out["first"] = out["first"] or now
                    out["times"] += [now] * n
                out["finish"] = ch.get("finish_reason") or out["finish"]
        if quit_after is not None and len(out["times"]) >= quit_after and not out["done"]:
            out["quit"] = True
            conn.close()  # the client goes away mid-stream
            break
    return out


async def stream_clients(port: int, keys: dict, n: int, until: float, results: list, seed: int = 0,
                         stop: threading.Event | None = None):
    """n clients, each sending streaming requests back to back until `until`."""

    async def client(i):
        rng = random.Random(seed * 1000 + i)
        conn = Conn(port)
        await asyncio.sleep(i * RAMP / n)  # clients arrive over RAMP seconds, not in one instant
        while time.time() < until and not (stop and stop.is_set()):
            body = chat_body(rng)
            quit_after = None
            if rng.random() < QUIT_RATE:  # half of them before any answer, half mid-stream
                quit_after = 0 if rng.random() < 0.5 else rng.randint(1, body["max_tokens"])
            key = keys["quitter" if quit_after is not None else "good"]
            try:
                r = await one_stream(conn, key, body, quit_after)
            except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError) as e:
                r = {"status": None, "error": repr(e), "times": [], "quit": False, "first": None}
                conn.close()
                if stop and stop.is_set():
                    results.append(r)
                    return
                await asyncio.sleep(0.05)
            r["key"] = "quitter" if quit_after is not None else "good"
            results.append(r)
        conn.close()

    await asyncio.gather(*(client(i) for i in range(n)))


# --- helper processes: the /health probe and the attacker ---------------------------------------
def health_probe(port: int, seconds: float) -> None:
    """GET /health every 50 ms on a new connection each time; prints the latencies (JSON)."""
    lat, failed = [], 0
    until = time.time() + seconds
    while time.time() < until:
        t0 = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(f"GET /health HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            ok = data.startswith(b"HTTP/1.1 200")
        except OSError:
            ok = False
        lat.append(time.monotonic() - t0)
        failed += not ok
        time.sleep(max(0.0, 0.05 - (time.monotonic() - t0)))
    print(json.dumps({"latencies": lat, "failed": failed}))


def palette_png(side: int) -> bytes:
    """A palette PNG of side×side pixels, one colour: a few KB that decode to side² bytes."""
    from PIL import Image

    im = Image.new("P", (side, side), 0)
    im.putpalette([0, 0, 0] * 256)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    return buf.getvalue()


async def hostile(port: int, key: str, seconds: float, n_junk: int) -> dict:
    """The attacker: 10 MB prompts and pixel bombs with a valid key, n_junk random paths and
    wrong keys, and connections that send their headers one byte a second. Returns the statuses
    it got for each kind of attack and how long the slow-header connections lasted."""
    import base64

    until = time.time() + seconds
    statuses: dict[str, dict[int, int]] = {}

    def count(kind, status):
        d = statuses.setdefault(kind, {})
        d[status] = d.get(status, 0) + 1

    auth = {"authorization": f"Bearer {key}"}
    big = "A" * (10 * 1024 * 1024)
    # encoded once: the attacker's own CPU is not what is measured
    bigs = [("/v1/chat/completions", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": big}],
                                                 "max_tokens": 5}).encode()),
            ("/v1/completions", json.dumps({"model": "tiny", "prompt": big, "max_tokens": 5}).encode())]
    bomb_url = "data:image/png;base64," + base64.b64encode(palette_png(6000)).decode()
    bombs = []
    for k in (1, 12):  # one bomb, or 12 in one request (the 2.2 GB case)
        content = [{"type": "text", "text": "what is this"}] + \
                  [{"type": "image_url", "image_url": {"url": bomb_url}} for _ in range(k)]
        bombs.append((f"pixel bomb x{k}", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": content}],
                                                      "max_tokens": 5}).encode()))

    async def back_to_back(kinds):
        """One connection, one request after another (as fast as the server answers)."""
        conn = Conn(port)
        i = 0
        while time.time() < until:
            kind, path, body = kinds[i % len(kinds)]
            try:
                status, _ = await conn.call("POST", path, body, auth)
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                status = -1
                conn.close()
            count(kind, status)
            i += 1

    async def junk(worker: int, share: int):
        """share requests, evenly spaced over the attack (10,000 in 30 s: 333 a second in all)."""
        rng = random.Random(worker)
        conn = Conn(port)
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789%22%7D%0A{}\"' "
        t0 = time.time()
        for i in range(share):
            await asyncio.sleep(max(0.0, t0 + i * seconds / share - time.time()))
            try:
                if i % 2 == 0:  # a random path (percent-escapes of quotes, braces and newlines included)
                    path = "/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))).replace(" ", "%20")
                    if rng.random() < 0.5:
                        path = "/v1" + path
                    status, _ = await conn.call("GET", path, headers=auth if rng.random() < 0.5 else None)
                    count("random path", status)
                else:  # a wrong key, each one different
                    wrong = f"sk-glass-{rng.getrandbits(32):08x}-{rng.getrandbits(128):032x}"
                    status, _ = await conn.call("POST", "/v1/chat/completions", b'{"model":"tiny","messages":[]}',
                                                {"authorization": f"Bearer {wrong}"})
                    count("wrong key", status)
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                count("junk connection error", -1)
                conn.close()

    slow_lasted: list[float] = []

    async def slow_headers():
        async def one():
            t0 = time.monotonic()
            r, w = await asyncio.open_connection("127.0.0.1", port)
            head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 1000
            try:
                for b in head:
                    w.write(bytes([b]))
                    try:
                        await asyncio.wait_for(r.read(1024), 1.0)
                        break  # the server answered (408) or closed
                    except asyncio.TimeoutError:
                        pass
                    if time.monotonic() - t0 > HEADER_TIMEOUT + 30:
                        break
            except (ConnectionError, OSError):
                pass
            slow_lasted.append(time.monotonic() - t0)
            w.transport.abort()

        while time.time() < until - HEADER_TIMEOUT - 3:
            await asyncio.gather(*(one() for _ in range(20)))

    workers = 4
    await asyncio.gather(back_to_back([("10MB prompt", p, b) for p, b in bigs]),
                         back_to_back([(k, "/v1/chat/completions", b) for k, b in bombs]), slow_headers(),
                         *(junk(w, n_junk // workers) for w in range(workers)))
    return {"statuses": statuses, "slow_header_lasted": slow_lasted}


# --- the test ------------------------------------------------------------------------------------
VISION = dict(vision__enabled="true", vision__image_size=32, vision__patch_size=8, vision__width=32, vision__depth=1,
              vision__head_dim=16, vision__shuffle=2, vision__batch_size=4, vision__eval_samples=4,
              vision__mix="digits:1,shapes:1", model__seq_len=64, train__tokens=4 * 64 * 4,
              train__eval_every=100, train__checkpoint_every=100)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_times(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) summed over the process's
    threads: the second is CPU taken by other processes on this machine, not the server's doing."""
    on = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            a, b, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        on, wait = on + int(a), wait + int(b)
    return on / 1e9, wait / 1e9


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def helper(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def helper_result(p: subprocess.Popen, timeout: float) -> dict:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


class Server:
    def __init__(self, run, db, port):
        self.cmd = [sys.executable, "-m", "glassgpt.cli", "serve", "--checkpoint", str(run), "--model-name", "tiny",
                    "--db", str(db), "--port", str(port), "--max-batch", str(CLIENTS + 8), "--max-queue", "64",
                    "--header-timeout", str(HEADER_TIMEOUT), "--device", "cpu"]
        self.port = port
        self.log = open(Path(db).with_suffix(f".{port}.log"), "wb")

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        for _ in range(1200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
                    if s.recv(100).startswith(b"HTTP/1.1 200"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                pytest.fail("server exited: " + Path(self.log.name).read_text()[-3000:])
            time.sleep(0.1)
        pytest.fail("server did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.mark.slow
def test_32_streams_under_attack_then_sigkill(tmp_path, corpus_dir, cache_dir):
    from prometheus_client.parser import text_string_to_metric_families

    from glassgpt import config
    from glassgpt.serve.store import Store
    from glassgpt.train.trainer import train

    from conftest import tiny_overrides

    run = tmp_path / "run"
    train(config.load(None, tiny_overrides(corpus_dir, cache_dir, **VISION)), run)
    db = tmp_path / "ledger.db"
    store = Store(db)
    keys = {name: store.create_key(name)[0] for name in ("good", "quitter", "attacker", "kill", "kill-quitter")}
    store.close()
    port = free_port()
    srv = Server(run, db, port).start()
    try:
        # --- idle: the same requests, one at a time ------------------------------------------------
        idle: list[dict] = []
        asyncio.run(stream_clients(port, {"good": keys["good"], "quitter": keys["good"]}, 1, time.time() + 1.0, []))
        # (15 s: the server streams at most 50 tokens a second per stream, so a request lasts up to 0.8 s)
        asyncio.run(stream_clients(port, {"good": keys["good"], "quitter": keys["good"]}, 1, time.time() + 15.0, idle,
                                   seed=99))
        idle_ttft = [r["first"] - r["t0"] for r in idle if r.get("first") and not r.get("quit")]
        assert len(idle_ttft) >= 30
        idle50, idle99 = statistics.median(idle_ttft), pct(idle_ttft, 99)

        # --- load and attack -------------------------------------------------------------------------
        rss0 = rss_mb(srv.proc.pid)
        cpu0, load0 = cpu_times(srv.proc.pid), os.getloadavg()[0]
        rss_peak = [rss0]
        sampling = threading.Event()

        def sample_rss():
            while not sampling.wait(0.25):
                rss_peak.append(rss_mb(srv.proc.pid))

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        probe = helper("health", port, SECONDS)
        attacker = helper("hostile", port, keys["attacker"], SECONDS, 10_000)
        results: list[dict] = []
        t_load, t_load_mono = time.time(), time.monotonic()
        asyncio.run(stream_clients(port, keys, CLIENTS, t_load + SECONDS, results, seed=1))
        health = helper_result(probe, 60)
        cpu1, load1 = cpu_times(srv.proc.pid), os.getloadavg()[0]
        attack = helper_result(attacker, 120)
        time.sleep(1.5)  # the last rows close and one flush passes
        sampling.set()
        sampler.join()
        rss_peak.append(rss_mb(srv.proc.pid))
        growth = max(rss_peak) - rss0

        # /metrics: parses, and the hostile paths did not become labels
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        metrics_text = raw.split(b"\r\n\r\n", 1)[1].decode()
        families = {f.name: f for f in text_string_to_metric_families(metrics_text)}
        series = families["glassgpt_requests"].samples
        paths = {s.labels["path"] for s in series}

        # --- the numbers -----------------------------------------------------------------------------
        ok = [r for r in results if r.get("status") == 200 and not r["quit"]]
        quits = [r for r in results if r.get("status") == 200 and r["quit"]]
        drops = [r for r in results if r.get("dropped")]
        bad = [r for r in results if (r.get("status") != 200 or r.get("error")) and not r.get("dropped")]
        # steady state: requests sent after the clients' ramp-up (all of them are printed too)
        ttft_all = [r["first"] - r["t0"] for r in ok if r["first"]]
        ttft = [r["first"] - r["t0"] for r in ok if r["first"] and r["t0"] > t_load_mono + RAMP + 1.0]
        lat = health["latencies"]
        h50, h99 = pct(lat, 50), pct(lat, 99)
        t50, t99 = pct(ttft, 50), pct(ttft, 99)
        tokens = sum(len(r["times"]) for r in results)
        print(f"\nidle TTFT p50 {idle50 * 1e3:.1f} ms p99 {idle99 * 1e3:.1f} ms ({len(idle_ttft)} requests)")
        print(f"load: {CLIENTS} clients x {SECONDS:.0f} s: {len(ok)} streams + {len(quits)} hung up mid-stream + {len(drops)} before "
              f"any answer, {tokens} tokens "
              f"({tokens / SECONDS:.0f}/s), {len(bad)} failed")
        print(f"/health p50 {h50 * 1e3:.1f} ms p99 {h99 * 1e3:.1f} ms max {max(lat) * 1e3:.1f} ms "
              f"({len(lat)} probes, {health['failed']} failed)")
        print(f"TTFT under load p50 {t50 * 1e3:.1f} ms p99 {t99 * 1e3:.1f} ms = {t99 / idle99:.2f}x the idle p99 "
              f"({t99 / idle50:.2f}x the idle p50; {len(ttft)} requests after the ramp-up; with the ramp-up "
              f"p99 {pct(ttft_all, 99) * 1e3:.1f} ms)")
        print(f"server threads: {cpu1[0] - cpu0[0]:.1f} s on a CPU, {cpu1[1] - cpu0[1]:.1f} s runnable but waiting "
              f"for one; machine load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} cores")
        print(f"server RSS {rss0:.0f} MB -> peak {max(rss_peak):.0f} MB (growth {growth:.0f} MB), "
              f"end {rss_peak[-1]:.0f} MB")
        print(f"attacker: {json.dumps(attack['statuses'], sort_keys=True)}")
        slow = attack["slow_header_lasted"]
        print(f"slow-header connections: {len(slow)}, closed after max {max(slow):.2f} s "
              f"(header timeout {HEADER_TIMEOUT} s)")
        print(f"/metrics: {len(metrics_text)} bytes, request paths {sorted(paths)}")

        assert not bad, bad[:3]
        assert health["failed"] == 0
        # the timing bounds are checked at the end, after the ledger and the crash (reported together)
        missed = [what for what, held in ((f"/health p99 {h99 * 1e3:.0f} ms > 250 ms", h99 <= 0.250),
                                          (f"TTFT p99 {t99 * 1e3:.0f} ms > 3x idle p99 {idle99 * 1e3:.0f} ms",
                                           t99 <= 3 * idle99)) if not held]
        assert growth <= 300, growth
        for kind, expect in {"10MB prompt": {400}, "pixel bomb x1": {400}, "pixel bomb x12": {400},
                             "random path": {401, 404}, "wrong key": {401}}.items():
            got = {int(k): v for k, v in attack["statuses"].get(kind, {}).items()}  # JSON made the keys strings
            assert got and set(got) <= expect, (kind, got)
        n_junk = sum(sum(attack["statuses"].get(k, {}).values()) for k in ("random path", "wrong key"))
        assert n_junk == 10_000 or SECONDS < 30, n_junk  # all 10,000 were answered within the load
        # cut at the header timeout, late by at most what the event loop was late anyway (the
        # /health probe's worst answer), plus a second for the attacker's own polling
        assert slow and max(slow) <= HEADER_TIMEOUT + max(lat) + 1.0, (max(slow), max(lat))
        assert paths <= {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model_id}", "/health",
                         "/metrics", "unmatched", "/"}, paths

        # --- the ledger equals the responses -----------------------------------------------------------
        led = sqlite3.connect(db)
        rows = led.execute("SELECT k.name, u.prompt_tokens, u.completion_tokens, u.status FROM usage u "
                           "JOIN keys k ON k.id = u.key_id").fetchall()
        by = {name: [r[1:] for r in rows if r[0] == name] for name in ("good", "quitter", "attacker")}
        assert by["attacker"] == []  # every attack was refused before it reached the engine
        seen_ok = sorted((r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"], "ok") for r in ok
                         if r["key"] == "good")
        assert all(r["done"] and len(r["ids"]) == 1 and r["usage"]["completion_tokens"] == len(r["times"]) for r in ok)
        # the idle phase used the good key too: compare the rows opened since the load began
        led_load = sorted(led.execute(
            "SELECT u.prompt_tokens, u.completion_tokens, u.status FROM usage u JOIN keys k ON k.id = u.key_id "
            "WHERE k.name = 'good' AND u.ts >= ?", (t_load,)).fetchall())
        assert led_load == seen_ok, (len(led_load), len(seen_ok))
        q_rows = by["quitter"]
        q_all = [r for r in results if r["key"] == "quitter"]
        q_results = [r for r in q_all if r.get("status") == 200]
        # a client that left before any answer may have been refused before the engine: no row then
        assert len(q_results) <= len(q_rows) <= len(q_all), (len(q_results), len(q_rows), len(q_all))
        statuses = {s for _, _, s in q_rows}
        assert statuses <= {"cancelled", "ok"}, statuses
        billed_q = sum(c for _, c, s in q_rows)
        seen_q = sum(len(r["times"]) for r in results if r["key"] == "quitter")
        # a client that hung up saw at most what was billed; the engine may have made a few more
        # tokens (one per running step) before the cancellation reached it
        assert seen_q <= billed_q <= seen_q + 8 * len(q_all), (seen_q, billed_q)
        assert not led.execute("SELECT COUNT(*) FROM usage WHERE status = 'running'").fetchone()[0]
        led.close()
        print(f"ledger: {len(led_load)} ok rows equal the responses; {len(q_rows)} hung-up rows bill {billed_q} "
              f"tokens for {seen_q} seen")

        # --- SIGKILL mid-load, restart on the same ledger -----------------------------------------------
        kill_results: list[dict] = []
        stop = threading.Event()
        t_kill_start = time.time()
        killed_at = []

        def killer():
            time.sleep(4.0)
            killed_at.append(time.monotonic())
            srv.proc.send_signal(signal.SIGKILL)
            stop.set()

        threading.Thread(target=killer, daemon=True).start()
        asyncio.run(stream_clients(port, {"good": keys["kill"], "quitter": keys["kill-quitter"]}, CLIENTS,
                                   time.time() + 30, kill_results, seed=2, stop=stop))
        srv.proc.wait(10)
        t_kill = killed_at[0]
        streamed = sum(len(r["times"]) for r in kill_results)
        last_interval = sum(1 for r in kill_results for t in r["times"] if t > t_kill - 1.0)
        srv = Server(run, db, free_port()).start()
        led = sqlite3.connect(db)
        assert led.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = led.execute("SELECT u.completion_tokens, u.status FROM usage u JOIN keys k ON k.id = u.key_id "
                           "WHERE k.name IN ('kill', 'kill-quitter')").fetchall()
        assert not led.execute("SELECT COUNT(*) FROM usage WHERE status = 'running'").fetchone()[0]
        led.close()
        billed = sum(c for c, _ in rows)
        closed = sum(1 for _, s in rows if s == "error")
        print(f"SIGKILL after {t_kill - (t_kill_start - time.time() + time.monotonic()):.1f} s of load: "
              f"{streamed} tokens streamed, {billed} billed ({billed - streamed:+d}: generated but not yet sent if +; "
              f"{last_interval} streamed in the last 1 s); {len(rows)} rows, {closed} closed as error on restart")
        started = [r for r in kill_results if r.get("status") == 200]
        assert len(rows) >= len(started)
        # Billing counts the tokens the engine generated. What it may miss at a kill is what was made
        # after the last flush: at most what was streamed in the last interval. It may also be ahead
        # of what the clients saw (tokens generated but still queued for sending when the engine runs
        # ahead of a CPU-starved event loop): printed above, not bounded here.
        assert streamed - billed <= last_interval, (streamed, billed, last_interval)
        assert not missed, missed
    finally:
        srv.stop()


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "health":
        health_probe(int(sys.argv[2]), float(sys.argv[3]))
    elif what == "hostile":
        print(json.dumps(asyncio.run(hostile(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5])))))
