"""Chat rendering, in one place: prompts for generation and training rows for chat sources.

    <|bos|> <|system_start|> … <|system_end|> <|user_start|> … <|user_end|>
            <|assistant_start|> … <|assistant_end|> <|user_start|> … …

A message is {'role': 'system'|'user'|'assistant', 'content': str or a list of parts}. A
part is {'type': 'text', 'text': …}, {'type': 'ids', 'ids': [...]} (tokens already
chosen, e.g. an answer spelled one character a token) or anything else, which is an image:
`n_image_tokens` copies of <|image|> for the vision encoder to fill.

Tools are plain text inside these turns (no special tokens, so every checkpoint reads them):
the function list joins the system turn (`tools_text`), an assistant's calls are
`<tool_call>{"name": …, "arguments": {…}}</tool_call>` after its text (`tool_calls_text`),
and a tool's result is a user turn `<tool_result name="…" id="…">…</tool_result>`
(`tool_result_text`); `parse_tool_calls` reads calls back from generated text.

Training rows put the loss on the assistant turns only: each assistant token and that
turn's <|assistant_end|> (the model must learn to stop), not <|assistant_start|> (the
renderer writes it) and nothing the system or user said.
"""

from __future__ import annotations

import json
import re

from glassgpt.errors import DataError

ROLES = ("system", "user", "assistant")

# The one default system prompt: chat SFT trains every conversation under it, so `glassgpt chat`,
# the API and the page must send the same text (a prompt the model never saw is out of distribution).
DEFAULT_SYSTEM = "You are glassgpt, a helpful assistant. Answer in the language of the question."
# How a chat-tuned model is asked by default (the API when a request leaves it unset, `glassgpt chat`,
# the chat evals): DRY at llama.cpp's suggested strength, so a small model caught in a loop ("你养了一只养了
# 一只…") is pushed out of it; a repeat of two tokens or fewer is free (docs/assistant.md, "DRY").
DEFAULT_SAMPLING = {"dry_multiplier": 0.8}


def with_system(messages: list[dict], system: str | None = DEFAULT_SYSTEM) -> list[dict]:
    """The conversation under `system` unless it already opens with a system message."""
    if not system or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system}] + list(messages)


TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def tools_text(tools: list[dict]) -> str:
    """The functions a model may call, for the system turn. tools: [{'name', 'description',
    'parameters'}] (the `function` objects of OpenAI's `tools`)."""
    lines = ["You can call these functions. To call one, answer with "
             f'{TOOL_CALL_OPEN}{{"name": NAME, "arguments": {{...}}}}{TOOL_CALL_CLOSE} (one per call).']
    for t in tools:
        desc = f": {t['description']}" if t.get("description") else ""
        lines.append(f"- {t['name']}{desc} Parameters: {json.dumps(t.get('parameters') or {}, ensure_ascii=False)}")
    return "\n".join(lines)


def tool_calls_text(calls: list[dict]) -> str:
    """An assistant's calls as text; calls: [{'name', 'arguments'}], arguments a JSON string
    (as OpenAI sends them) or an object."""
    out = []
    for c in calls:
        args = c.get("arguments") or "{}"
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except ValueError:  # a client's malformed arguments are shown as the string they sent
            pass
        out.append(TOOL_CALL_OPEN + json.dumps({"name": c.get("name", ""), "arguments": args}, ensure_ascii=False)
                   + TOOL_CALL_CLOSE)
    return "".join(out)


def tool_result_text(content: str, name: str | None = None, call_id: str | None = None) -> str:
    attrs = "".join(f' {k}="{v}"' for k, v in (("name", name), ("id", call_id)) if v)
    return f"<tool_result{attrs}>{content}</tool_result>"


_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.S)


def parse_tool_calls(text: str) -> list[dict]:
    """[{'name', 'arguments' (a JSON string)}] of every complete call in `text`, in order."""
    calls = []
    for m in _CALL.finditer(text):
        try:
            c = json.loads(m.group(1))
        except ValueError:
            continue
        if isinstance(c, dict) and isinstance(c.get("name"), str):
            calls.append({"name": c["name"], "arguments": json.dumps(c.get("arguments", {}), ensure_ascii=False)})
    return calls


def _render(tok, messages: list[dict], n_image_tokens: int) -> tuple[list[int], list[bool]]:
    """(ids, trained): trained[i] says whether ids[i] is a target of the loss."""
    ids, trained = [tok.bos_id], [False]
    for m in messages:
        role = m.get("role")
        if role not in ROLES:
            raise DataError(f"unknown chat role {role!r}; expected one of {', '.join(ROLES)}")
        body = []
        content = m.get("content", "")
        for p in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            kind = p.get("type")
            if kind == "text":
                body += tok.encode(p.get("text", ""))
            elif kind == "ids":
                body += list(p["ids"])
            else:
                body += [tok.image_id] * n_image_tokens
        learn = role == "assistant"
        ids += [tok.special[f"<|{role}_start|>"]] + body + [tok.special[f"<|{role}_end|>"]]
        trained += [False] + [learn] * (len(body) + 1)
    return ids, trained


def render(tok, messages: list[dict], add_generation_prompt: bool = True, n_image_tokens: int = 0) -> list[int]:
    """Prompt ids; with add_generation_prompt, ending in <|assistant_start|> for the model to answer."""
    ids, _ = _render(tok, messages, n_image_tokens)
    return ids + [tok.special["<|assistant_start|>"]] if add_generation_prompt else ids


def training_row(tok, messages: list[dict], n_image_tokens: int = 0) -> tuple[list[int], list[bool]]:
    """(ids, trained) of a whole conversation; trained marks assistant tokens and their end token."""
    if not any(m.get("role") == "assistant" for m in messages):
        raise DataError("a chat training row needs at least one assistant turn to learn from")
    return _render(tok, messages, n_image_tokens)


def targets(ids: list[int], trained: list[bool]) -> tuple[list[int], list[int]]:
    """Inputs and targets of one row: x = ids[:-1], y[i] = ids[i + 1] where that token is
    trained, else -1 (the loss ignores it)."""
    return ids[:-1], [t if keep else -1 for t, keep in zip(ids[1:], trained[1:])]
