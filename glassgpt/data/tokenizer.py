"""Byte-level BPE (trained with `tokenizers`), GPT-4 pre-split, chat special tokens.

Every byte 0..255 is a token of its own, so any byte string round-trips exactly: text
that is valid UTF-8 goes through the fast Rust encoder; bytes that are not are encoded
one byte-token each. Decoding maps tokens back to bytes ourselves (not through the
lossy UTF-8 decoder), so `decode_bytes(encode_bytes(b)) == b` for every b.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Regex, Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from glassgpt.errors import ConfigError, DataError

# cl100k's split: contractions, words with one leading non-letter, numbers in 1-3 digits,
# punctuation runs, newlines, and whitespace that does not eat the next word's space.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = [
    "<|bos|>",
    "<|pad|>",
    "<|system_start|>",
    "<|system_end|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|image|>",
]

_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (used by ByteLevel)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _pre_tokenizer():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


class Tokenizer:
    """A trained BPE with byte-exact encode/decode and chat rendering."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        hf.encode_special_tokens = True  # "<|bos|>" typed by a user is text, not a control token
        self.vocab_size = hf.get_vocab_size()
        self.special = {t: hf.token_to_id(t) for t in SPECIAL_TOKENS}
        if any(v is None for v in self.special.values()):
            raise DataError("tokenizer file lacks glassgpt's special tokens; retrain it")
        self.bos_id = self.special["<|bos|>"]
        self.special_names = {i: name for name, i in self.special.items()}
        # Declared in the saved tokenizer.json (a post-processor that puts <|bos|> first), so
        # that other libraries loading the file add the BOS a document starts with when asked
        # to add special tokens. glassgpt's own encode never adds it (add_special_tokens=False).
        hf.post_processor = processors.TemplateProcessing(
            single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", self.bos_id)])
        self.pad_id = self.special["<|pad|>"]
        self.image_id = self.special["<|image|>"]
        self._byte_id = [hf.token_to_id(BYTE_TO_CHAR[b]) for b in range(256)]
        # Bytes each token stands for (0 for specials): the denominator of bits per byte.
        self._token_bytes: list[bytes] = []
        special_ids = set(self.special.values())
        for i in range(self.vocab_size):
            tok = hf.id_to_token(i)
            self._token_bytes.append(b"" if i in special_ids else bytes(CHAR_TO_BYTE[c] for c in tok))
        self.token_byte_lengths = np.array([len(b) for b in self._token_bytes], dtype=np.int32)

    # --- training and persistence ---------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
        minimum = 256 + len(SPECIAL_TOKENS)
        if vocab_size < minimum:
            raise ConfigError(f"data.vocab_size={vocab_size} is too small: 256 byte tokens + {len(SPECIAL_TOKENS)} special tokens need at least {minimum}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = _pre_tokenizer()
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    def save(self, path: Path) -> None:
        tmp = Path(str(path) + ".tmp")
        self.hf.save(str(tmp))
        tmp.replace(path)

    def hf_config(self, model_max_length: int | None = None) -> dict:
        """What `tokenizer_config.json` says of this tokenizer (and the server's /tokenizer_info).

        <|bos|> is both BOS and EOS, as GPT-2's <|endoftext|> is both: documents are joined in
        training with only a <|bos|> between them, so it is what ends one (generation stops at
        it, and at a chat turn's <|assistant_end|>). Clients that take "BOS or else EOS" as
        the first token of a scored text (lm-eval's rolling windows, which read id 0 as no
        BOS) get <|bos|> either way."""
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|bos|>",
               "pad_token": "<|pad|>", "unk_token": None, "add_bos_token": True, "add_eos_token": False,
               "clean_up_tokenization_spaces": False,
               "added_tokens_decoder": {str(i): {"content": name, "special": True, "lstrip": False, "rstrip": False,
                                                 "normalized": False, "single_word": False}
                                        for i, name in sorted(self.special_names.items())}}
        if model_max_length:
            cfg["model_max_length"] = int(model_max_length)
        return cfg

    def save_hf_config(self, directory: Path, model_max_length: int | None = None) -> None:
        """tokenizer_config.json beside tokenizer.json, so `transformers.AutoTokenizer` (and
        lm-evaluation-harness with tokenizer=RUN_DIR) know the BOS and EOS."""
        path = Path(directory) / "tokenizer_config.json"
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(self.hf_config(model_max_length), indent=1) + "\n")
        tmp.replace(path)

    def encode_with_specials(self, text: str) -> list[int]:
        """Like encode, but a special token's name in the text is that token (as vLLM's and
        transformers' tokenizers read it): for /tokenize, where a client looks up the ids of
        `<|bos|>` and the like. The generation endpoints use encode: user text never forges a turn."""
        out: list[int] = []
        for i, piece in enumerate(_SPECIAL_SPLIT.split(text)):
            out += [self.special[piece]] if i % 2 else self.encode(piece)
        return out

    @classmethod
    def load(cls, path: Path) -> "Tokenizer":
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises plain Exceptions
            raise DataError(f"cannot load tokenizer {path}: {e}") from None

    # --- encoding ------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Plain text; special-token strings in it are encoded as ordinary text."""
        return self.hf.encode(text, add_special_tokens=False).ids if text else []

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def encode_bytes(self, data: bytes) -> list[int]:
        """Any bytes: valid UTF-8 runs through BPE, invalid bytes as single byte tokens."""
        out: list[int] = []
        while data:
            try:
                out += self.encode(data.decode("utf-8"))
                break
            except UnicodeDecodeError as e:
                out += self.encode(data[: e.start].decode("utf-8"))
                out += [self._byte_id[b] for b in data[e.start : e.end]]
                data = data[e.end :]
        return out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self._token_bytes[i] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, ids) -> np.ndarray:
        return self.token_byte_lengths[np.asarray(ids)]

    # --- chat --------------------------------------------------------------------
    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, n_image_tokens: int = 0) -> list[int]:
        """Chat messages → prompt ids (glassgpt.data.chat.render, the one renderer)."""
        from glassgpt.data import chat

        return chat.render(self, messages, add_generation_prompt, n_image_tokens)


def train_from_documents(docs: Iterator[str], vocab_size: int, max_bytes: int, extra=()) -> Tokenizer:
    """Train on the first max_bytes of the documents (enough for a small vocab), plus `extra` texts."""

    def limited():
        seen = 0
        for text in docs:
            yield text
            seen += len(text)
            if seen >= max_bytes:
                return

    return Tokenizer.train(itertools.chain(extra, limited()), vocab_size)
