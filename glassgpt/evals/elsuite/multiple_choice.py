"""MultipleChoice: lettered options, answer by letter (reference), or by log-likelihood.

Data: `hf://hellaswag?split=validation` / `hf://hendrycks_test?...` through the
`datasets` library when it and the data set are available locally (glassgpt does not
download them), or a local JSONL of {"question", "answers", "label"} lines.

`scoring`: "generate" asks for a letter, like the reference; "loglikelihood" scores
each answer text as a continuation of the question and picks the most likely
(lm-evaluation-harness style, for base models); "auto" uses log-likelihood when the
completion function offers it.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Optional
from urllib.parse import parse_qs, urlparse

from .. import record
from ..errors import EvalError
from ..eval import Eval
from ..metrics import get_accuracy, get_bootstrap_accuracy_std
from ..data import read_jsonl
from .utils import check_match, first_completion


@dataclasses.dataclass
class MCSample:
    question: str
    answers: list
    label: int


def make_abc(answers, *, correct_idx: int = 0, shuffle: bool = True, rng: Optional[random.Random] = None):
    """'A) ...\\nB) ...' with the options shuffled by rng, and the correct letter."""
    p = list(range(len(answers)))
    if shuffle:
        if rng is None:
            raise ValueError("shuffle=True requires rng")
        rng.shuffle(p)
    options = "\n".join(chr(ord("A") + i) + ") " + answers[j] for i, j in enumerate(p))
    return options, chr(ord("A") + p.index(correct_idx))


def load_hf(url: str) -> list[MCSample]:
    parsed = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    path = parsed.netloc
    if path not in ("hellaswag", "hendrycks_test"):
        raise EvalError(f"unknown multiple-choice data set {url} (known: hellaswag, hendrycks_test)")
    try:
        from datasets import load_dataset  # optional; only used when the user has it
    except ImportError:
        raise EvalError(f"data set {url} needs the `datasets` library and a local copy of '{path}'; "
                        "install datasets and download it, or skip this eval") from None
    try:
        ds = load_dataset(path, **query)
    except Exception as e:  # noqa: BLE001 - datasets raises many types
        raise EvalError(f"data set {url} ('{path}') is not available locally: {e}") from None
    if path == "hellaswag":
        return [MCSample(s["ctx"], list(s["endings"]), int(s["label"])) for s in ds]
    return [MCSample(s["question"], list(s["choices"]), int(s["answer"])) for s in ds]


class MultipleChoice(Eval):
    def __init__(self, completion_fns, dataset: str, *args, instructions: Optional[str] = "",
                 scoring: str = "auto", **kwargs):
        super().__init__(completion_fns, *args, **kwargs)
        self._require_fns(1, "MultipleChoice")
        self.dataset = dataset
        self.instructions = instructions or ""
        if scoring not in ("auto", "generate", "loglikelihood"):
            raise EvalError(f"MultipleChoice scoring must be auto, generate or loglikelihood, not {scoring!r}")
        has_ll = getattr(self.completion_fn, "loglikelihood", None) is not None
        if scoring == "loglikelihood" and not has_ll:
            raise EvalError("scoring=loglikelihood needs a completion function with log-probabilities (local models)")
        self.scoring = "loglikelihood" if scoring == "loglikelihood" or (scoring == "auto" and has_ll) else "generate"

    def get_samples(self):
        if self.dataset.startswith("hf://"):
            return load_hf(self.dataset)
        rows = read_jsonl(self._prefix_registry_path(self.dataset), skip_bad=self.options.skip_bad_samples,
                          bad=self.bad_samples)
        try:
            return [MCSample(r["question"], list(r["answers"]), int(r["label"])) for r in rows]
        except (KeyError, TypeError, ValueError) as e:
            raise EvalError(f"{self.dataset}: multiple-choice lines need question, answers, label ({e})") from None

    def eval_sample(self, sample: MCSample, rng):
        if self.scoring == "loglikelihood":
            return self._eval_ll(sample)
        options, correct = make_abc(sample.answers, correct_idx=sample.label, rng=rng)
        prompt = (self.instructions + "\nPlease answer with the letter of the correct answer." + "\n\n"
                  + sample.question + "\n" + options)
        sampled = first_completion(self.completion_fn(prompt=prompt, temperature=0.0, max_tokens=1))
        picked, ok, expected = check_match(sampled, correct)
        record.record_match(ok, expected=expected, picked=picked, sampled=sampled, options=expected)
        return picked

    def _eval_ll(self, sample: MCSample):
        context = (self.instructions + "\n\n" if self.instructions else "") + sample.question
        reqs = [(context, " " + a) for a in sample.answers]
        scores = self.completion_fn.loglikelihood(reqs)
        logps = [s[0] for s in scores]
        for a, lp in zip(sample.answers, logps):
            record.record_cond_logp(prompt=context, completion=" " + a, logp=lp)
        best = max(range(len(logps)), key=lambda i: logps[i] if not math.isnan(logps[i]) else -math.inf)
        record.record_pick_option(prompt=context, options=sample.answers, picked=sample.answers[best])
        record.record_match(best == sample.label, expected=sample.answers[sample.label], picked=sample.answers[best])
        return best

    def run(self, recorder):
        self.eval_all_samples(recorder, self.get_samples())
        events = recorder.get_events("match")
        std = get_bootstrap_accuracy_std(events)
        return {"accuracy": get_accuracy(events), "bootstrap_std": std, "boostrap_std": std}
