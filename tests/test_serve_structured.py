"""Structured outputs, tools, logit_bias, penalties, strict types and tool roles of the API,
against the tiny model (trained in-process) with a 512-token context so that whole JSON
answers fit."""

import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
import torch

from glassgpt.data import chat
from glassgpt.serve.api import create_app
from glassgpt.serve.engine import Engine, SamplingParams
from glassgpt.serve.testing import ServerThread, random_schema, tiny_checkpoint

MODEL = "tiny"


@pytest.fixture(scope="module")
def env():
    engine = Engine.from_checkpoint(tiny_checkpoint(seq_len=512), name=MODEL, device="cpu", max_batch=8)
    app = create_app([engine], None, auth=False)
    with ServerThread(app) as srv:
        yield {"url": srv.url, "engine": engine}


@pytest.fixture
def client(env):
    return openai.OpenAI(base_url=env["url"] + "/v1", api_key="none", max_retries=0, timeout=120)


def post(env, path, body, timeout=120):
    return httpx.post(env["url"] + path, json=body, timeout=timeout)


def user(text="hello"):
    return [{"role": "user", "content": text}]


def check_random_schemas(env, count: int) -> None:
    """`count` requests, each with its own random schema, 8 at a time (batched with each other
    and with unconstrained requests): every answer parses and validates, finish_reason "stop"."""
    rng = random.Random(1234)
    schemas = [random_schema(rng) for _ in range(count)]

    def ask(i):
        body = {"model": MODEL, "messages": user(f"Answer in JSON, number {i}."), "max_tokens": 400, "seed": i,
                "response_format": {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schemas[i]}}}
        if i % 10 == 0:  # an unconstrained request in the same batch
            r = post(env, "/v1/chat/completions", {"model": MODEL, "messages": user(), "max_tokens": 20, "seed": i})
            assert r.status_code == 200, r.text
        r = post(env, "/v1/chat/completions", body)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(count)))
    bad = []
    for i, ch in enumerate(results):
        try:
            jsonschema.validate(json.loads(ch["message"]["content"]), schemas[i])
            assert ch["finish_reason"] == "stop"
        except (ValueError, jsonschema.ValidationError, AssertionError) as e:
            bad.append((i, ch["finish_reason"], ch["message"]["content"][:200], str(e)[:200]))
    assert not bad, f"{len(bad)} of {count} failed: {bad[:3]}"


def test_random_schemas_always_validate(env):
    check_random_schemas(env, 40)


@pytest.mark.slow
def test_200_random_schemas_always_validate(env):
    """The issue's must-hold: 200 random schemas, 100% valid (about 35 s on 2 busy cores)."""
    check_random_schemas(env, 200)


def test_json_object_and_streaming_json_schema(env, client):
    r = client.chat.completions.create(model=MODEL, messages=user("json please"), max_tokens=400, seed=3,
                                       response_format={"type": "json_object"})
    ch = r.choices[0]  # any object: a small model may write keys until max_tokens cuts it
    assert ch.message.content.startswith("{")
    if ch.finish_reason == "stop":
        assert isinstance(json.loads(ch.message.content), dict)
    else:
        assert ch.finish_reason == "length"
    close = env["engine"].tokenizer.encode("}")[0]  # the bias and the grammar together: '{' then '}' at once
    r = client.chat.completions.create(model=MODEL, messages=user(), max_tokens=50, logit_bias={str(close): 100},
                                       response_format={"type": "json_object"})
    assert r.choices[0].message.content == "{}" and r.choices[0].finish_reason == "stop"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "y"]}},
              "required": ["a", "b"], "additionalProperties": False}
    text, reasons = "", []
    for chunk in client.chat.completions.create(
            model=MODEL, messages=user(), max_tokens=100, seed=4, stream=True,
            response_format={"type": "json_schema", "json_schema": {"name": "ab", "schema": schema}}):
        for c in chunk.choices:
            text += c.delta.content or ""
            reasons.append(c.finish_reason)
    jsonschema.validate(json.loads(text), schema)
    assert reasons[-1] == "stop"


def test_max_tokens_cuts_json_with_length(client):
    schema = {"type": "object", "properties": {"note": {"type": "string", "minLength": 10, "maxLength": 12}},
              "required": ["note"], "additionalProperties": False}
    r = client.chat.completions.create(model=MODEL, messages=user(), max_tokens=3, seed=1,
                                       response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    assert r.choices[0].message.content.startswith('{"')


def test_n_choices_each_follow_the_grammar(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "size": {"type": "integer", "minimum": 0,
              "maximum": 99}}, "required": ["ok", "size"], "additionalProperties": False}
    r = client.chat.completions.create(model=MODEL, messages=user(), max_tokens=60, seed=5, n=4, temperature=1.0,
                                       response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    assert len(r.choices) == 4
    for c in r.choices:
        jsonschema.validate(json.loads(c.message.content), schema)


# --- logit_bias and penalties ---------------------------------------------------------------------
def test_logit_bias_forces_and_bans_tokens(env, client):
    tok = env["engine"].tokenizer
    x = tok.encode("x")[0]
    r = client.chat.completions.create(model=MODEL, messages=user(), max_tokens=6, seed=1, temperature=1.0,
                                       logit_bias={str(x): 100})
    assert r.choices[0].message.content == "x" * 6
    r = client.completions.create(model=MODEL, prompt="def f", max_tokens=6, seed=1, logit_bias={str(x): 100})
    assert r.choices[0].text == "x" * 6
    greedy = client.completions.create(model=MODEL, prompt="def f", max_tokens=1, temperature=0, logprobs=0)
    first = tok.encode(greedy.choices[0].text)[0]
    banned = client.completions.create(model=MODEL, prompt="def f", max_tokens=1, temperature=0,
                                       logit_bias={str(first): -100})
    assert tok.encode(banned.choices[0].text)[0] != first


def penalized_greedy(model, prompt, n, presence, frequency):
    """OpenAI's formula by definition, on a full forward per token: logit[j] -= c[j] * frequency +
    (c[j] > 0) * presence, c counting the tokens generated so far."""
    x, counts = list(prompt), torch.zeros(model.cfg.vocab_size)
    with torch.no_grad():
        for _ in range(n):
            lg = model(torch.tensor([x]))[0, -1].float()
            lg = lg - counts * frequency - (counts > 0).float() * presence
            t = int(lg.argmax())
            x.append(t)
            counts[t] += 1
    return x[len(prompt):]


@pytest.mark.parametrize("presence,frequency", [(0.0, 0.0), (2.0, 0.0), (0.0, 1.5), (-1.0, 0.5)])
def test_penalties_match_openai_formula(env, presence, frequency):
    engine = env["engine"]
    tok = engine.tokenizer
    prompt = [tok.bos_id] + tok.encode("def def def")
    engine.end_ids, saved = set(), engine.end_ids  # count every token, end token included
    try:
        out = engine.generate(prompt, SamplingParams(max_tokens=24, temperature=0.0, presence_penalty=presence,
                                                     frequency_penalty=frequency))
    finally:
        engine.end_ids = saved
    got = [t.id for t in out["choices"][0]["tokens"]]
    assert got == penalized_greedy(engine.model, prompt, 24, presence, frequency)


def dry_greedy(model, prompt, n, mult, base, allowed):
    """DRY by its definition, quadratic and on a full forward per token: for every candidate t, the
    longest L such that the output's last L tokens occurred earlier in the output followed by t."""
    x, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            lg = model(torch.tensor([x]))[0, -1].float()
            for t in range(lg.numel()):
                best = 0
                for j in range(len(out) - 1):  # out[j + 1] followed an earlier stretch ending at j
                    if out[j + 1] != t:
                        continue
                    k = 0
                    while k <= j and out[j - k] == out[len(out) - 1 - k]:
                        k += 1
                    best = max(best, k)
                if best >= allowed:
                    lg[t] -= mult * base ** (best - allowed)
            t = int(lg.argmax())
            x.append(t)
            out.append(t)
    return out


def test_dry_matches_its_definition_and_breaks_loops(env):
    engine = env["engine"]
    tok = engine.tokenizer
    prompt = [tok.bos_id] + tok.encode("the the the")
    engine.end_ids, saved = set(), engine.end_ids
    try:
        plain = [t.id for t in engine.generate(prompt, SamplingParams(max_tokens=32, temperature=0.0))
                 ["choices"][0]["tokens"]]
        dry = [t.id for t in engine.generate(prompt, SamplingParams(max_tokens=32, temperature=0.0, dry_multiplier=0.8))
               ["choices"][0]["tokens"]]
    finally:
        engine.end_ids = saved
    assert dry == dry_greedy(engine.model, prompt, 32, 0.8, 1.75, 2)

    def longest_repeat(ids):  # the longest stretch that occurs twice
        return max((k for k in range(1, len(ids)) for i in range(len(ids) - k)
                    if any(ids[i:i + k] == ids[j:j + k] for j in range(i + 1, len(ids) - k + 1))), default=0)

    assert longest_repeat(dry) < longest_repeat(plain)


def test_penalties_change_the_output(client):
    plain = client.completions.create(model=MODEL, prompt="the the", max_tokens=24, temperature=0)
    pen = client.completions.create(model=MODEL, prompt="the the", max_tokens=24, temperature=0,
                                    frequency_penalty=2.0, presence_penalty=2.0)
    assert plain.choices[0].text != pen.choices[0].text
    again = client.completions.create(model=MODEL, prompt="the the", max_tokens=24, temperature=0,
                                      frequency_penalty=2.0, presence_penalty=2.0)
    assert again.choices[0].text == pen.choices[0].text


# --- tools ---------------------------------------------------------------------------------------
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                           "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                          "required": ["city"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"], "additionalProperties": False}}}


def check_call(call, tools):
    params = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), params[call.function.name])


def test_tool_choice_required_and_named(client):
    r = client.chat.completions.create(model=MODEL, messages=user("weather in Paris?"), tools=[WEATHER, CLOCK],
                                       tool_choice="required", max_tokens=120, seed=2)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None and ch.message.tool_calls
    for call in ch.message.tool_calls:
        check_call(call, [WEATHER, CLOCK])
    r = client.chat.completions.create(model=MODEL, messages=user("time?"), tools=[WEATHER, CLOCK],
                                       tool_choice={"type": "function", "function": {"name": "get_time"}},
                                       parallel_tool_calls=False, max_tokens=120, seed=3)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and len(ch.message.tool_calls) == 1
    assert ch.message.tool_calls[0].function.name == "get_time"
    check_call(ch.message.tool_calls[0], [CLOCK])


def test_tool_calls_stream_in_openai_shape(client):
    calls, reasons = {}, []
    with client.chat.completions.create(model=MODEL, messages=user("weather?"), tools=[WEATHER],
                                        tool_choice="required", parallel_tool_calls=False, max_tokens=120, seed=4,
                                        stream=True) as stream:
        for chunk in stream:  # parsed by the SDK's ChatCompletionChunk types
            for c in chunk.choices:
                reasons.append(c.finish_reason)
                for d in c.delta.tool_calls or []:
                    slot = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                    if d.id:
                        slot["id"] = d.id
                    if d.function and d.function.name:
                        slot["name"] += d.function.name
                    if d.function and d.function.arguments:
                        slot["arguments"] += d.function.arguments
    assert reasons[-1] == "tool_calls" and list(calls) == [0]
    assert calls[0]["id"].startswith("call_") and calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])


def test_tool_choice_auto_gives_text_or_valid_calls(env, client):
    lt = env["engine"].tokenizer.encode("<")[0]
    kinds = set()
    for seed in range(6):
        r = client.chat.completions.create(model=MODEL, messages=user("hi"), tools=[WEATHER], max_tokens=60, seed=seed,
                                           logit_bias={str(lt): 5} if seed % 2 else None)  # a call more likely
        ch = r.choices[0]
        if ch.message.tool_calls:
            kinds.add("call")
            assert ch.finish_reason == "tool_calls" and ch.message.content is None
            for call in ch.message.tool_calls:
                check_call(call, [WEATHER])
        else:
            kinds.add("text")
            assert not ch.message.content.startswith("<")
    assert kinds  # which one the model picks is its choice; both shapes are checked above


def test_tool_conversation_roles_accepted(env, client):
    msgs = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
            {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "and dry"}]}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, tools=[WEATHER], tool_choice="none", max_tokens=5)
    assert r.choices[0].finish_reason in ("stop", "length")
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "assistant", "content": "hi"}] + user(),
                                       max_tokens=3)
    assert r.usage.completion_tokens <= 3


def test_tool_turns_rendered_as_text(env):
    tok = env["engine"].tokenizer
    text = tok.decode(tok.render_chat([
        {"role": "system", "content": chat.tools_text([WEATHER["function"]])},
        {"role": "assistant", "content": [{"type": "text", "text": chat.tool_calls_text(
            [{"name": "get_weather", "arguments": '{"city": "Oslo"}'}])}]},
        {"role": "user", "content": chat.tool_result_text("rain", "get_weather", "call_9")}]))
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>' in text
    assert '<tool_result name="get_weather" id="call_9">rain</tool_result>' in text
    assert "get_weather: Weather in a city" in text
    assert chat.parse_tool_calls('<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call><tool_call>{"na') == \
        [{"name": "f", "arguments": '{"a": 1}'}]


# --- 400s ------------------------------------------------------------------------------------------
BAD = [
    ("/v1/chat/completions", {"logit_bias": {"abc": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"5": 101}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"999999": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"5": "x"}}, "logit_bias.5"),
    ("/v1/completions", {"logit_bias": {"-1": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"presence_penalty": 2.5}, "presence_penalty"),
    ("/v1/completions", {"frequency_penalty": -3}, "frequency_penalty"),
    ("/v1/chat/completions", {"dry_multiplier": -1}, "dry_multiplier"),
    ("/v1/completions", {"dry_base": 0.5}, "dry_base"),
    ("/v1/chat/completions", {"dry_allowed_length": 0}, "dry_allowed_length"),
    ("/v1/chat/completions", {"max_tokens": True}, "max_tokens"),
    ("/v1/chat/completions", {"stream": "yes"}, "stream"),
    ("/v1/chat/completions", {"temperature": "1"}, "temperature"),
    ("/v1/chat/completions", {"n": 2.0}, "n"),
    ("/v1/completions", {"prompt": [True, False]}, "prompt[0]"),
    ("/v1/completions", {"echo": 1}, "echo"),
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"best_of": 1, "n": 2}, "best_of"),
    ("/v1/chat/completions", {"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ("/v1/chat/completions", {"function_call": "auto"}, "function_call"),
    ("/v1/chat/completions", {"tool_choice": "auto"}, "tool_choice"),
    ("/v1/chat/completions", {"tool_choice": "sometimes", "tools": [WEATHER]}, "tool_choice"),
    ("/v1/chat/completions", {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ("/v1/chat/completions", {"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]},
     "tools[0].function.parameters"),
    ("/v1/chat/completions", {"response_format": {"type": "xml"}}, "response_format.type"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": 7}}}}}}, "response_format.json_schema.schema"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": None}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages[0].tool_calls"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
]


@pytest.mark.parametrize("path,extra,param", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_inputs_are_400_naming_the_param(env, path, extra, param):
    body = {"model": MODEL, "max_tokens": 2}
    body.update({"messages": user()} if path.endswith("chat/completions") else {"prompt": "hi"})
    body.update(extra)
    r = post(env, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if param is not None:
        assert err["param"] == param, err


def test_call_cut_by_max_tokens_is_text_with_length(client):
    kw = dict(model=MODEL, messages=user(), tools=[WEATHER], tool_choice="required", max_tokens=4)
    r = client.chat.completions.create(**kw)
    ch = r.choices[0]
    assert ch.finish_reason == "length" and not ch.message.tool_calls
    assert "<tool_call>".startswith(ch.message.content) or ch.message.content.startswith("<tool_call>")
    text, reasons = "", []
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            text += c.delta.content or ""
            reasons.append(c.finish_reason)
    assert text == ch.message.content and reasons[-1] == "length"


def test_sdk_parse_with_a_pydantic_model(client):
    """The SDK's structured-output helper: a pydantic model becomes a strict json_schema, and the
    SDK parses the answer back into the model."""
    from typing import Literal

    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=8)
        population: int = Field(ge=0, le=10_000_000)
        capital: bool
        climate: Literal["dry", "wet"]

    r = client.chat.completions.parse(model=MODEL, messages=user("a city"), response_format=City, max_tokens=120,
                                      seed=1)
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and r.choices[0].finish_reason == "stop"
