"""What the chat endpoint adds and refuses for an assistant: the default system prompt for a
chat-tuned model that was sent none, and an empty user message (400)."""

import pytest

from glassgpt.data.chat import DEFAULT_SYSTEM
from glassgpt.serve.api import chat_messages
from glassgpt.serve.engine import Engine
from glassgpt.serve.errors import ServeError
from glassgpt.serve.schema import ChatCompletionRequest
from glassgpt.serve.testing import tiny_checkpoint


@pytest.fixture(scope="module")
def engine():
    return Engine.from_checkpoint(tiny_checkpoint(), name="tiny", device="cpu", max_batch=1)


def req(*messages):
    return ChatCompletionRequest(model="tiny", messages=list(messages))


def test_chat_tuned_models_get_the_default_system_prompt(engine, monkeypatch):
    body = req({"role": "user", "content": "hi"})
    assert engine.stage == "base"
    assert [m["role"] for m in chat_messages(body, engine)] == ["user"]  # a base model: as sent
    monkeypatch.setattr(engine, "stage", "sft")
    out = chat_messages(body, engine)
    assert out[0] == {"role": "system", "content": [{"type": "text", "text": DEFAULT_SYSTEM}]}
    assert [m["role"] for m in out] == ["system", "user"]
    # a system prompt the client sends is kept, and nothing is added
    own = chat_messages(req({"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}), engine)
    assert [m["role"] for m in own] == ["system", "user"] and own[0]["content"][0]["text"] == "Be brief."


@pytest.mark.parametrize("content", ["", "   ", "\n\t ", [{"type": "text", "text": " "}]])
def test_empty_or_whitespace_user_message_is_400(engine, content):
    with pytest.raises(ServeError, match=r"messages\[1\]\.content: a user message must not be empty") as e:
        chat_messages(req({"role": "assistant", "content": "Hello."}, {"role": "user", "content": content}), engine)
    assert e.value.status == 400 and e.value.param == "messages[1].content"


def test_chat_tuned_models_get_dry_by_default_and_a_request_can_turn_it_off(engine, monkeypatch):
    from glassgpt.data.chat import DEFAULT_SAMPLING
    from glassgpt.serve.api import sampling_extras

    body = req({"role": "user", "content": "hi"})
    assert sampling_extras(body, engine, chat_request=True)["dry_multiplier"] == 0.0  # a base model: as sent
    monkeypatch.setattr(engine, "stage", "sft")
    assert sampling_extras(body, engine, chat_request=True)["dry_multiplier"] == DEFAULT_SAMPLING["dry_multiplier"] > 0
    assert sampling_extras(body, engine)["dry_multiplier"] == 0.0  # /v1/completions: raw text, nothing added
    off = ChatCompletionRequest(model="tiny", messages=[{"role": "user", "content": "hi"}], dry_multiplier=0)
    assert sampling_extras(off, engine, chat_request=True)["dry_multiplier"] == 0.0
    own = ChatCompletionRequest(model="tiny", messages=[{"role": "user", "content": "hi"}], dry_multiplier=2.5,
                                dry_base=1.5, dry_allowed_length=3)
    got = sampling_extras(own, engine, chat_request=True)
    assert (got["dry_multiplier"], got["dry_base"], got["dry_allowed_length"]) == (2.5, 1.5, 3)
