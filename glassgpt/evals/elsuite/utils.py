"""Text helpers with the reference's exact semantics (answer search, normalisation, F1)."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Optional

from ..prompt import chat_to_text, format_necessary, is_chat_prompt


def get_answer(text: str, answer: str, ignore_case: bool = False) -> Optional[str]:
    """The last occurrence of `answer` in `text`, or None."""
    idx = text.lower().rfind(answer.lower()) if ignore_case else text.rfind(answer)
    return None if idx == -1 else text[idx: idx + len(answer)]


_PUNCT = set(string.punctuation)


def normalize(s: str) -> str:
    """Lower case; drop punctuation, articles (a, an, the) and extra whitespace."""
    s = s.lower()
    s = "".join(c for c in s if c not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def fuzzy_match(s1: str, s2: str) -> bool:
    s1, s2 = normalize(s1), normalize(s2)
    if s1 == "" or s2 == "":
        return s1 == s2
    return s1 in s2 or s2 in s1


def f1_score(prediction: str, answers: list[str]) -> float:
    def one(pred: str, truth: str) -> float:
        p, t = normalize(pred).split(), normalize(truth).split()
        same = sum((Counter(p) & Counter(t)).values())
        if same == 0:
            return 0
        precision, recall = same / len(p), same / len(t)
        return 2 * precision * recall / (precision + recall)

    return max(one(prediction, a) for a in answers)


def check_match(sampled: str, expected, options=None, separator=None) -> tuple[Optional[str], bool, list]:
    """The first option the completion starts with; correct if it is an expected one."""
    if isinstance(expected, tuple):
        expected = list(expected)
    elif not isinstance(expected, list):
        expected = [expected]
    options = expected if options is None else options
    picked = None
    for opt in options:
        if not sampled.startswith(opt):
            continue
        if separator is not None and len(sampled) > len(opt) and not separator(sampled[len(opt)]):
            continue
        picked = opt
        break
    return picked, picked in expected, expected


class PromptFn:
    """A prompt template bound to a completion function (the reference's PromptFn)."""

    def __init__(self, prompt, completion_fn, max_tokens: int, temperature: float = 0, n_samples=None,
                 completion_kwargs: Optional[dict] = None):
        self.prompt = prompt
        self.completion_fn = completion_fn
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.n_samples = n_samples
        self.completion_kwargs = completion_kwargs or {}

    def __call__(self, **kwargs):
        kwargs = {k: chat_to_text(v, for_completion=False) if is_chat_prompt(v) else v for k, v in kwargs.items()}
        if is_chat_prompt(self.prompt):
            prompt = []
            for msg in self.prompt:
                msg = dict(msg)
                if "content" in msg:
                    msg["content"] = format_necessary(msg["content"], **kwargs)
                prompt.append(msg)
        else:
            prompt = format_necessary(self.prompt, **kwargs)
        result = self.completion_fn(prompt=prompt, max_tokens=self.max_tokens, temperature=self.temperature, top_p=1,
                                     frequency_penalty=0, presence_penalty=0,
                                     n=(1 if self.n_samples is None else self.n_samples), **self.completion_kwargs)
        return first_completion(result), prompt


def first_completion(result) -> str:
    from ..errors import CompletionError

    comps = result.get_completions()
    if not comps:
        raise CompletionError("the completion function returned no completions")
    if not isinstance(comps[0], str):
        raise CompletionError(f"the completion function returned a {type(comps[0]).__name__}, not text")
    return comps[0]
