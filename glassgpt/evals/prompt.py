"""Prompts: plain text or chat (a list of {"role", "content"} messages).

Same rendering rules as openai/evals, so a text model sees what the reference shows it.
"""

from __future__ import annotations

import copy
import string
from typing import Any


def is_chat_prompt(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)


_PREFIXES = {"system": "", "example_user": "User: ", "example_assistant": "Assistant: "}


def content_text(content) -> str:
    """A message's content as text: string content as is; content parts (text and
    image_url, as in vision evals) with each image shown as "<image>"."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") if p.get("type") == "text" else "<image>" for p in content or [])


def chat_to_text(prompt: list[dict], for_completion: bool = True) -> str:
    """Render chat messages as text: "Role: content" lines, ending in "Assistant:".

    A single message is returned as its bare content (as the reference does)."""
    if len(prompt) == 1:
        return content_text(prompt[0]["content"])
    text = ""
    for msg in prompt:
        role = msg.get("name", msg.get("role", "user"))
        prefix = _PREFIXES.get(role, role.capitalize() + ": ")
        text += f"{prefix}{content_text(msg['content'])}\n"
    if for_completion:
        text += "Assistant:"
    return text.lstrip()


def text_to_chat(prompt: str, role: str = "system") -> list[dict]:
    return [{"role": role, "content": prompt}]


def to_text(prompt) -> str:
    return chat_to_text(prompt) if is_chat_prompt(prompt) else str(prompt)


def to_chat(prompt) -> list[dict]:
    return prompt if is_chat_prompt(prompt) else text_to_chat(str(prompt))


def scrub_braces(prompt):
    """Escape { and } so a later str.format leaves the text alone."""
    prompt = copy.deepcopy(prompt)
    if is_chat_prompt(prompt):
        for msg in prompt:
            if isinstance(msg.get("content"), str):
                msg["content"] = msg["content"].replace("{", "{{").replace("}", "}}")
            elif isinstance(msg.get("content"), list):
                for part in msg["content"]:
                    if part.get("type") == "text":
                        part["text"] = part.get("text", "").replace("{", "{{").replace("}", "}}")
        return prompt
    return prompt.replace("{", "{{").replace("}", "}}")


def format_necessary(template: str, allow_missing: bool = False, **kwargs) -> str:
    """str.format with only the fields the template names (others are ignored)."""
    from .errors import EvalError

    keys = [k[1] for k in string.Formatter().parse(template) if k[1]]
    if allow_missing:
        cur = {k: kwargs.get(k, "{" + k + "}") for k in keys}
    else:
        missing = [k for k in keys if k not in kwargs]
        if missing:
            raise EvalError(
                f"prompt template needs {missing} but the sample has {sorted(kwargs)}; "
                "add those fields to the samples or fix the template"
            )
        cur = {k: kwargs[k] for k in keys}
    return template.format(**cur)


def format_prompt(prompt, allow_missing: bool = False, **kwargs):
    """Fill a text or chat template; chat-valued kwargs are rendered as text first."""
    kwargs = {k: chat_to_text(v, for_completion=False) if is_chat_prompt(v) else v for k, v in kwargs.items()}
    if is_chat_prompt(prompt):
        out = []
        for msg in prompt:
            msg = copy.copy(msg)
            if "content" in msg:
                msg["content"] = format_necessary(msg["content"], allow_missing=allow_missing, **kwargs)
            out.append(msg)
        return out
    return format_necessary(prompt, allow_missing=allow_missing, **kwargs)
