"""Load test, loopback only, bounded in time: 32 concurrent streaming clients.

No dropped or interleaved streams; every response's usage matches its tokens; the usage
ledger's totals equal the sum of the responses. GLASSGPT_LOAD_SECONDS sets the duration.
"""

import asyncio
import json
import os
import random
import subprocess
import sys
import time

import httpx
import pytest

from glassgpt.serve.testing import free_port, wait_healthy

pytestmark = pytest.mark.slow



async def one_stream(client, url, key, rng, results, errors):
    body = {"model": "tiny", "messages": [{"role": "user", "content": f"question {rng.random():.6f}"}],
            "max_tokens": rng.randint(1, 40), "temperature": 1.0, "stream": True, "logprobs": True,
            "stream_options": {"include_usage": True}}
    ids, content, tok_bytes, usage, done, finish, n_lp = set(), "", b"", None, False, None, 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body,
                             headers={"authorization": f"Bearer {key}"}) as r:
        if r.status_code != 200:
            errors.append(f"status {r.status_code}: {(await r.aread())[:200]!r}")
            return
        async for line in r.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            assert "error" not in chunk, chunk
            ids.add(chunk["id"])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk["choices"]:
                content += c["delta"].get("content") or ""
                for t in (c.get("logprobs") or {}).get("content") or []:
                    tok_bytes += bytes(t["bytes"])
                    n_lp += 1
                finish = c.get("finish_reason") or finish
    results.append({"ids": ids, "content": content, "tok_bytes": tok_bytes, "usage": usage, "done": done,
                    "finish": finish, "max_tokens": body["max_tokens"], "n_tokens": n_lp})


async def client_loop(url, key, seed, until, results, errors):
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=120) as client:
        while time.time() < until:
            try:
                await one_stream(client, url, key, rng, results, errors)
            except (httpx.HTTPError, AssertionError) as e:
                errors.append(repr(e))


def test_32_streaming_clients(tmp_path):
    from glassgpt.serve.store import Store
    from glassgpt.serve.testing import tiny_checkpoint

    seconds = float(os.environ.get("GLASSGPT_LOAD_SECONDS", "30"))
    db = tmp_path / "load.db"
    store = Store(db)
    key, _ = store.create_key("load")
    port = free_port()
    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING); from glassgpt.serve.api import serve; "
            f"serve([{str(tiny_checkpoint())!r}], host='127.0.0.1', port={port}, db={str(db)!r}, "
            "names=['tiny'], max_batch=16, max_queue=64)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        results, errors = [], []
        until = time.time() + seconds

        async def main():
            await asyncio.gather(*(client_loop(url, key, i, until, results, errors) for i in range(32)))

        asyncio.run(main())
        time.sleep(0.5)
        assert not errors, errors[:5]
        assert len(results) >= 32
        all_ids = [next(iter(r["ids"])) for r in results]
        for r in results:
            assert r["done"], "stream ended without [DONE]"
            assert len(r["ids"]) == 1, "chunks of two responses in one stream"
            assert r["usage"] is not None
            # the content is exactly the streamed tokens (nothing dropped or foreign)
            assert r["content"] == r["tok_bytes"].decode("utf-8", errors="replace")
            assert r["usage"]["completion_tokens"] == r["n_tokens"]
            assert r["usage"]["completion_tokens"] <= r["max_tokens"]
            assert r["finish"] in ("stop", "length")
            if r["finish"] == "length":
                assert r["usage"]["completion_tokens"] == r["max_tokens"]
        assert len(set(all_ids)) == len(all_ids)
        totals = store.totals()
        assert totals["requests"] == len(results)
        assert totals["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in results)
        assert totals["completion_tokens"] == sum(r["usage"]["completion_tokens"] for r in results)
        print(f"{len(results)} streams in {seconds:.0f}s, {totals['completion_tokens']} tokens")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
