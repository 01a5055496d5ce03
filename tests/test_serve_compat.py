"""What third-party clients rely on: legacy logprobs exactly as OpenAI returns them, token-id
prompts taken as given, vLLM's tokenizer routes, usage details, and glassgpt's own client
scoring text through the server as an in-process forward pass scores it.

One server per module on 127.0.0.1 (a free port), serving the tiny checkpoint, with keys.
"""

import json
import re

import httpx
import openai
import pytest

from glassgpt.serve.api import create_app
from glassgpt.serve.engine import Engine
from glassgpt.serve.store import Store
from glassgpt.serve.testing import ServerThread, tiny_checkpoint

MODEL = "tiny"
TEXT = "ü😀 héllo wörld\nimport os"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("compat") / "serve.db")
    key, _ = store.create_key("tests")
    engine = Engine.from_checkpoint(tiny_checkpoint(), name=MODEL, device="cpu", max_batch=8)
    with ServerThread(create_app([engine], store)) as srv:
        yield {"url": srv.url, "key": key, "store": store, "engine": engine, "tok": engine.tokenizer}


@pytest.fixture
def client(env):
    return openai.OpenAI(base_url=env["url"] + "/v1", api_key=env["key"], max_retries=0, timeout=60)


def post(env, path, body, key=True):
    headers = {"authorization": f"Bearer {env['key']}"} if key else {}
    return httpx.post(env["url"] + path, json=body, headers=headers, timeout=60)


def token_bytes(name: str) -> bytes:
    """A legacy logprobs token back to its bytes (`bytes:\\xNN` or text)."""
    if name.startswith("bytes:"):
        return bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-f]{2})", name[6:]))
    return name.encode()


# --- legacy logprobs ------------------------------------------------------------------------------
def test_echo_first_token_null_and_partial_utf8_as_bytes(client, env):
    r = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=0, echo=True, logprobs=2)
    c = r.choices[0]
    lp = c.logprobs
    assert c.text == TEXT
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # as OpenAI: nothing to condition on
    assert all(isinstance(x, float) for x in lp.token_logprobs[1:])
    # The emoji is split across byte tokens here: each piece is named by its bytes, not U+FFFD.
    assert any(t.startswith("bytes:") for t in lp.tokens)
    assert not any("\ufffd" in t for t in lp.tokens)
    assert b"".join(token_bytes(t) for t in lp.tokens) == TEXT.encode()
    # Offsets are characters of the text, never past it; a whole token's text is found there.
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[-1] < len(c.text)
    for t, off in zip(lp.tokens, lp.text_offset):
        if not t.startswith("bytes:"):
            assert c.text[off:off + len(t)] == t
    assert r.usage.prompt_tokens == len(lp.tokens)


def test_top_logprobs_hold_the_chosen_token_and_never_collapse(client):
    r = client.completions.create(model=MODEL, prompt="def", max_tokens=12, temperature=1.5, seed=3, logprobs=1)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == r.usage.completion_tokens
    outside = 0
    for tok, tlp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top[tok] == tlp and 1 <= len(top) <= 2
        outside += len(top) == 2
    assert outside >= 1, "at temperature 1.5 some sampled token should be outside the top 1"
    r = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=4, echo=True, logprobs=5, temperature=0)
    tops = r.choices[0].logprobs.top_logprobs
    assert tops[0] is None and all(5 <= len(t) <= 6 for t in tops[1:])  # five distinct keys, plus the chosen one


def test_stream_logprobs_offsets_stay_in_the_text(client):
    chunks = list(client.completions.create(model=MODEL, prompt="x = ", max_tokens=10, temperature=0, logprobs=1,
                                            stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    offs = [o for c in chunks if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert offs and all(0 <= o <= len(text) for o in offs)


# --- token-id prompts, the tokenizer routes ----------------------------------------------------------
def test_token_id_prompt_is_taken_as_given(client, env):
    tok = env["tok"]
    ids = tok.encode("import os\nimport sys")
    as_text = client.completions.create(model=MODEL, prompt="import os\nimport sys", max_tokens=0, echo=True, logprobs=0)
    with_bos = client.completions.create(model=MODEL, prompt=[[tok.bos_id] + ids], max_tokens=0, echo=True, logprobs=0)
    bare = client.completions.create(model=MODEL, prompt=[ids], max_tokens=0, echo=True, logprobs=0)
    a, b, c = (x.choices[0].logprobs for x in (as_text, with_bos, bare))
    # The client's own BOS is the only one: the numbers are those of a text prompt (BOS added there).
    assert b.tokens[0] == "<|bos|>" and b.token_logprobs[0] is None
    assert b.token_logprobs[2:] == pytest.approx(a.token_logprobs[1:], abs=1e-5)
    assert with_bos.choices[0].text == "<|bos|>import os\nimport sys"
    assert with_bos.usage.prompt_tokens == len(ids) + 1 and bare.usage.prompt_tokens == len(ids)
    # Without a BOS the first token is unconditioned and the rest are conditioned differently.
    assert c.token_logprobs[0] is None and c.token_logprobs[1:] != pytest.approx(a.token_logprobs[1:], abs=1e-5)


def test_tokenize_detokenize_tokenizer_info(env, client):
    tok = env["tok"]
    r = post(env, "/tokenize", {"prompt": TEXT, "return_token_strs": True})
    assert r.status_code == 200
    body = r.json()
    assert body["tokens"] == [tok.bos_id] + tok.encode(TEXT) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == env["engine"].context_window and body["token_strs"][0] == "<|bos|>"
    assert post(env, "/tokenize", {"model": MODEL, "prompt": TEXT, "add_special_tokens": False}).json()["tokens"] == \
        tok.encode(TEXT)
    # A special token's name is that token here (how lm-eval finds the BOS id), plain text elsewhere.
    assert post(env, "/tokenize", {"prompt": "<|bos|>", "add_special_tokens": False}).json()["tokens"] == [tok.bos_id]
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]
    r = post(env, "/tokenize", {"model": MODEL, "messages": msgs})
    chat = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1)
    assert r.json()["count"] == chat.usage.prompt_tokens
    r = post(env, "/detokenize", {"tokens": [tok.bos_id] + tok.encode(TEXT)})
    assert r.status_code == 200 and r.json() == {"prompt": "<|bos|>" + TEXT}
    info = httpx.get(env["url"] + "/tokenizer_info", headers={"authorization": f"Bearer {env['key']}"}).json()
    assert info["bos_token"] == "<|bos|>" and info["eos_token"] == "<|bos|>"
    assert info["tokenizer_class"] and info["model_max_length"] == env["engine"].context_window


def test_tokenizer_routes_need_the_key_and_refuse_bad_input(env):
    for path, body in (("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [1]})):
        r = post(env, path, body, key=False)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(env["url"] + "/tokenizer_info").status_code == 401
    r = post(env, "/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "y"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = post(env, "/tokenize", {})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = post(env, "/detokenize", {"tokens": [10**9]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
    n = env["engine"].context_window * env["engine"].max_token_bytes * 4 + 1
    for body in ({"prompt": "x" * n}, {"messages": [{"role": "user", "content": "x" * n}]}):
        r = post(env, "/tokenize", body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = post(env, "/tokenize", {"model": "nope", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_run_directory_declares_bos_and_eos():
    run = tiny_checkpoint()
    cfg = json.loads((run / "tokenizer_config.json").read_text())
    assert cfg["bos_token"] == "<|bos|>" and cfg["eos_token"] == "<|bos|>"
    spec = json.loads((run / "tokenizer.json").read_text())
    assert spec["post_processor"]["single"][0]["SpecialToken"]["id"] == "<|bos|>"
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(run))
    assert (hf.bos_token, hf.eos_token) == ("<|bos|>", "<|bos|>")
    from glassgpt.data.tokenizer import Tokenizer

    tok = Tokenizer.load(run / "tokenizer.json")
    assert hf("import os").input_ids == [tok.bos_id] + tok.encode("import os")
    assert hf("import os", add_special_tokens=False).input_ids == tok.encode("import os")


# --- usage and the wording of errors ------------------------------------------------------------------
def test_usage_details_as_openai(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    r = client.completions.create(model=MODEL, prompt="hi", max_tokens=3)
    assert r.usage.prompt_tokens_details.cached_tokens == 0 and r.usage.completion_tokens_details.audio_tokens == 0
    last = list(client.completions.create(model=MODEL, prompt="hi", max_tokens=3, stream=True,
                                          stream_options={"include_usage": True}))[-1]
    assert last.usage.prompt_tokens_details.cached_tokens == 0


def test_context_length_wording_per_endpoint(client, env):
    n = env["engine"].context_window
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hello " * (n * 4), max_tokens=1)
    assert e.value.code == "context_length_exceeded" and e.value.param == "prompt"
    assert "prompt" in e.value.message and "messages" not in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=[[5] * n], max_tokens=1)
    assert e.value.param == "prompt" and "in the prompt" in e.value.message and "messages" not in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi " * n}], max_tokens=1)
    assert e.value.param == "messages" and "in the messages" in e.value.message


def test_429_on_tokens_retry_after_matches_message(env):
    k, _ = env["store"].create_key("tpm", tpm=40)
    c = openai.OpenAI(base_url=env["url"] + "/v1", api_key=k, max_retries=0)
    c.completions.create(model=MODEL, prompt="hi", max_tokens=30)
    with pytest.raises(openai.RateLimitError) as e:
        c.completions.create(model=MODEL, prompt="hi", max_tokens=30)
    wait = int(e.value.response.headers["retry-after"])
    assert f"Try again in {wait}s." in e.value.message and e.value.code == "rate_limit_exceeded"
    h = e.value.response.headers
    assert h["x-ratelimit-limit-tokens"] == "40" and re.fullmatch(r"\d+s", h["x-ratelimit-reset-tokens"])


# --- glassgpt's own client against the server ------------------------------------------------------------
@pytest.mark.parametrize("tokenize", [True, False], ids=["tokenize-route", "echo-alignment"])
def test_client_loglikelihood_equals_in_process(env, tokenize):
    from glassgpt.evals.completion_fns.local import LocalModelFn
    from glassgpt.evals.completion_fns.openai_compat import OpenAICompatFn

    reqs = [("ü😀 x =", " 1"), ("Grüße, 世界", " und so"), ("", "import os"), ("a😀", "😀b")]
    fn = OpenAICompatFn(MODEL, base_url=env["url"] + "/v1", api_key=env["key"])
    if not tokenize:
        fn._tokenize_ok = False  # as against an endpoint without /tokenize (OpenAI)
    local = LocalModelFn.from_run_dir(str(tiny_checkpoint()))
    got, want = fn.loglikelihood(reqs), local.loglikelihood(reqs)
    for (g, gg), (w, wg), (ctx, cont) in zip(got, want, reqs):
        if not tokenize and not ctx:
            continue  # OpenAI's first echoed token has no logprob: nothing to compare
        if not tokenize and ctx.endswith("😀") and cont.startswith("😀"):
            continue  # one token spans the boundary: only the tokenize route can split it as in-process
        assert g == pytest.approx(w, abs=1e-3), (ctx, cont)
        assert gg == wg
    assert fn._tokenize_ok is tokenize
