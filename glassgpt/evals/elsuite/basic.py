"""Match, Includes, FuzzyMatch, JsonMatch: the reference's basic evals, same verdicts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .. import record
from ..errors import EvalError
from ..eval import Eval
from ..metrics import get_accuracy, get_bootstrap_accuracy_std
from ..prompt import is_chat_prompt
from .utils import check_match, f1_score, first_completion, fuzzy_match, get_answer


def _check(sample: Any, cls: str) -> None:
    if not isinstance(sample, dict) or "input" not in sample or "ideal" not in sample:
        raise EvalError(f"{cls}: a sample needs 'input' and 'ideal' keys, got {str(sample)[:120]}")


def accuracy_report(recorder) -> dict:
    events = recorder.get_events("match")
    std = get_bootstrap_accuracy_std(events)
    # "boostrap_std" is the reference's spelling, kept so its readers find the value
    return {"accuracy": get_accuracy(events), "bootstrap_std": std, "boostrap_std": std}


class Match(Eval):
    """Correct when the completion starts with an ideal answer (no normalisation, as in
    the reference). Few-shot examples are spliced in before the last chat message."""

    def __init__(self, completion_fns, samples_jsonl, *args, max_tokens: int = 500, num_few_shot: int = 0,
                 few_shot_jsonl: str | None = None, **kwargs):
        super().__init__(completion_fns, *args, samples_jsonl=samples_jsonl, **kwargs)
        self._require_fns(1, "Match")
        self.max_tokens = max_tokens
        self.num_few_shot = num_few_shot
        if num_few_shot > 0:
            if few_shot_jsonl is None:
                raise EvalError(f"{self.name}: num_few_shot > 0 needs few_shot_jsonl")
            from ..data import read_jsonl

            self.few_shot = read_jsonl(self._prefix_registry_path(few_shot_jsonl))

    def eval_sample(self, sample, rng):
        _check(sample, "Match")
        if not isinstance(sample["ideal"], (str, list)):
            raise EvalError("Match: 'ideal' must be a string or a list of strings")
        prompt = sample["input"]
        if self.num_few_shot > 0:
            if not is_chat_prompt(prompt):
                raise EvalError("Match: few-shot needs chat prompts")
            prompt = prompt[:-1]
            for s in self.few_shot[: self.num_few_shot]:
                prompt = prompt + s["sample"]
            prompt = prompt + sample["input"][-1:]
        sampled = first_completion(self.completion_fn(prompt=prompt, temperature=0.0))
        picked, correct, expected = check_match(sampled, sample["ideal"])
        record.record_match(correct, expected=expected, picked=picked, sampled=sampled, options=expected)
        return picked

    def run(self, recorder):
        self.eval_all_samples(recorder, self.get_samples())
        return accuracy_report(recorder)


class TestMatch(Match):
    """The reference's three built-in smoke-test samples."""

    def __init__(self, *args, **kwargs):
        kwargs.pop("samples_jsonl", None)
        super().__init__(*args, samples_jsonl="", **kwargs)

    def get_samples(self):
        sys_msg = {"role": "system", "content": "Complete the phrase as concisely as possible."}
        return [
            {"input": [sys_msg, {"role": "user", "content": "Once upon a "}], "ideal": "time"},
            {"input": [sys_msg, {"role": "user", "content": "The first US president was "}], "ideal": "George Washington"},
            {"input": [sys_msg, {"role": "user", "content": "OpenAI was founded in 20"}], "ideal": "15"},
        ]


class Includes(Eval):
    """Correct when any ideal answer occurs in the completion (optionally ignoring case)."""

    def __init__(self, completion_fns, samples_jsonl, ignore_case: bool = False, *args, **kwargs):
        super().__init__(completion_fns, *args, samples_jsonl=samples_jsonl, **kwargs)
        self._require_fns(1, "Includes")
        self.ignore_case = ignore_case

    def eval_sample(self, sample, rng):
        _check(sample, "Includes")
        sampled = first_completion(self.completion_fn(prompt=sample["input"]))
        ideal = sample["ideal"] if isinstance(sample["ideal"], list) else [sample["ideal"]]
        if not all(isinstance(i, str) for i in ideal):
            raise EvalError("Includes: 'ideal' must be a string or a list of strings")
        ok = any(get_answer(sampled, ref, self.ignore_case) is not None for ref in ideal)
        record.record_match(ok, expected=sample["ideal"], picked=sampled, sampled=sampled)
        return ok

    def run(self, recorder):
        self.eval_all_samples(recorder, self.get_samples())
        return accuracy_report(recorder)


class FuzzyMatch(Eval):
    """Normalised containment either way, plus token F1 against the best ideal."""

    def __init__(self, completion_fns, samples_jsonl, *args, max_tokens: int = 100, **kwargs):
        super().__init__(completion_fns, *args, samples_jsonl=samples_jsonl, **kwargs)
        self._require_fns(1, "FuzzyMatch")
        self.max_tokens = max_tokens

    def eval_sample(self, sample, rng):
        _check(sample, "FuzzyMatch")
        answers = sample["ideal"] if isinstance(sample["ideal"], list) else [sample["ideal"]]
        sampled = first_completion(self.completion_fn(prompt=sample["input"], temperature=0.0, max_tokens=self.max_tokens))
        matches = [fuzzy_match(sampled, a) for a in answers]
        record.record_match(True in matches, expected=answers, picked=[sampled for m in matches if m])
        record.record_metrics(accuracy=float(True in matches), f1_score=f1_score(sampled, answers))

    def run(self, recorder):
        self.eval_all_samples(recorder, self.get_samples())
        report = {"accuracy": float(np.mean(recorder.get_scores("accuracy"))),
                  "f1_score": float(np.mean(recorder.get_scores("f1_score")))}
        events = recorder.get_events("match")
        report["bootstrap_std"] = get_bootstrap_accuracy_std(events)
        return report


def json_match(sampled: Any, correct: Any) -> bool:
    """Structural equality; a missing value never matches."""
    if sampled is None or correct is None:
        return False
    if isinstance(sampled, dict):
        if not isinstance(correct, dict):
            return False
        return all(json_match(sampled.get(k), correct.get(k)) for k in set(sampled) | set(correct))
    if isinstance(sampled, list):
        if not isinstance(correct, list) or len(sampled) != len(correct):
            return False
        return all(json_match(s, c) for s, c in zip(sampled, correct))
    return sampled == correct


class JsonMatch(Eval):
    def __init__(self, completion_fns, samples_jsonl, *args, max_tokens: int = 512, **kwargs):
        super().__init__(completion_fns, *args, samples_jsonl=samples_jsonl, **kwargs)
        self._require_fns(1, "JsonMatch")
        self.max_tokens = max_tokens

    def eval_sample(self, sample, rng):
        _check(sample, "JsonMatch")
        answers = sample["ideal"] if isinstance(sample["ideal"], list) else [sample["ideal"]]
        sampled = first_completion(self.completion_fn(prompt=sample["input"], temperature=0.0, max_tokens=self.max_tokens))
        try:
            got = json.loads(sampled)
        except ValueError:
            got = None
        try:
            correct = [json.loads(a) for a in answers]
        except (ValueError, TypeError) as e:
            raise EvalError(f"JsonMatch: an ideal answer is not valid JSON: {e}") from None
        matches = [json_match(got, c) for c in correct]
        record.record_match(True in matches, expected=answers, picked=[sampled for m in matches if m])
        record.record_metrics(accuracy=float(True in matches))

    def run(self, recorder):
        self.eval_all_samples(recorder, self.get_samples())
        report = {"accuracy": float(np.mean(recorder.get_scores("accuracy")))}
        report["bootstrap_std"] = get_bootstrap_accuracy_std(recorder.get_events("match"))
        return report
