"""Vision evals in the registry format: held-out images asked about in chat.

Samples are OpenAI chat prompts whose user message carries an `image_url` part with a
`data:` URL (or a `path`), so the same eval runs against any OpenAI-compatible endpoint
that takes images. Without a samples_jsonl the held-out split of a built-in image source
(digits, shapes, text, charts) is generated in-process, fixed by seed. Scoring: exact
match of the stripped answer.

The completion function for a local vision checkpoint (`vision:RUN`) is
glassgpt.evals.vision.VisionLocalFn: it answers greedily through the serving engine.
"""

from __future__ import annotations

import numpy as np

from .. import record
from ..errors import EvalError
from ..eval import Eval
from ..metrics import get_accuracy, get_bootstrap_accuracy_std
from .utils import first_completion


def sample_prompt(s) -> dict:
    from glassgpt.data.images import to_data_url

    return {"input": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": to_data_url(s.image)}},
                                                   {"type": "text", "text": s.question}]}],
            "ideal": s.answer}


def heldout_samples(task: str, n: int, seed: int = 1337) -> list[dict]:
    from glassgpt.data import images

    return [sample_prompt(s) for s in images.heldout_samples(task, n, seed)]


class VisionQA(Eval):
    def __init__(self, completion_fns, *args, task: str = "digits", n: int = 200, data_seed: int = 1337,
                 max_tokens: int = 16, **kwargs):
        super().__init__(completion_fns, *args, **kwargs)
        self._require_fns(1, "VisionQA")
        self.task, self.n, self.data_seed, self.max_tokens = task, int(n), int(data_seed), int(max_tokens)

    def get_samples(self):
        if self.samples_jsonl:
            return super().get_samples()
        try:
            return heldout_samples(self.task, self.n, self.data_seed)
        except ImportError as e:
            raise EvalError(f"{self.name}: image evals need Pillow and scikit-learn ({e})") from None

    def eval_sample(self, sample, rng):
        got = first_completion(self.completion_fn(prompt=sample["input"], temperature=0.0, max_tokens=self.max_tokens))
        correct = got.strip() == str(sample["ideal"]).strip()
        record.record_match(correct, expected=sample["ideal"], picked=got.strip(), sampled=got)

    def run(self, recorder):
        self.eval_all_samples(recorder, self.get_samples())
        events = recorder.get_events("match")
        return {"accuracy": get_accuracy(events), "bootstrap_std": get_bootstrap_accuracy_std(events)}
