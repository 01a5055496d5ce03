"""ModelBasedClassify: a grader model reads the completion and picks a choice string.

The last completion function is the grader (as in the reference); the others are
evaluated. A grade that matches no choice string is recorded as "__invalid__" and
scores the lowest choice score.
"""

from __future__ import annotations

import copy
import logging
import string
from collections import Counter
from typing import Any, Optional, Union

from .. import record
from ..errors import EvalError
from ..eval import Eval
from ..prompt import format_necessary, format_prompt, scrub_braces
from .utils import PromptFn

log = logging.getLogger(__name__)

INVALID_STR = "__invalid__"

ANSWER_PROMPTS = {
    "classify": "Answer the question by printing only a single choice from {choices} (without quotes or punctuation) corresponding to the correct answer with no other text.",
    "classify_cot": "First, answer by printing a single choice from {choices} (without quotes or punctuation) corresponding to the correct answer. Then, from the next line, explain your reasonings step by step.",
    "cot_classify": "First, write out in a step by step manner your reasoning to be sure that your conclusion is correct. Avoid simply stating the correct answer at the outset. Then print only a single choice from {choices} (without quotes or punctuation) on its own line corresponding to the correct answer. At the end, repeat just the answer by itself on a new line.\n\nReasoning:",
    "cot_classify_jp": "まず、一歩一歩あなたの推論を書き出してください。単に正しい答えを最初に述べることを避けてください。次に、{choices}（引用符や句読点なし）から正しい答えに対応する1つの選択肢を単独の行に書きだしてください。最後に、答えだけを新しい行に繰り返してください。\n\n推論：",
}

MATCH_FNS = {
    "include": lambda x, y: float(x in y),
    "exact": lambda x, y: float(x == y),
    "endswith": lambda x, y: x.endswith(y),
    "starts_or_endswith": lambda x, y: x.startswith(y) or x.endswith(y),
}


def get_choice_strings(choice_strings: Union[list, str], n: Optional[int] = None) -> list:
    if choice_strings == "from_n":
        choice_strings = [str(i + 1) for i in range(n)]
    elif choice_strings == "from_n_abc":
        choice_strings = [string.ascii_lowercase[i % 26] for i in range(n)]
    elif choice_strings == "from_n_ABC":
        choice_strings = [string.ascii_uppercase[i % 26] for i in range(n)]
    choice_strings = list(choice_strings)  # "ABCDE" -> ["A", ..., "E"], as iterating does in the reference
    for s in choice_strings:
        if any(c in s for c in string.punctuation):
            raise EvalError(f"choice string {s!r} contains punctuation")
    return choice_strings


def choice_to_str(choice_strings) -> str:
    return " or ".join(f'"{c}"' for c in choice_strings)


def get_choice(text: str, eval_type: str, match_fn, choice_strings) -> str:
    """First line (last line for cot_classify) that matches a choice, punctuation removed."""
    if isinstance(match_fn, str):
        match_fn = MATCH_FNS[match_fn]
    lines = text.strip().split("\n")
    if eval_type.startswith("cot_classify"):
        lines = lines[::-1]
    for line in lines:
        line = "".join(c for c in line.strip() if c not in string.punctuation)
        if not line:
            continue
        for choice in choice_strings:
            if match_fn(line, choice):
                return choice
    log.info("grade %r matches none of %s (%s)", text[:80], choice_strings, eval_type)
    return INVALID_STR


def get_choice_score(choice: str, choice_strings, choice_scores=None) -> Optional[float]:
    if choice_scores is None:
        return None
    if choice_scores == "from_strings":
        choice_scores = {c: float(c) for c in choice_strings}
    if choice == INVALID_STR:
        return min(choice_scores.values())
    return choice_scores[choice]


def append_answer_prompt(prompt: list, eval_type: str, choice_strings) -> list:
    if eval_type not in ANSWER_PROMPTS:
        raise EvalError(f"unknown modelgraded eval_type {eval_type!r} (known: {sorted(ANSWER_PROMPTS)})")
    answer = format_prompt(ANSWER_PROMPTS[eval_type], choices=choice_to_str(choice_strings))
    prompt[-1]["content"] += "\n\n" + answer
    return prompt


def classify(mg, completion_fn, completion_kwargs=None, format_kwargs=None, eval_type=None, n=None, match_fn=None):
    completion_kwargs = completion_kwargs or {}
    format_kwargs = format_kwargs or {}
    choice_strings = get_choice_strings(mg.choice_strings, n=n)
    prompt = copy.deepcopy(mg.prompt)
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if eval_type:
        prompt = append_answer_prompt(prompt, eval_type, choice_strings)
    evaluation, prompt = PromptFn(prompt, completion_fn=completion_fn, **completion_kwargs)(n=n, **format_kwargs)
    kind = mg.eval_type or eval_type or "classify"
    choice = get_choice(evaluation, kind, match_fn or "starts_or_endswith", choice_strings)
    score = get_choice_score(choice, choice_strings, mg.choice_scores)
    return choice, {"score": score, "sampled": [evaluation], "prompt": prompt, "invalid_choice": choice == INVALID_STR}


def concat_n_completions(completions: list, template_i: str) -> str:
    out = ""
    for i, c in enumerate(completions):
        out += format_necessary(template_i, i=i + 1, i_abc=string.ascii_lowercase[i % 26],
                                i_ABC=string.ascii_uppercase[i % 26], output=c, n=len(completions))
    return out.strip()


class ModelBasedClassify(Eval):
    def __init__(self, completion_fns, modelgraded_spec: str, *args, modelgraded_spec_args: Optional[dict] = None,
                 sample_kwargs: Optional[dict] = None, eval_kwargs: Optional[dict] = None,
                 multicomp_n: Union[int, str] = 1, eval_type: Optional[str] = None, match_fn: Optional[str] = None,
                 metaeval: bool = False, **kwargs):
        super().__init__(completion_fns, *args, **kwargs)
        if not self.completion_fns:
            raise EvalError("ModelBasedClassify needs at least one completion function")
        self.eval_completion_fn = self.completion_fns[-1]
        if len(self.completion_fns) > 1:
            self.completion_fns = self.completion_fns[:-1]
        n_models = len(self.completion_fns)
        self.sample_kwargs = {"max_tokens": 1024, **(sample_kwargs or {})}
        self.eval_kwargs = {"max_tokens": 1024, **(eval_kwargs or {})}
        self.metaeval = metaeval
        self.modelgraded_spec_args = modelgraded_spec_args or {}
        self.eval_type = eval_type
        self.match_fn = match_fn
        if match_fn is not None and match_fn not in MATCH_FNS:
            raise EvalError(f"unknown match_fn {match_fn!r} (known: {sorted(MATCH_FNS)})")
        if multicomp_n == "from_models":
            if n_models < 2:
                raise EvalError("multicomp_n: from_models needs two or more evaluated completion functions")
            self.multicomp_n = n_models
        else:
            self.multicomp_n = int(multicomp_n)
        if n_models > 1 and self.multicomp_n != n_models:
            raise EvalError(f"multicomp_n={self.multicomp_n} but {n_models} completion functions are evaluated")
        if self.registry is None:
            raise EvalError("ModelBasedClassify needs a registry for its modelgraded spec")
        self.mg = self.registry.get_modelgraded_spec(modelgraded_spec)

    def _policy(self, prompt) -> str:
        if self.multicomp_n > 1:
            if not self.mg.output_template:
                raise EvalError(f"modelgraded spec {self.mg.key} needs output_template for multicomp_n > 1")
            outs = []
            for i in range(self.multicomp_n):
                fn = self.completion_fns[i] if len(self.completion_fns) > 1 else self.completion_fns[0]
                outs.append(PromptFn(prompt, completion_fn=fn, **self.sample_kwargs)()[0])
            return concat_n_completions(outs, self.mg.output_template)
        return PromptFn(prompt, completion_fn=self.completion_fn, **self.sample_kwargs)()[0]

    def eval_sample(self, test_sample: dict, rng) -> str:
        if not isinstance(test_sample, dict):
            raise EvalError("ModelBasedClassify: samples must be JSON objects")
        test_sample = copy.deepcopy(test_sample)
        for k in self.mg.input_outputs:
            if k not in test_sample:
                raise EvalError(f"ModelBasedClassify: sample lacks '{k}' required by spec {self.mg.key}")
            test_sample[k] = scrub_braces(test_sample[k])
        completions = {}
        for k, v in self.mg.input_outputs.items():
            if v in test_sample:  # the sample already carries the completion
                continue
            completions[v] = self._policy(test_sample[k])
        choice, info = classify(self.mg, self.eval_completion_fn, completion_kwargs=self.eval_kwargs,
                                eval_type=self.eval_type, n=self.multicomp_n, match_fn=self.match_fn,
                                format_kwargs={**completions, **test_sample, **self.modelgraded_spec_args})
        metrics: dict[str, Any] = {"choice": choice, "score": info["score"]}
        if self.metaeval:
            if "choice" not in test_sample:
                raise EvalError("metaeval needs a 'choice' field in every sample")
            metrics["metascore"] = choice == test_sample["choice"]
        record.record_metrics(**metrics)
        return choice

    def run(self, recorder):
        self.eval_all_samples(recorder, self.get_samples())
        out: dict[str, Any] = {}
        ms = recorder.get_metrics()
        if not ms:
            return out
        out.update({f"counts/{k}": v for k, v in Counter(m["choice"] for m in ms).items()})
        scores = [m["score"] for m in ms if m.get("score") is not None]
        if scores:
            out["score"] = sum(scores) / len(scores)
        metas = [m["metascore"] for m in ms if "metascore" in m]
        if metas:
            out["metascore"] = sum(metas) / len(metas)
        return out
