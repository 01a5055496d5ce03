"""Constrained decoding: structured outputs (JSON, JSON Schema) and tool calls.

A request that asks for `response_format` json_object / json_schema, or for a tool call,
carries a grammar. The engine keeps one matcher per sequence (the n choices of a request
each get a copy) and, in its sampling step, sets the logits of every token the grammar
forbids at that point to -inf, then tells the matcher which token was sampled. The
sequence ends with finish_reason "stop" as soon as the grammar is complete (nothing can
follow: a JSON value's closing brace) or when the model picks the end token where the
grammar allows it; max_tokens still cuts it ("length"), as OpenAI does.

The grammar library is llguidance: of the three maintained libraries measured by
`bench/structured_overhead.py` (llguidance, xgrammar, outlines-core) it is the one whose
answers always validated, at a per-token cost of a few percent of a decode step and a few
milliseconds to compile a schema (docs/serving.md has the numbers). Its tokenizer view is built once per engine from glassgpt's own vocabulary: every
token's bytes (the byte-level BPE maps each id to bytes exactly), special tokens marked as
such, and <|assistant_end|> as the end token.

Tool calls are plain text in the chat (glassgpt.data.chat renders them): a call is
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. The grammars for tools are Lark
grammars over that text with the call's JSON Schema inlined (`%json`).
"""

from __future__ import annotations

import json

import torch

from glassgpt.data.chat import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from glassgpt.serve.errors import ServeError

# JSON as the grammar writes it: no free whitespace (a small model would pad with spaces and
# newlines until max_tokens), the separators of json.dumps.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _llg():
    try:
        import llguidance
    except ImportError:  # pragma: no cover - a dependency; the message says what to do
        raise ServeError("structured outputs need the llguidance package: pip install llguidance", status=500) from None
    return llguidance


class Grammars:
    """The grammar library's view of one engine's tokenizer; builds matchers for requests."""

    def __init__(self, tokenizer, end_id: int):
        llg = _llg()
        names = {v: k for k, v in tokenizer.special.items()}

        class View:  # what llguidance's TokenizerWrapper reads
            eos_token_id = end_id
            bos_token_id = tokenizer.bos_id
            # Special tokens stand for no text; llguidance marks them with a leading 0xFF byte.
            tokens = [b"\xff" + names[i].encode() if i in names else tokenizer.decode_bytes([i])
                      for i in range(tokenizer.vocab_size)]
            special_token_ids = sorted(names)

            def __call__(self, data: bytes) -> list[int]:
                return tokenizer.encode_bytes(data)

        self.vocab_size = tokenizer.vocab_size
        self.tokenizer = llg.LLTokenizer(llg.TokenizerWrapper(View()))

    def json_schema(self, schema: dict | None, param: str) -> str:
        """A grammar for one JSON value matching `schema` (None: any JSON object)."""
        return _lark("start: " + _json_rule(schema, param))

    def tool_grammar(self, tools: list[dict], choice: str, text_schema: dict | None = None,
                     text_json: bool = False, parallel: bool = True) -> str:
        """choice 'required': one or more calls of the given functions (`tools`: [{'name',
        'parameters'}], one entry for a named choice); 'auto': a text answer or calls. A text
        answer may not begin with '<' (so the first character decides which it is) or, with
        a JSON response_format, is that JSON."""
        call = {"anyOf": [{"type": "object", "properties": {"name": {"const": t["name"]},
                                                            "arguments": t.get("parameters") or {"type": "object"}},
                           "required": ["name", "arguments"], "additionalProperties": False} for t in tools]}
        rules = [f"calls: call{'+' if parallel else ''}",
                 f'call: {json.dumps(TOOL_CALL_OPEN)} {_json_rule(call, "tools")} {json.dumps(TOOL_CALL_CLOSE)}']
        if choice == "required":
            start = "start: calls"
        else:
            text = _json_rule(text_schema, "response_format") if text_json else "TEXT"
            start = f"start: {text} | calls"
            rules.append(r"TEXT: /[^<][\s\S]*/")
        return _lark("\n".join([start] + rules) + "\n")

    def matcher(self, grammar: str, param: str) -> "Constraint":
        llg = _llg()
        m = llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if m.is_error():
            raise ServeError(f"Invalid schema for '{param}': {m.get_error()[:300]}", param=param, code="invalid_value")
        return Constraint(m, self.vocab_size)


def _json_rule(schema: dict | None, param: str) -> str:
    if schema is not None and not isinstance(schema, dict):
        raise ServeError(f"'{param}' must hold a JSON Schema object.", param=param, code="invalid_value")
    schema = {"type": "object"} if schema is None else dict(schema)
    schema["x-guidance"] = JSON_STYLE  # the compiler's options: ours, whatever the schema says
    return "%json " + json.dumps(schema)


def _lark(text: str) -> str:
    return _llg().LLMatcher.grammar_from_lark(text)


class Constraint:
    """One sequence's place in its grammar."""

    def __init__(self, matcher, vocab_size: int):
        self.m, self.vocab_size = matcher, vocab_size

    def fork(self) -> "Constraint":
        return Constraint(self.m.deep_copy(), self.vocab_size)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """logits with every token the grammar forbids next set to -inf."""
        # One byte per token (0: forbidden), computed by the library without the GIL.
        banned = torch.frombuffer(bytearray(self.m.compute_logit_bias()), dtype=torch.uint8)[: self.vocab_size] == 0
        if logits.numel() > self.vocab_size:  # rows past the tokenizer's vocabulary are never allowed
            banned = torch.nn.functional.pad(banned, (0, logits.numel() - self.vocab_size), value=True)
        return logits.masked_fill(banned.to(logits.device), float("-inf"))

    def accept(self, token: int) -> bool:
        """Advance past the sampled token; False if the grammar refused it (cannot happen
        after `mask` unless every token was masked, which a valid grammar never does)."""
        return bool(self.m.consume_token(token))

    @property
    def complete(self) -> bool:
        """Nothing more may follow (the value is closed): the sequence is done."""
        return self.m.is_stopped()
