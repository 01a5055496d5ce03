"""Chat rendering, in one place: prompts for generation and training rows for chat sources.

    <|bos|> <|system_start|> … <|system_end|> <|user_start|> … <|user_end|>
            <|assistant_start|> … <|assistant_end|> <|user_start|> … …

A message is {'role': 'system'|'user'|'assistant', 'content': str or a list of parts}. A
part is {'type': 'text', 'text': …}, {'type': 'ids', 'ids': [...]} (tokens already
chosen, e.g. an answer spelled one character a token) or anything else, which is an image:
`n_image_tokens` copies of <|image|> for the vision encoder to fill.

Training rows put the loss on the assistant turns only: each assistant token and that
turn's <|assistant_end|> (the model must learn to stop), not <|assistant_start|> (the
renderer writes it) and nothing the system or user said.
"""

from __future__ import annotations

from glassgpt.errors import DataError

ROLES = ("system", "user", "assistant")

# The one default system prompt: chat SFT trains every conversation under it, so `glassgpt chat`,
# the API and the page must send the same text (a prompt the model never saw is out of distribution).
DEFAULT_SYSTEM = "You are glassgpt, a helpful assistant. Answer in the language of the question."


def with_system(messages: list[dict], system: str | None = DEFAULT_SYSTEM) -> list[dict]:
    """The conversation under `system` unless it already opens with a system message."""
    if not system or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system}] + list(messages)


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
