"""The header deadline (slowloris): a request head that does not arrive in time closes the
connection; ordinary clients, slow responses and kept-alive connections are unaffected."""

import asyncio
import socket
import time

import httpx
import pytest

from glassgpt.serve.http import protocol
from glassgpt.serve.testing import ServerThread

TIMEOUT = 1.0


async def app(scope, receive, send):
    """Answers /slow after 2 × TIMEOUT (a response may take longer than the header deadline),
    anything else at once."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] != "/slow":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        return await send({"type": "http.response.body", "body": b"ok"})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"wait", "more_body": True})
    await asyncio.sleep(2 * TIMEOUT)
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def url():
    with ServerThread(app, http=protocol(TIMEOUT), timeout_keep_alive=5) as srv:
        yield srv.url


def connect(url) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def closed_after(s: socket.socket, t0: float) -> tuple[float, bytes]:
    """Read until the server closes; returns (seconds since t0, what it sent)."""
    got = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return time.monotonic() - t0, got
        got += chunk


def test_one_header_byte_a_second_is_cut(url):
    s = connect(url)
    t0 = time.monotonic()
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    s.setblocking(False)
    sent, got, closed_at = 0, b"", None
    while time.monotonic() - t0 < TIMEOUT + 5:
        try:
            s.send(head[sent:sent + 1])
            sent += 1
        except (BrokenPipeError, ConnectionResetError):
            closed_at = time.monotonic() - t0
            break
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                closed_at = time.monotonic() - t0
                break
            got += chunk
        if closed_at is not None:
            break
    s.close()
    assert closed_at is not None, "the slow head was never cut"
    assert closed_at <= TIMEOUT + 1.2, closed_at
    assert got.startswith(b"HTTP/1.1 408"), got


def test_a_connection_that_sends_nothing_is_closed(url):
    s = connect(url)
    took, got = closed_after(s, time.monotonic())
    s.close()
    assert took <= TIMEOUT + 1.0, took
    assert got == b""  # nothing was asked: nothing to answer


def test_slow_head_on_a_kept_alive_connection_is_cut(url):
    s = connect(url)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while not first.endswith(b"ok"):
        first += s.recv(4096)
    assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"ok")
    s.sendall(b"GET / HT")  # the next head starts and stalls
    took, got = closed_after(s, time.monotonic())
    s.close()
    assert took <= TIMEOUT + 1.0, took
    assert got.startswith(b"HTTP/1.1 408"), got


def test_ordinary_clients_are_unaffected(url):
    with httpx.Client(base_url=url, timeout=10) as c:
        # a response that takes longer than the header deadline is not cut
        r = c.get("/slow")
        assert r.status_code == 200 and r.text == "waitok"
        # a kept-alive connection idle for longer than the header deadline (but within
        # keep-alive) still serves its next request, on the same connection
        time.sleep(TIMEOUT + 0.5)
        r2 = c.post("/", content=b"x" * 100_000)
        assert r2.status_code == 200 and r2.text == "ok"
        assert c._transport._pool.connections and len(c._transport._pool.connections) == 1
    # a head sent in pieces within the deadline is answered
    s = connect(url)
    for piece in (b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
        s.sendall(piece)
        time.sleep(TIMEOUT / 4)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.close()
