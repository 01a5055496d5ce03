"""Vision evals in the registry format: held-out images asked about in chat.

Samples are OpenAI chat prompts whose user message carries an `image_url` part with a
`data:` URL (or a `path`), so the same eval runs against any OpenAI-compatible endpoint
that takes images. Without a samples_jsonl the held-out split of a built-in image source
(digits, shapes, text, charts) is generated in-process, fixed by seed. Scoring: exact
match of the stripped answer.

`VisionLocalFn` is a completion function for a local vision checkpoint: it decodes the
image parts and answers greedily through the serving engine (glassgpt.evals.vision.ask).
"""

from __future__ import annotations

import numpy as np

from .. import record
from ..errors import EvalError
from ..eval import Eval
from ..metrics import get_accuracy, get_bootstrap_accuracy_std
from ..completion_fns.base import CompletionFn, CompletionResult
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


class VisionLocalFn(CompletionFn):
    """A local vision run as a completion function (chat prompts with image parts)."""

    def __init__(self, run_dir, max_tokens: int = 16, name: str | None = None):
        from glassgpt.evals.vision import engine_for, load

        self.model, self.tok, self.cfg = load(run_dir)
        # started once: eval runners call this from several threads, and the engine queues them
        self.engine = engine_for(self.model, self.tok).start()
        self.name = self.cache_id = name or f"vision:{run_dir}"
        self.max_tokens = max_tokens

    def __call__(self, prompt, **kwargs) -> CompletionResult:
        from glassgpt.evals.vision import ask

        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        images, texts = [], []
        for m in prompt:
            content = m.get("content", "")
            for p in ([{"type": "text", "text": content}] if isinstance(content, str) else content):
                if p.get("type") == "image_url":
                    images.append((p.get("image_url") or {}).get("url", ""))
                elif p.get("type") == "image":
                    images.append(p.get("path") or p.get("url", ""))
                elif p.get("type") == "text":
                    texts.append(p.get("text", ""))
        text = ask(self.engine, images, "\n".join(texts), kwargs.get("max_tokens") or self.max_tokens)
        return CompletionResult([text], prompt=prompt)


def accuracy_table(run_dir, n: int = 200) -> dict:
    """{task: {"accuracy", "n"}}: every vision eval against a local run, through the registry
    classes' scoring rule (greedy answers from the serving engine)."""
    fn = VisionLocalFn(run_dir)
    seed = fn.cfg.train.seed
    out = {}
    try:
        for task in ("digits", "shapes", "text", "charts"):
            samples = heldout_samples(task, n, seed)
            ok = [first_completion(fn(s["input"])).strip() == s["ideal"] for s in samples]
            out[task] = {"accuracy": float(np.mean(ok)), "n": len(samples)}
    finally:
        fn.engine.stop()
    return out
