import os

import pytest

from glassgpt.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from glassgpt.errors import ConfigError

TEXTS = ["def f(x):\n    return x + 1\n", "héllo wörld 世界 🙂 " * 20, "for i in range(10):\n\tprint(i)\n"] * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS, 400)


def test_roundtrip_text(tok):
    for t in TEXTS[:3] + ["", " ", "\n\n\n", "<|bos|> is plain text here"]:
        assert tok.decode(tok.encode(t)) == t


def test_roundtrip_arbitrary_and_invalid_bytes(tok):
    samples = [os.urandom(n) for n in (1, 7, 300, 4096)] + [b"\xff\xfe", b"ok\x80\x81ok", "é".encode()[:1], b"\x00"]
    for b in samples:
        assert tok.decode_bytes(tok.encode_bytes(b)) == b


def test_special_tokens_reserved_and_chat(tok):
    assert all(tok.hf.token_to_id(s) is not None for s in SPECIAL_TOKENS)
    assert tok.encode("<|bos|>") != [tok.bos_id]  # user text can't forge a special token
    ids = tok.render_chat([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}], n_image_tokens=3)
    assert ids[0] == tok.bos_id and ids.count(tok.image_id) == 3 and ids[-1] == tok.special["<|assistant_start|>"]
    assert tok.token_byte_lengths[tok.bos_id] == 0


def test_save_load(tok, tmp_path):
    tok.save(tmp_path / "t.json")
    again = Tokenizer.load(tmp_path / "t.json")
    assert again.encode(TEXTS[1]) == tok.encode(TEXTS[1])


def test_vocab_too_small_for_specials():
    with pytest.raises(ConfigError, match="too small"):
        Tokenizer.train(TEXTS, 100)


def test_token_bytes_count_every_byte(tok):
    ids = tok.encode(TEXTS[1])
    assert int(tok.token_bytes(ids).sum()) == len(TEXTS[1].encode())
