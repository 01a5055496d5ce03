"""Chat rows in one place (glassgpt.data.chat): prompts for generation and training rows
whose loss is on the assistant turns only."""

import pytest

from glassgpt.data import chat
from glassgpt.data.tokenizer import Tokenizer
from glassgpt.errors import DataError

TEXTS = ["def f(x):\n    return x + 1\n", "You are terse. What is two plus two? Four. And three? Three."] * 30


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS, 320)


def sp(tok, name):
    return tok.special[f"<|{name}|>"]


def test_multi_turn_loss_is_on_assistant_turns_and_their_end_token(tok):
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is two plus two?"},
            {"role": "assistant", "content": "Four."},
            {"role": "user", "content": "And three?"},
            {"role": "assistant", "content": "Three."}]
    ids, trained = chat.training_row(tok, msgs)
    assert len(ids) == len(trained)
    learned = [i for i, keep in zip(ids, trained) if keep]
    end = sp(tok, "assistant_end")
    assert learned == tok.encode("Four.") + [end] + tok.encode("Three.") + [end]
    # <|assistant_start|> is written by the renderer, never learned; nothing of system or user is
    assert not any(keep for i, keep in zip(ids, trained) if i == sp(tok, "assistant_start"))
    assert tok.decode([i for i, keep in zip(ids, trained) if not keep]).count("three?") == 1
    # the generation prompt of the first three messages is exactly the row's prefix before "Four."
    prompt = chat.render(tok, msgs[:2])
    assert ids[: len(prompt)] == prompt and prompt[-1] == sp(tok, "assistant_start")
    x, y = chat.targets(ids, trained)
    assert len(x) == len(y) == len(ids) - 1
    assert [t for t in y if t != -1] == learned


def test_images_and_pre_tokenized_parts(tok):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]},
            {"role": "assistant", "content": [{"type": "ids", "ids": [5, 6, 7]}]}]
    ids, trained = chat.training_row(tok, msgs, n_image_tokens=4)
    assert ids.count(tok.image_id) == 4
    assert [i for i, keep in zip(ids, trained) if keep] == [5, 6, 7, sp(tok, "assistant_end")]
    # the tokenizer's render_chat is this renderer
    assert tok.render_chat(msgs[:1], True, 4) == chat.render(tok, msgs[:1], True, 4)


def test_bad_rows_are_one_line_errors(tok):
    with pytest.raises(DataError, match="unknown chat role 'robot'"):
        chat.render(tok, [{"role": "robot", "content": "x"}])
    with pytest.raises(DataError, match="assistant turn"):
        chat.training_row(tok, [{"role": "user", "content": "hi"}])
