"""The OpenAI-compatible API, exercised through the official `openai` SDK and raw HTTP.

One server per module on 127.0.0.1 (a free port), serving the tiny checkpoint.
"""

import base64
import json
import time

import httpx
import openai
import pytest

from glassgpt.serve.api import create_app, decode_image, is_loopback, serve
from glassgpt.serve.engine import Engine
from glassgpt.serve.errors import ServeError
from glassgpt.serve.store import Store
from glassgpt.serve.testing import ServerThread, tiny_checkpoint

MODEL = "tiny"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("serve") / "serve.db"
    store = Store(db)
    key, _ = store.create_key("tests")
    engine = Engine.from_checkpoint(tiny_checkpoint(), name=MODEL, device="cpu", max_batch=8)
    app = create_app([engine], store, max_image=100_000)
    with ServerThread(app) as srv:
        yield {"url": srv.url, "key": key, "store": store, "engine": engine}


@pytest.fixture
def client(env):
    return openai.OpenAI(base_url=env["url"] + "/v1", api_key=env["key"], max_retries=0, timeout=60)


def post(env, path, body, key=True, timeout=60, **kw):
    headers = {"authorization": f"Bearer {env['key']}"} if key else {}
    if isinstance(body, (bytes, str)):
        return httpx.post(env["url"] + path, content=body, headers={**headers, "content-type": "application/json"},
                          timeout=timeout, **kw)
    return httpx.post(env["url"] + path, json=body, headers=headers, timeout=timeout, **kw)


def user(text="hello"):
    return [{"role": "user", "content": text}]


# --- the SDK ------------------------------------------------------------------------------------
def test_sdk_completes(client):
    r = client.chat.completions.create(model=MODEL, messages=user(), max_tokens=8, seed=7, temperature=0.7)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 0 < r.usage.completion_tokens <= 8
    again = client.chat.completions.create(model=MODEL, messages=user(), max_tokens=8, seed=7, temperature=0.7)
    assert again.choices[0].message.content == r.choices[0].message.content


def test_sdk_streams_with_usage_same_as_non_streaming(client):
    kw = dict(model=MODEL, messages=user("def"), max_tokens=12, temperature=0)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage.model_dump()["completion_tokens"] == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_raw_stream_format(env):
    with httpx.stream("POST", env["url"] + "/v1/chat/completions", headers={"authorization": f"Bearer {env['key']}"},
                      json={"model": MODEL, "messages": user(), "max_tokens": 3, "stream": True}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    chunk = json.loads(lines[0][6:])
    assert chunk["object"] == "chat.completion.chunk" and "usage" not in chunk


def test_n_choices_and_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=user(), max_tokens=5, n=3, seed=1, logprobs=True, top_logprobs=2)
    assert [c.index for c in r.choices] == [0, 1, 2]
    for c in r.choices:
        assert c.logprobs.content and len(c.logprobs.content[0].top_logprobs) == 2
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)


def test_stop_sequence_excluded(client):
    base = client.chat.completions.create(model=MODEL, messages=user("x"), max_tokens=20, temperature=0)
    text = base.choices[0].message.content
    if len(text) < 3:
        pytest.skip("greedy answer too short to cut")
    r = client.chat.completions.create(model=MODEL, messages=user("x"), max_tokens=20, temperature=0, stop=[text[1:3]])
    assert text[1:3] not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("kw, code", [
    (dict(messages=[]), "empty_array"),
    (dict(messages=user(), temperature=3), "invalid_value"),
    (dict(messages=user(), max_tokens=-1), "invalid_value"),
    (dict(messages=user(), max_tokens=100_000), "context_length_exceeded"),
    (dict(messages=user(), stop=["a", "b", "c", "d", "e"]), "invalid_value"),
    (dict(messages=[{"role": "robot", "content": "x"}]), "invalid_value"),
    (dict(messages=[{"role": "tool", "content": "x"}]), "missing_required_parameter"),
])
def test_sdk_bad_request(client, kw, code):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, **kw)
    assert e.value.code == code
    assert e.value.status_code == 400


def test_sdk_auth_errors(env):
    bad = openai.OpenAI(base_url=env["url"] + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model=MODEL, messages=user(), max_tokens=2)
    assert e.value.code == "invalid_api_key"
    r = post(env, "/v1/chat/completions", {"model": MODEL, "messages": user()}, key=False)
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    k, rec = env["store"].create_key("to-revoke")
    env["store"].revoke(rec.id)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=env["url"] + "/v1", api_key=k, max_retries=0).models.list()


def test_sdk_rate_limits(env):
    k, _ = env["store"].create_key("slow", rpm=1)
    c = openai.OpenAI(base_url=env["url"] + "/v1", api_key=k, max_retries=0)
    c.chat.completions.create(model=MODEL, messages=user(), max_tokens=1)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model=MODEL, messages=user(), max_tokens=1)
    assert e.value.code == "rate_limit_exceeded"
    k2, _ = env["store"].create_key("few-tokens", tpm=5)
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=env["url"] + "/v1", api_key=k2, max_retries=0).chat.completions.create(
            model=MODEL, messages=user("a long enough message"), max_tokens=5)


def test_not_found(client, env):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-5", messages=user())
    assert e.value.code == "model_not_found"
    r = post(env, "/v1/nothing", {})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


def test_overloaded_queue_is_503(client, env):
    eng = env["engine"]
    old = eng.max_queue
    eng.max_queue = 0
    try:
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model=MODEL, messages=user(), max_tokens=2)
        assert e.value.status_code == 503
    finally:
        eng.max_queue = old


# --- bad input over raw HTTP ----------------------------------------------------------------------
def test_malformed_json_wrong_types_unknown_fields(env):
    r = post(env, "/v1/chat/completions", b'{"model": "tiny", "messages": [')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = post(env, "/v1/chat/completions", {"model": MODEL, "messages": "hello"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = post(env, "/v1/chat/completions", {"model": MODEL, "messages": user(), "temperature": "hot"})
    assert r.status_code == 400
    r = post(env, "/v1/chat/completions", {"model": MODEL, "messages": user(), "max_tokens": 2, "frobnicate": True})
    assert r.status_code == 200
    r = post(env, "/v1/chat/completions", b"[1, 2]")
    assert r.status_code == 400


def test_body_too_large_is_413(env):
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"a" * (50 * 1024 * 1024) + b'"}]}'
    r = post(env, "/v1/chat/completions", body)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def image_msg(url):
    return [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def test_images(env, client):
    good = "data:image/png;base64," + base64.b64encode(PNG).decode()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=image_msg(good))
    assert "no image input" in e.value.message and e.value.code == "image_input_not_supported"
    not_image = "data:image/png;base64," + base64.b64encode(b"just some text, not an image").decode()
    truncated = good[:-7]
    cut_png = "data:image/png;base64," + base64.b64encode(PNG[:40]).decode()
    for url in (not_image, truncated, cut_png, "https://example.com/cat.png", "data:image/png,raw"):
        r = post(env, "/v1/chat/completions", {"model": MODEL, "messages": image_msg(url)})
        assert r.status_code == 400, url
        assert r.json()["error"]["param"].startswith("messages[0].content[1]")
    big = "data:image/png;base64," + base64.b64encode(PNG + b"\0" * 200_000).decode()
    r = post(env, "/v1/chat/completions", {"model": MODEL, "messages": image_msg(big)})
    assert r.status_code == 413


def test_decode_image_formats():
    fmt, raw = decode_image("data:image/png;base64," + base64.b64encode(PNG).decode(), "p")
    assert fmt == "png" and raw == PNG
    with pytest.raises(ServeError):
        decode_image("data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff\xe0 truncated").decode(), "p")


# --- legacy completions -------------------------------------------------------------------------------
def test_legacy_echo_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="import os\nimport sys", max_tokens=0, echo=True, logprobs=0)
    c = r.choices[0]
    assert c.text == "import os\nimport sys"
    assert "".join(c.logprobs.tokens) == c.text
    assert c.logprobs.token_logprobs[0] is None  # as OpenAI: the first echoed token has no logprob
    assert all(isinstance(x, float) and x <= 0 for x in c.logprobs.token_logprobs[1:])
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(c.logprobs.tokens)
    r2 = client.completions.create(model=MODEL, prompt=["a = 1", "b = 2"], max_tokens=3, n=2, temperature=0)
    assert [c.index for c in r2.choices] == [0, 1, 2, 3]
    toks = r.choices[0].logprobs.tokens
    r3 = client.completions.create(model=MODEL, prompt=[[65, 66, 67]], max_tokens=2, logprobs=2, temperature=0)
    assert len(r3.choices[0].logprobs.tokens) == r3.usage.completion_tokens
    assert toks


def test_legacy_stream(client):
    chunks = list(client.completions.create(model=MODEL, prompt="def", max_tokens=4, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    full = client.completions.create(model=MODEL, prompt="def", max_tokens=4, temperature=0)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


# --- models, health, metrics, metering ---------------------------------------------------------------------
def test_models_health_metrics(client, env):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    h = httpx.get(env["url"] + "/health").json()
    assert h["status"] == "ok"
    client.chat.completions.create(model=MODEL, messages=user(), max_tokens=2)
    m = httpx.get(env["url"] + "/metrics").text
    for name in ("glassgpt_requests_total", "glassgpt_completion_tokens_total", "glassgpt_queue_depth",
                 "glassgpt_request_latency_seconds_bucket", "glassgpt_time_to_first_token_seconds_count"):
        assert name in m
    page = httpx.get(env["url"] + "/")
    assert page.status_code == 200 and "glassgpt" in page.text
    assert httpx.get(env["url"] + "/app.js").status_code == 200


def test_ledger_matches_responses(client, env):
    store = env["store"]
    before = store.totals()
    got_p = got_c = 0
    for i in range(3):
        r = client.chat.completions.create(model=MODEL, messages=user(f"q{i}"), max_tokens=4 + i)
        got_p += r.usage.prompt_tokens
        got_c += r.usage.completion_tokens
    for c in client.chat.completions.create(model=MODEL, messages=user(), max_tokens=3, stream=True,
                                            stream_options={"include_usage": True}):
        if c.usage:
            got_p += c.usage.prompt_tokens
            got_c += c.usage.completion_tokens
    time.sleep(0.2)  # the stream's row is written as the response closes
    after = store.totals()
    assert after["prompt_tokens"] - before["prompt_tokens"] == got_p
    assert after["completion_tokens"] - before["completion_tokens"] == got_c
    assert after["cost"] - before["cost"] == pytest.approx((got_p + got_c) / 1000 * 0.002)


def test_disconnect_mid_stream_cancels_and_meters(env):
    store = env["store"]
    n0 = store.db.execute("SELECT COUNT(*) FROM usage WHERE status = 'cancelled'").fetchone()[0]
    with httpx.stream("POST", env["url"] + "/v1/chat/completions", headers={"authorization": f"Bearer {env['key']}"},
                      json={"model": MODEL, "messages": user(), "max_tokens": 50, "stream": True, "temperature": 1.0,
                            "logprobs": True}, timeout=60) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: {"):
                seen += 1
            if seen >= 3:
                break
    deadline = time.time() + 20
    row = None
    while time.time() < deadline:
        row = store.db.execute("SELECT completion_tokens FROM usage WHERE status = 'cancelled' ORDER BY n DESC").fetchall()
        if len(row) > n0:
            break
        time.sleep(0.1)
    assert len(row) > n0, "the cancelled request was not metered"
    assert 1 <= row[0][0] < 50
    assert env["engine"].n_running == 0 or env["engine"].queue_depth == 0


def test_error_after_stream_began_is_an_error_event(client, env):
    eng = env["engine"]
    real = eng._sample
    calls = {"n": 0}

    def flaky(seqs, logits):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(seqs, logits)

    eng._sample = flaky
    try:
        with pytest.raises(openai.APIError) as e:
            for _ in client.chat.completions.create(model=MODEL, messages=user(), max_tokens=20, stream=True, temperature=0):
                pass
        assert "boom" in str(e.value)
    finally:
        del eng._sample
    # the engine keeps serving
    assert client.chat.completions.create(model=MODEL, messages=user(), max_tokens=2).choices


def test_no_auth_and_loopback(env):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    with pytest.raises(ServeError, match="loopback"):
        serve([str(tiny_checkpoint())], host="0.0.0.0", no_auth=True)
    other = Engine(env["engine"].model, env["engine"].tokenizer, name="local", max_batch=2, device="cpu")
    app = create_app([other], None, auth=False)
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="http://127.0.0.1:8000") as tc:
        r = tc.get("/v1/models")
        assert r.status_code == 200


def test_terminal_chat_against_the_server(env):
    import io

    from glassgpt.serve.chat import RemoteBackend, run_chat

    backend = RemoteBackend(env["url"] + "/v1", env["key"])
    assert backend.name == MODEL
    script = iter(["hi", "/quit"])
    out = io.StringIO()
    msgs = run_chat(backend, read=lambda _: next(script), out=out, temperature=0, max_tokens=4)
    assert [m["role"] for m in msgs] == ["user", "assistant"]  # a base model: no default system prompt
    assert backend.usage["completion_tokens"] > 0


# --- cheap limits first, long work off the event loop ---------------------------------------------
def big_message(mb=10):
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "a" * (mb * 1024 * 1024)}],
                       "max_tokens": 1}).encode()


def count_calls(monkeypatch, obj, name):
    calls = []
    real = getattr(obj, name)

    def wrapped(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(obj, name, wrapped)
    return calls


def test_key_over_its_limit_is_refused_before_tokenizing(env, monkeypatch):
    k, _ = env["store"].create_key("over", rpm=1)
    c = openai.OpenAI(base_url=env["url"] + "/v1", api_key=k, max_retries=0)
    c.chat.completions.create(model=MODEL, messages=user(), max_tokens=1)
    calls = count_calls(monkeypatch, env["engine"].tokenizer, "render_chat")
    t0 = time.time()
    r = httpx.post(env["url"] + "/v1/chat/completions", content=big_message(),
                   headers={"authorization": f"Bearer {k}", "content-type": "application/json"}, timeout=60)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert calls == [] and time.time() - t0 < 5
    r = httpx.post(env["url"] + "/v1/chat/completions", content=big_message(1),
                   headers={"authorization": "Bearer sk-wrong", "content-type": "application/json"}, timeout=60)
    assert r.status_code == 401 and calls == []


def test_message_longer_than_the_context_is_refused_without_tokenizing(env, monkeypatch):
    calls = count_calls(monkeypatch, env["engine"].tokenizer, "render_chat")
    enc = count_calls(monkeypatch, env["engine"].tokenizer, "encode")
    r = post(env, "/v1/chat/completions", big_message())
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and err["param"] == "messages"
    r = post(env, "/v1/completions", {"model": MODEL, "prompt": "a" * 1_000_000, "max_tokens": 1})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    assert "prompt" in err["message"] and "messages" not in err["message"]
    assert calls == [] and enc == []


def test_health_answers_while_a_prompt_is_tokenized(env, monkeypatch):
    import threading

    import glassgpt.serve.api as api

    # Chats over INLINE_CHARS are tokenized in a worker thread (shorter ones take microseconds, on the
    # loop); the tiny model's context cannot hold one that long, so the limit is lowered instead.
    monkeypatch.setattr(api, "INLINE_CHARS", 0)
    tok = env["engine"].tokenizer
    real = tok.render_chat
    started = threading.Event()

    def slow(*a, **kw):  # stands in for seconds of tokenizing a long prompt
        started.set()
        time.sleep(2.0)
        return real(*a, **kw)

    monkeypatch.setattr(tok, "render_chat", slow)
    out = {}
    t = threading.Thread(target=lambda: out.update(r=post(env, "/v1/chat/completions",
                                                          {"model": MODEL, "messages": user(), "max_tokens": 1})))
    t.start()
    assert started.wait(10)
    t0 = time.time()
    h = httpx.get(env["url"] + "/health", timeout=10)
    took = time.time() - t0
    t.join(30)
    assert h.status_code == 200 and took < 1.0, took
    assert out["r"].status_code == 200


# --- /metrics under hostile paths -----------------------------------------------------------------
def test_metrics_labels_are_route_templates_and_parse(env):
    check_metrics_after_hostile_paths(env, 150)


@pytest.mark.slow
def test_metrics_parse_after_1000_random_paths(env):
    check_metrics_after_hostile_paths(env, 1000)


def check_metrics_after_hostile_paths(env, count):
    import asyncio
    import random

    from prometheus_client.parser import text_string_to_metric_families

    # percent-encoded: the server decodes them to quotes, braces and newlines in the path
    hostile = ["/x%22%7D%201%0Afoo", "/v1/x%22%7D%0A", "/v1/models/a%22b%0A", "/%5C", "/v1/chat/completions/extra"]
    for path in hostile:
        httpx.get(env["url"] + path, headers={"authorization": f"Bearer {env['key']}"})
    rng = random.Random(0)
    paths = ["/" + "".join(rng.choice("abcdefghij%20\"{}") for _ in range(12)) for _ in range(count)]

    async def scan():  # 20 at a time: a keep-alive round trip costs ~40 ms here (delayed ACK)
        async with httpx.AsyncClient(base_url=env["url"]) as c:
            for i in range(0, len(paths), 20):
                rs = await asyncio.gather(*(c.get(p) for p in paths[i:i + 20]))
                assert all(r.status_code == 404 for r in rs)

    asyncio.run(scan())
    text = httpx.get(env["url"] + "/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    paths = {s.labels["path"] for s in fams["glassgpt_requests"].samples}
    templates = {"unmatched", "/v1/models/{model_id}", "/v1/chat/completions", "/v1/completions", "/v1/models", "/health"}
    assert paths <= templates | {"/", "/metrics"}, paths - templates
    assert "unmatched" in paths
    assert len(fams["glassgpt_requests"].samples) < 40


# --- cancellation of non-streaming requests, one ledger row each --------------------------------------
def slow_sampling(monkeypatch, engine, delay=0.005):
    """Every token takes `delay` seconds and no choice ends early (no end token)."""
    monkeypatch.setattr(engine, "end_ids", set())
    real = engine._sample

    def slow(seqs, logits):  # one call samples a whole step's rows
        time.sleep(delay * len(seqs))
        return real(seqs, logits)

    monkeypatch.setattr(engine, "_sample", slow)


def ledger_rows(store, after):
    return store.db.execute("SELECT endpoint, completion_tokens, status FROM usage WHERE n > ? ORDER BY n",
                            (after,)).fetchall()


def last_row(store):
    return store.db.execute("SELECT COALESCE(MAX(n), 0) FROM usage").fetchone()[0]


def wait_rows(store, after, count, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = ledger_rows(store, after)
        if len(rows) >= count:
            return rows
        time.sleep(0.05)
    return ledger_rows(store, after)


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": user(), "n": 4}),
    ("/v1/completions", {"prompt": ["a", "b"], "n": 2}),
])
def test_non_stream_disconnect_cancels_and_meters_once(env, monkeypatch, path, body):
    store, eng = env["store"], env["engine"]
    slow_sampling(monkeypatch, eng, 0.02)
    n0 = last_row(store)
    with pytest.raises(httpx.ReadTimeout):  # the tiny model's context is 64 tokens: 4 x 50 take 4 s here
        post(env, path, {"model": MODEL, **body, "max_tokens": 50, "temperature": 1.0}, timeout=0.6)
    rows = wait_rows(store, n0, 1)
    time.sleep(0.3)
    rows = ledger_rows(store, n0)
    assert len(rows) == 1 and rows[0][2] == "cancelled", rows
    assert 0 < rows[0][1] < 4 * 50  # billed what was generated, and it stopped
    deadline = time.time() + 5
    while eng.n_running and time.time() < deadline:
        time.sleep(0.05)
    assert eng.n_running == 0


def test_queued_client_that_disconnects_has_no_race(env, monkeypatch, caplog):
    import threading

    store, eng = env["store"], env["engine"]
    slow_sampling(monkeypatch, eng, 0.01)
    n0 = last_row(store)
    # One request holds every slot for a while; the second waits in the queue and gives up.
    hog = threading.Thread(target=lambda: post(env, "/v1/chat/completions", {
        "model": MODEL, "messages": user(), "n": eng.max_batch, "max_tokens": 20, "temperature": 1.0}))
    hog.start()
    time.sleep(0.3)
    with caplog.at_level("WARNING"):
        with pytest.raises(httpx.ReadTimeout):
            post(env, "/v1/chat/completions", {"model": MODEL, "messages": user(), "max_tokens": 5}, timeout=0.3)
        hog.join(60)
        rows = wait_rows(store, n0, 2)
    assert sorted(r[2] for r in rows) == ["cancelled", "ok"], rows
    assert "already running" not in caplog.text and "Traceback" not in caplog.text
    m = httpx.get(env["url"] + "/metrics").text
    assert 'glassgpt_requests_total{path="/v1/chat/completions",status="499"}' in m


# --- image decompression amplification --------------------------------------------------------------
def encoded(im, fmt, **kw):
    import io

    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_pixel_bomb_refused_from_its_header():
    import tracemalloc

    from PIL import Image

    from glassgpt.serve.api import load_images

    bomb = encoded(Image.new("P", (6000, 6000)), "PNG", optimize=True)
    assert len(bomb) < 100_000  # a few KB that declare 36 M pixels
    tracemalloc.start()
    t0 = time.time()
    with pytest.raises(ServeError) as e:
        load_images([("messages[0].content[1]", bomb)])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert e.value.code == "image_too_large" and e.value.param == "messages[0].content[1]"
    assert time.time() - t0 < 1.0 and peak < 5_000_000  # nothing was decoded
    # the budget is per request: two images that pass alone do not pass together
    half = encoded(Image.new("P", (3000, 3000)), "PNG")
    assert len(load_images([("a", half)], max_pixels=10_000_000)) == 1
    with pytest.raises(ServeError, match="in all"):
        load_images([("a", half), ("b", half)], max_pixels=10_000_000)


def test_jpeg_decoded_at_reduced_size():
    from PIL import Image

    from glassgpt.serve.api import load_images

    jpeg = encoded(Image.new("RGB", (4000, 3000), (200, 30, 30)), "JPEG")
    [im] = load_images([("p", jpeg)], side=224)
    assert im.mode == "RGB" and max(im.size) <= 1000  # draft: 1/8 scale, never 12 M pixels
    png = encoded(Image.new("RGB", (2000, 2000), (0, 90, 0)), "PNG")
    [im] = load_images([("p", png)], side=100)
    assert 200 <= min(im.size) < 400  # shrunk right after decoding, still well above the encoder's side


# --- --no-auth: CSRF and DNS rebinding ---------------------------------------------------------------
def test_no_auth_refuses_foreign_hosts_origins_and_form_bodies(env):
    from fastapi.testclient import TestClient

    other = Engine(env["engine"].model, env["engine"].tokenizer, name="local", max_batch=2, device="cpu")
    app = create_app([other], None, auth=False, bind_port=8000)
    body = json.dumps({"model": "local", "messages": user(), "max_tokens": 1})
    js = {"content-type": "application/json"}
    with TestClient(app, base_url="http://127.0.0.1:8000") as tc:
        assert tc.post("/v1/chat/completions", content=body, headers=js).status_code == 200
        assert tc.post("/v1/chat/completions", content=body, headers={**js, "origin": "http://localhost:8000",
                                                                      "host": "localhost:8000"}).status_code == 200
        assert tc.get("/v1/models", headers={"host": "[::1]:8000"}).status_code == 200
        for headers, code in [({**js, "host": "evil.example:8000"}, "invalid_host"),  # DNS rebinding
                              ({**js, "host": "127.0.0.1:9999"}, "invalid_host"),
                              ({**js, "origin": "https://evil.example"}, "cross_origin_refused"),
                              ({**js, "origin": "null"}, "cross_origin_refused"),
                              ({"content-type": "text/plain"}, "unsupported_media_type"),  # a form, no preflight
                              ({"content-type": "application/x-www-form-urlencoded"}, "unsupported_media_type")]:
            r = tc.post("/v1/chat/completions", content=body, headers=headers)
            assert r.status_code in (403, 415) and r.json()["error"]["code"] == code, (headers, r.text)
        assert tc.get("/", headers={"host": "evil.example:8000"}).status_code == 403
        page = tc.get("/")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY"


def test_page_headers_with_keys(env):
    page = httpx.get(env["url"] + "/")
    assert page.headers["x-frame-options"] == "DENY" and "default-src 'self'" in page.headers["content-security-policy"]


# --- fair scheduling between keys ---------------------------------------------------------------------
def test_small_request_of_another_key_is_not_stuck_behind_a_big_one(env, monkeypatch):
    import threading

    eng = env["engine"]
    slow_sampling(monkeypatch, eng, 0.004)
    big_key, _ = env["store"].create_key("big")
    done = {}

    def big():
        r = httpx.post(env["url"] + "/v1/completions", headers={"authorization": f"Bearer {big_key}"}, timeout=120,
                       json={"model": MODEL, "prompt": [f"p{i}" for i in range(12)], "n": 4, "max_tokens": 10})
        done["big"] = (time.time(), r.status_code)

    t = threading.Thread(target=big)
    t.start()
    deadline = time.time() + 10
    while eng.n_running == 0 and time.time() < deadline:
        time.sleep(0.01)
    # 12 prompts x n=4 fill 8 slots for six rounds; the other key's request joins at the next free slot
    r = post(env, "/v1/chat/completions", {"model": MODEL, "messages": user(), "max_tokens": 2})
    small_done = time.time()
    t.join(120)
    assert r.status_code == 200 and done["big"][1] == 200
    assert small_done < done["big"][0] - 0.5, (small_done, done["big"][0])


# --- metering as tokens are produced ---------------------------------------------------------------------
def test_running_request_is_metered_before_it_ends(env, monkeypatch):
    store = env["store"]
    slow_sampling(monkeypatch, env["engine"], 0.03)
    n0 = last_row(store)
    with httpx.stream("POST", env["url"] + "/v1/chat/completions", headers={"authorization": f"Bearer {env['key']}"},
                      json={"model": MODEL, "messages": user(), "max_tokens": 50, "stream": True}, timeout=60) as r:
        seen, mid = 0, None
        for line in r.iter_lines():
            seen += line.startswith("data: {")
            if seen == 45:  # ~1.3 s in: at least one periodic write happened
                mid = ledger_rows(store, n0)
    assert mid is not None and len(mid) == 1
    assert mid[0][2] == "running" and mid[0][1] > 0
    rows = wait_rows(store, n0, 1)
    assert rows[0][2] == "ok" and rows[0][1] == 50


# --- read timeouts and declared sizes -----------------------------------------------------------------
def raw_exchange(url, head: bytes, body: bytes = b"", wait: float = 10.0) -> bytes:
    import socket

    host, port = url.rsplit("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(head + body)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
    return out


def test_huge_declared_length_and_stalled_body(env):
    other = Engine(env["engine"].model, env["engine"].tokenizer, name=MODEL, max_batch=2, device="cpu")
    app = create_app([other], env["store"], read_timeout=1.0)
    auth = f"Authorization: Bearer {env['key']}\r\n".encode()
    with ServerThread(app) as srv:
        t0 = time.time()
        out = raw_exchange(srv.url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth +
                           b"Content-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 413") and b"request_too_large" in out and time.time() - t0 < 5
        t0 = time.time()
        out = raw_exchange(srv.url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth +
                           b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n", b'{"model": ')
        assert out.startswith(b"HTTP/1.1 408") and b"request_timeout" in out
        assert 0.9 < time.time() - t0 < 5  # answered at the timeout, and the connection closed


# --- the error contract, as the SDK reads it -------------------------------------------------------------
def test_error_params_and_messages(env, client):
    r = post(env, "/v1/chat/completions", b'{"model": "tiny", "messages": [')
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "invalid_json" and err["param"] is None
    r = post(env, "/v1/chat/completions", b"")
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] is None and "empty" in err["message"] and "None" not in err["message"]
    r = post(env, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": 5}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"
    r = post(env, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": [{"type": 3}]}]})
    assert r.json()["error"]["param"] == "messages[0].content[0].type"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=user(), max_tokens=60)
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hello there", max_tokens=60)
    assert e.value.code == "context_length_exceeded" and e.value.param == "prompt"
    assert "in the prompt" in e.value.message and "messages" not in e.value.message


def test_401_before_400_for_malformed_json_without_a_key(env):
    r = post(env, "/v1/chat/completions", b'{"model": ', key=False)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_429_retry_after_and_ratelimit_headers(env):
    import re

    k, _ = env["store"].create_key("limited", rpm=2, tpm=1000)
    c = openai.OpenAI(base_url=env["url"] + "/v1", api_key=k, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=user(), max_tokens=2)
    h = raw.headers
    assert h["x-ratelimit-limit-requests"] == "2" and h["x-ratelimit-remaining-requests"] == "1"
    assert h["x-ratelimit-limit-tokens"] == "1000" and 0 < int(h["x-ratelimit-remaining-tokens"]) < 1000
    assert re.fullmatch(r"\d+s", h["x-ratelimit-reset-requests"]) and re.fullmatch(r"\d+s", h["x-ratelimit-reset-tokens"])
    c.chat.completions.create(model=MODEL, messages=user(), max_tokens=2)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model=MODEL, messages=user(), max_tokens=2)
    resp = e.value.response
    wait = int(resp.headers["retry-after"])
    assert f"Try again in {wait}s." in e.value.message and 1 <= wait <= 60
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"


# --- role order as OpenAI accepts it -----------------------------------------------------------------------
def test_same_role_turns_are_merged_and_assistant_may_come_first(client):
    kw = dict(model=MODEL, max_tokens=6, temperature=0)
    two = client.chat.completions.create(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], **kw)
    one = client.chat.completions.create(messages=[{"role": "user", "content": "a\n\nb"}], **kw)
    assert two.usage.prompt_tokens == one.usage.prompt_tokens
    assert two.choices[0].message.content == one.choices[0].message.content
    r = client.chat.completions.create(messages=[{"role": "assistant", "content": "Hi, how can I help?"},
                                                 {"role": "user", "content": "x"}], **kw)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_a_declared_body_over_the_limit_is_read_to_the_end_before_the_413():
    """Bytes left unread when the server closes make the kernel reset the connection, and the
    reset can throw the 413 away before the client reads it: a declared body up to twice the
    limit is read (and dropped) to its end first; beyond that the connection is closed early."""
    import asyncio

    from glassgpt.serve.api import BodyLimit

    limit, chunk = 1000, 100

    def run(total):
        left, sent = [total], []

        async def receive():
            n = min(chunk, left[0])
            left[0] -= n
            return {"type": "http.request", "body": b"x" * n, "more_body": left[0] > 0}

        async def send(msg):
            sent.append(msg)

        async def app(scope, receive, send):  # never reached: the body is refused first
            raise AssertionError

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(total).encode())]}
        asyncio.run(BodyLimit(app, limit)(scope, receive, send))
        return left[0], sent[0]["status"]

    assert run(1500) == (0, 413)  # read to the end: a clean 413
    unread, status = run(10 * limit)
    assert status == 413 and unread >= 10 * limit - 2 * limit - chunk  # a huge body is not read through
