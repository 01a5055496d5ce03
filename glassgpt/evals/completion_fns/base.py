"""Completion functions: the thing being evaluated (or grading).

Same protocol as openai/evals: `fn(prompt, **kwargs) -> result` with
`result.get_completions() -> list[str]`; `prompt` is text or chat messages.
Optional extras glassgpt uses when present:

- `loglikelihood(requests) -> [(logp, is_greedy)]` for (context, continuation) pairs:
  scores multiple choice and bits per byte on base models (lm-evaluation-harness style).
- `price`: USD per 1K prompt / completion tokens, for the report's cost line.
- `cache_id`: a stable name of the model, for the on-disk response cache.
"""

from __future__ import annotations

import abc
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import EvalError
from ..prompt import content_text, is_chat_prompt, to_text
from ..record import record_sampling


class CompletionResult:
    def __init__(self, completions: list[str], usage: Optional[dict] = None, raw: Any = None, prompt: Any = None):
        self.completions = list(completions)
        self.usage = usage
        self.raw = raw
        self.prompt = prompt

    def get_completions(self) -> list[str]:
        return self.completions


class CompletionFn(abc.ABC):
    name: str = "completion_fn"
    cache_id: Optional[str] = None
    price: Optional[dict] = None  # {"prompt": usd_per_1k, "completion": usd_per_1k}

    @abc.abstractmethod
    def __call__(self, prompt, **kwargs) -> CompletionResult:
        """Complete `prompt` (text or chat messages)."""


def prompt_key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _approx_usage(prompt, completions: list[str]) -> dict:
    p = len(to_text(prompt).split())
    c = sum(len(x.split()) for x in completions)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


class ScriptedCompletionFn(CompletionFn):
    """Deterministic answers for tests and benchmarks.

    Looks the prompt up in `responses` (keyed by `prompt_key(prompt)`, or by the prompt's
    text rendering), else calls `fn(prompt, **kwargs)`, else returns `default`.
    `delay` seconds of sleep simulate a network round trip."""

    def __init__(self, responses: Optional[dict] = None, fn: Optional[Callable] = None, default: str = "",
                 delay: float = 0.0, name: str = "scripted", echo: bool = False, loglikelihood_fn: Optional[Callable] = None):
        self.responses = dict(responses or {})
        self.fn = fn
        self.default = default
        self.delay = float(delay)
        self.name = name
        self.cache_id = name
        self.echo = echo
        self.calls = 0
        self._ll = loglikelihood_fn
        if loglikelihood_fn is None:
            self.loglikelihood = None  # type: ignore[assignment]

    def answer(self, prompt, **kwargs) -> str:
        key = prompt_key(prompt)
        if key in self.responses:
            return self.responses[key]
        text = to_text(prompt)
        if text in self.responses:
            return self.responses[text]
        if self.fn is not None:
            return self.fn(prompt, **kwargs)
        if self.echo:
            return content_text(prompt[-1]["content"]) if is_chat_prompt(prompt) else text
        return self.default

    def __call__(self, prompt, **kwargs) -> CompletionResult:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        n = int(kwargs.get("n") or 1)
        out = self.answer(prompt, **kwargs)
        completions = list(out) if isinstance(out, list) else [out] * n
        usage = _approx_usage(prompt, completions)
        record_sampling(prompt=prompt, sampled=completions, model=self.name, usage=usage)
        return CompletionResult(completions, usage=usage, prompt=prompt)

    def loglikelihood(self, requests):  # replaced by None when no fn was given
        return [self._ll(c, x) for c, x in requests]


def load_scripted(spec: str, **kwargs) -> ScriptedCompletionFn:
    """`scripted`, `scripted:echo`, `scripted:const:TEXT`, `scripted:file:PATH`.

    A file is JSONL of {"prompt": <text or chat>, "completion": "..."} lines."""
    delay = float(kwargs.pop("delay", 0.0))
    default = str(kwargs.pop("default", ""))
    _, _, rest = spec.partition(":")
    if rest == "" or rest == "const":
        return ScriptedCompletionFn(default=default, delay=delay, name=spec)
    if rest == "echo":
        return ScriptedCompletionFn(echo=True, delay=delay, name=spec)
    mode, _, arg = rest.partition(":")
    if mode == "const":
        return ScriptedCompletionFn(default=arg, delay=delay, name=spec)
    if mode == "file":
        from ..data import read_jsonl

        rows = read_jsonl(Path(arg))
        table = {}
        for i, r in enumerate(rows):
            if not isinstance(r, dict) or "prompt" not in r or "completion" not in r:
                raise EvalError(f"{arg}:{i + 1}: scripted lines need 'prompt' and 'completion'")
            table[prompt_key(r["prompt"])] = r["completion"]
        return ScriptedCompletionFn(responses=table, default=default, delay=delay, name=spec)
    raise EvalError(f"unknown scripted completion function '{spec}'; use scripted, scripted:echo, "
                    "scripted:const:TEXT or scripted:file:PATH")


def cache_key(model: str, prompt, kwargs: dict) -> str:
    blob = json.dumps({"model": model, "prompt": prompt, "args": kwargs}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
