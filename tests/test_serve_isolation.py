"""What keeps other clients fast while one misbehaves, and what keeps 32 streams fast at all:
prompts prefilled together, a step's rows sampled together, text over the context refused
before its JSON is parsed, refusals kept alive and their bodies drained within the read
timeout, and a key that keeps being refused answered more and more slowly."""

import json
import random
import socket
import time

import httpx
import pytest
import torch

from glassgpt.serve.api import TextMeter, Tarpit, create_app
from glassgpt.serve.engine import Engine, SamplingParams
from glassgpt.serve.store import Store
from glassgpt.serve.testing import ServerThread, tiny_checkpoint
from glassgpt.train.checkpoint import load_model

MODEL = "tiny"


# --- the engine ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded():
    return load_model(tiny_checkpoint())


def test_waiting_prompts_are_prefilled_in_one_call_and_decode_as_alone(loaded):
    model, tok, cfg = loaded
    texts = ["import os", "class Foo(object):\n    def", "x = 1\ny =", "for i in range(10):"]
    prompts = [tok.encode(t) for t in texts]
    greedy = SamplingParams(max_tokens=6, temperature=0)
    solo = [[t.id for t in Engine(model, tok, cfg, device="cpu", max_batch=1).generate(p, greedy)["choices"][0]["tokens"]]
            for p in prompts]
    eng = Engine(model, tok, cfg, device="cpu", max_batch=8)
    calls = []
    real = eng.model.forward

    def counting(idx, *a, **k):
        calls.append(tuple(idx.shape))
        return real(idx, *a, **k)

    eng.model.forward = counting
    try:
        outs = eng.generate_batch(prompts, [SamplingParams(max_tokens=6, temperature=0) for _ in prompts])
    finally:
        del eng.model.forward
    # the first call wrote all four prompts (padded to the longest), then one row per sequence a step
    assert calls[0] == (4, max(len(p) for p in prompts))
    assert all(t == 1 for _, t in calls[1:])
    assert [[t.id for t in o[0]["tokens"]] for o in outs] == solo


def test_a_step_samples_plain_rows_together_and_keeps_seeded_rows_reproducible(loaded):
    model, tok, cfg = loaded
    prompt = tok.encode("def f(x):")
    eng = Engine(model, tok, cfg, device="cpu", max_batch=8)
    params = [SamplingParams(max_tokens=8, temperature=0.9, seed=5), SamplingParams(max_tokens=8, temperature=0.9),
              SamplingParams(max_tokens=8, temperature=0), SamplingParams(max_tokens=8, temperature=0.9, top_k=3)]
    a = eng.generate_batch([prompt] * 4, params)
    b = eng.generate_batch([prompt] * 4, [SamplingParams(**vars(p)) for p in params])
    ids = lambda out, k: [t.id for t in out[k][0]["tokens"]]  # noqa: E731
    assert ids(a, 0) == ids(b, 0)  # a seed fixes its row, whatever else shares the step
    assert ids(a, 2) == ids(b, 2)  # greedy
    # every reported logprob is the model's own for the chosen token (batched log-softmax)
    for out in a:
        for info in out[0]["tokens"]:
            assert info.logprob <= 0 and info.id < tok.vocab_size


# --- TextMeter ------------------------------------------------------------------------------------
def text_outside_data(body: bytes) -> int:
    """The definition, on the whole body: every byte but the base64 data after ';base64,'."""
    n, i = len(body), 0
    while (i := body.find(b";base64,", i)) >= 0:
        j = body.find(b'"', i)
        if j < 0:
            return n - (len(body) - i - 8)
        n, i = n - (j - i - 8), j
    return n


def test_text_meter_counts_text_outside_base64_however_the_body_is_cut():
    rng = random.Random(0)
    for _ in range(500):
        parts = []
        for _ in range(rng.randint(0, 4)):
            parts.append({"type": "text", "text": "x;base6" * rng.randint(0, 5)})  # a marker's start in text
            parts.append({"type": "image_url", "image_url": {"url": "data:image/png;base64," + "QUJD" * rng.randint(0, 40)}})
        body = json.dumps({"messages": [{"role": "user", "content": parts}]}).encode()
        if rng.random() < 0.2:
            body = body[:rng.randint(0, len(body))]  # cut anywhere, inside data too
        cuts = sorted(rng.sample(range(len(body) + 1), min(len(body) + 1, rng.randint(0, 12))))
        meter, last, got = TextMeter(), 0, 0
        for c in cuts + [len(body)]:
            got = meter.feed(body[last:c])
            last = c
        assert got == text_outside_data(body)


# --- the API --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("iso") / "iso.db")
    key, _ = store.create_key("tests")
    engine = Engine.from_checkpoint(tiny_checkpoint(), name=MODEL, device="cpu", max_batch=4)
    app = create_app([engine], store, max_image=8 * 1024 * 1024, read_timeout=1.0, refusal_delay=0.5)
    with ServerThread(app) as srv:
        yield {"url": srv.url, "key": key, "srv": app.state.server, "engine": engine}


def post(env, path, body: bytes, key=None):
    return httpx.post(env["url"] + path, content=body, timeout=60,
                      headers={"authorization": f"Bearer {key or env['key']}", "content-type": "application/json"})


def test_text_over_any_context_is_refused_before_parsing(env):
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "A" * 3_000_000}]}).encode()
    r = post(env, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["code"] == "context_length_exceeded" and e["param"] == "messages"
    # the body meter's words ("bytes of text"), not the parsed request's size check ("characters")
    assert "maximum context length" in e["message"] and "bytes of text" in e["message"]
    body = json.dumps({"model": MODEL, "prompt": ["A" * 100_000] * 64}).encode()
    r = post(env, "/v1/completions", body)
    e = r.json()["error"]
    assert r.status_code == 400 and e["code"] == "context_length_exceeded" and e["param"] == "prompt"
    assert "bytes of text" in e["message"]


def test_large_image_data_is_not_counted_as_text(env):
    junk = "QUJD" * 500_000  # 2 MB of base64: not text, so not refused as text; refused as an image
    content = [{"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64," + junk}}]
    r = post(env, "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]}).encode())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] != "context_length_exceeded"


def raw(env, data: bytes, read_until_close=False) -> tuple[socket.socket, bytes]:
    host, port = env["url"].removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(data)
    got = b""
    while b"\r\n\r\n" not in got or (read_until_close and (chunk := s.recv(4096))):
        got += s.recv(4096) if b"\r\n\r\n" not in got else chunk
    return s, got


def test_a_refused_request_keeps_its_connection_when_its_body_was_read(env):
    body = b'{"model":"tiny","messages":[]}'
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-wrong\r\n"
           b"content-type: application/json\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    s, got = raw(env, req)
    assert got.startswith(b"HTTP/1.1 401") and b"connection: close" not in got.lower()
    s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")  # the same connection serves the next request
    more = b""
    while b"HTTP/1.1 200" not in more:
        chunk = s.recv(4096)
        assert chunk, "closed"
        more += chunk
    s.close()


def test_a_refused_request_whose_body_stops_is_closed_after_the_read_timeout(env):
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-wrong\r\n"
           b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"model\"")
    t0 = time.monotonic()
    s, got = raw(env, req, read_until_close=True)
    assert got.startswith(b"HTTP/1.1 401") and b"connection: close" in got.lower()
    assert time.monotonic() - t0 < 10  # the read timeout is 1 s; uvicorn's own would never come
    s.close()


def test_tarpit_grows_with_refusals_and_their_size_and_decays():
    t = Tarpit(base=0.01, tau=10.0, cap=0.5)
    assert t.delay("k", now=0.0) == 0.0  # the first refusal waits nothing
    waits = [t.delay("k", now=0.0) for _ in range(100)]
    assert waits[0] == pytest.approx(0.01) and waits[9] == pytest.approx(0.1) and waits[-1] == 0.5
    assert t.delay("other", now=0.0) == 0.0  # per key
    assert t.delay("k", now=100.0) < 0.01  # ten time constants later it is forgiven
    big = Tarpit(base=0.01, tau=10.0, cap=5.0)
    big.delay("k", size=10 * 2**20, now=0.0)  # a 10 MB body counts as 11 refusals
    assert big.delay("k", now=0.0) == pytest.approx(0.11)
    small = Tarpit(size=3)
    for k in range(10):
        small.delay(k, now=0.0)
    assert len(small.scores) == 3  # bounded: unknown keys cannot grow it


def test_only_a_keys_refused_posts_are_held_back(env, monkeypatch):
    seen = []
    monkeypatch.setattr(env["srv"].tarpit, "delay", lambda key_id, size=0, now=None: seen.append(key_id) or 0.0)
    bad = post(env, "/v1/chat/completions", b'{"model": "tiny", "messages": []}')
    assert bad.status_code == 400
    ok = post(env, "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                       "max_tokens": 2}).encode())
    assert ok.status_code == 200
    httpx.get(env["url"] + "/v1/nowhere", headers={"authorization": f"Bearer {env['key']}"}, timeout=30)
    post(env, "/v1/chat/completions", b"{}", key="sk-wrong")  # no key: nothing to count against
    assert len(seen) == 1


def test_a_key_that_keeps_being_refused_waits(env):
    env["srv"].tarpit.scores.clear()
    body = b'{"model": "tiny", "messages": []}'
    t0 = time.monotonic()
    for _ in range(12):
        assert post(env, "/v1/chat/completions", body).status_code == 400
    # waits of 0, 10, 20, ... 110 ms (minus a little decay): at least half a second in all
    assert time.monotonic() - t0 >= 0.5
    assert env["srv"].tarpit.delay(next(iter(env["srv"].tarpit.scores))) > 0.1


def test_a_prompt_prefilled_in_chunks_between_running_slots_is_not_overwritten(loaded):
    """A decode step gives free slots inside its range a dummy row at position 0; the slot of a
    prompt still being prefilled chunk by chunk is not free, and must not get one."""
    model, tok, cfg = loaded
    long = tok.encode("def add(a, b):\n    return a + b\n\nclass Foo:\n    pass\n")[:40]
    greedy = SamplingParams(max_tokens=4, temperature=0)
    alone = Engine(model, tok, cfg, device="cpu", max_batch=1)
    solo = [t.id for t in alone.generate(long, greedy)["choices"][0]["tokens"]]
    eng = Engine(model, tok, cfg, device="cpu", max_batch=4, prefill_chunk=8, prefill_share=None)
    got: list[int] = []
    short = tok.encode("x = 1")
    for k in range(4):  # slots 0..3; the one in slot 1 ends after one token, freeing its slot
        eng.submit(short, SamplingParams(max_tokens=1 if k == 1 else 30, temperature=0), lambda ev: None)
    eng._step()
    eng._step()
    assert 1 in eng.free_slots and {s.slot for s in eng.running} == {0, 2, 3}
    eng.submit(long, greedy, lambda ev: got.append(ev.token.id) if ev.kind == "token" else None)
    for _ in range(3):  # 24 of its 40 prompt tokens, 8 a step, while slots 0, 2 and 3 decode around it
        eng._step()
    assert {s.slot for s in eng.running} >= {0, 2} and eng.prefilling
    # the keys of its prompt so far are the ones it has alone (position 0 included)
    assert torch.allclose(eng.cache.k[:, 1, :, :24], alone.cache.k[:, 0, :, :24], atol=1e-5)
    for _ in range(10):
        eng._step()
    assert got == solo


def test_paced_streams_are_no_faster_than_the_rate_and_unpaced_batches_are_not_paced(loaded):
    model, tok, cfg = loaded
    eng = Engine(model, tok, cfg, device="cpu", max_batch=4, max_token_rate=20).start()
    try:
        eng.end_ids = set()  # all 10 tokens
        t0 = time.monotonic()
        r = eng.generate(tok.encode("x ="), SamplingParams(max_tokens=10, temperature=0), timeout=60)
        took = time.monotonic() - t0
    finally:
        eng.stop()
    assert len(r["choices"][0]["tokens"]) == 10
    # the first token comes from the prefill and the second from that step's decode; then one
    # decode step every 50 ms
    assert took >= 8 * 0.05 * 0.9
    # without the engine thread (generate_batch, the evals and RL rollouts) nothing is paced
    eng = Engine(model, tok, cfg, device="cpu", max_batch=4, max_token_rate=1)
    eng.end_ids = set()
    t0 = time.monotonic()
    out = eng.generate_batch([tok.encode("x =")], [SamplingParams(max_tokens=10, temperature=0)])
    assert len(out[0][0]["tokens"]) == 10 and time.monotonic() - t0 < 9  # paced at 1/s it would take 9 s
