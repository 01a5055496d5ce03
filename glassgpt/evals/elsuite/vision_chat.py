"""Image chat evals: held-out images asked as people ask, in English and Chinese.

Each sample is a chat prompt under the assistant's system prompt whose user message carries an
`image_url` part (a `data:` URL) and a question; the same eval runs against `glassgpt serve`
and in-process (`local:RUN`, glassgpt.evals.vision.VisionLocalFn). Per task, language and
phrasing:

- `phrasing: train`: the question from the training templates (glassgpt.data.image_chat.Q),
- `phrasing: heldout`: from the hand-written file PHRASINGS_FILE, which training never reads;

always on held-out images (digits' held-out scans, Twitter's emoji, the 1x1 flags, held-out
fonts and weights, procedural held-out draws). An answer is right when it gives an accepted
answer (image_chat.correct: the word or number, or the Chinese name, anywhere in the reply;
a flag's look-alikes count). `VisionNoImage` asks image questions with no image attached and
counts the replies that say there is none.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from .. import record
from ..errors import EvalError
from ..eval import Eval
from ..metrics import get_accuracy, get_bootstrap_accuracy_std
from .utils import first_completion

PHRASINGS_FILE = Path(__file__).resolve().parent.parent / "registry" / "data" / "glassgpt" / "vision_phrasings_heldout.yaml"
TASKS = ("digits", "shapes", "text", "charts", "emoji", "flags", "words", "hanzi")


@lru_cache(maxsize=1)
def heldout_phrasings() -> dict:
    """The hand-written phrasings: {task: {kind: {lang: [...]}}, "no_image": {lang: [...]}}."""
    try:
        return yaml.safe_load(PHRASINGS_FILE.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise EvalError(f"{PHRASINGS_FILE}: cannot read the held-out phrasings ({type(e).__name__})") from None


def phrasings(task: str, kind: str, lang: str, which: str) -> list[str]:
    from glassgpt.data import image_chat

    if which == "train":
        return image_chat.Q[(task, kind)][lang]
    if which == "heldout":
        got = heldout_phrasings().get(task, {}).get(kind, {}).get(lang)
        if not got:
            raise EvalError(f"{PHRASINGS_FILE.name} has no {lang} phrasings for {task}/{kind}")
        return got
    raise EvalError(f"phrasing must be train or heldout, not {which!r}")


def system_message() -> dict:
    from glassgpt.data.chat import DEFAULT_SYSTEM

    return {"role": "system", "content": DEFAULT_SYSTEM}


def chat_samples(task: str, lang: str, which: str, n: int, seed: int = 1337) -> list[dict]:
    """n prompts about held-out images of `task`, the i-th asked with phrasing i (in turn)."""
    from glassgpt.data import images

    return [chat_sample(s, lang, which, i) for i, s in enumerate(images.heldout_samples(task, n, seed))]


def chat_sample(s, lang: str, which: str, i: int = 0) -> dict:
    """One image sample as a chat prompt under the system prompt (an `image_url` part, then the question
    in phrasing i of `which`), with its accepted answers and its kind of question."""
    from glassgpt.data import image_chat
    from glassgpt.data.images import to_data_url

    qs = phrasings(s.task, s.kind, lang, which)
    q = image_chat.question(s, lang, qs[i % len(qs)])
    k = 0 if lang == "en" else 1
    accepted = list(s.accept[s.kind][k]) if s.kind in s.accept else [s.facts[s.kind][k]]
    return {"input": [system_message(),
                      {"role": "user", "content": [{"type": "image_url", "image_url": {"url": to_data_url(s.image)}},
                                                   {"type": "text", "text": q}]}],
            "ideal": accepted, "kind": s.kind}


def no_image_samples(lang: str, which: str, n: int, seed: int = 1337) -> list[dict]:
    """n image questions with no image attached (training phrasings are filled from held-out
    procedural samples of the four procedural tasks, in turn)."""
    from glassgpt.data import image_chat, images

    if which == "heldout":
        qs = heldout_phrasings().get("no_image", {}).get(lang) or []
        if not qs:
            raise EvalError(f"{PHRASINGS_FILE.name} has no {lang} no-image phrasings")
        questions = [qs[i % len(qs)] for i in range(n)]
    else:
        pool = [images.heldout_samples(t, (n + 3) // 4, seed) for t in ("digits", "shapes", "text", "charts")]
        questions = []
        for i in range(n):
            s = pool[i % 4][i // 4]
            tq = image_chat.Q[(s.task, s.kind)][lang]
            questions.append(image_chat.question(s, lang, tq[i % len(tq)]))
    return [{"input": [system_message(), {"role": "user", "content": q}], "ideal": "no image"} for q in questions]


class VisionChatQA(Eval):
    def __init__(self, completion_fns, *args, task: str = "digits", lang: str = "en", phrasing: str = "heldout",
                 n: int = 100, data_seed: int = 1337, max_tokens: int = 24, **kwargs):
        super().__init__(completion_fns, *args, **kwargs)
        self._require_fns(1, "VisionChatQA")
        if task not in TASKS or lang not in ("en", "zh"):
            raise EvalError(f"{self.name}: task must be one of {', '.join(TASKS)} and lang en or zh")
        self.task, self.lang, self.phrasing = task, lang, phrasing
        self.n, self.data_seed, self.max_tokens = int(n), int(data_seed), int(max_tokens)

    def get_samples(self):
        if self.samples_jsonl:
            return super().get_samples()
        try:
            return chat_samples(self.task, self.lang, self.phrasing, self.n, self.data_seed)
        except ImportError as e:
            raise EvalError(f"{self.name}: image evals need Pillow ({e})") from None

    def eval_sample(self, sample, rng):
        from glassgpt.data.image_chat import correct

        got = first_completion(self.completion_fn(prompt=sample["input"], temperature=0.0, max_tokens=self.max_tokens))
        ideal = sample["ideal"] if isinstance(sample["ideal"], list) else [sample["ideal"]]
        record.record_match(correct(got, ideal), expected=ideal, picked=got.strip(), sampled=got, kind=sample.get("kind"))

    def run(self, recorder):
        self.eval_all_samples(recorder, self.get_samples())
        events = recorder.get_events("match")
        out = {"accuracy": get_accuracy(events), "bootstrap_std": get_bootstrap_accuracy_std(events)}
        kinds = sorted({e.data.get("kind") for e in events} - {None})
        if len(kinds) > 1:  # a task asked several ways (an emoji's name or category): each has its own goal
            for k in kinds:
                out[f"accuracy_{k}"] = get_accuracy([e for e in events if e.data.get("kind") == k])
        return out


class VisionNoImage(VisionChatQA):
    """Image questions with no image attached: right when the reply says there is none."""

    def __init__(self, completion_fns, *args, lang: str = "en", phrasing: str = "heldout", n: int = 40, **kwargs):
        super().__init__(completion_fns, *args, task="digits", lang=lang, phrasing=phrasing, n=n, **kwargs)

    def get_samples(self):
        if self.samples_jsonl:
            return Eval.get_samples(self)
        return no_image_samples(self.lang, self.phrasing, self.n, self.data_seed)

    def eval_sample(self, sample, rng):
        from glassgpt.data.image_chat import says_no_image

        got = first_completion(self.completion_fn(prompt=sample["input"], temperature=0.0, max_tokens=self.max_tokens))
        record.record_match(says_no_image(got), expected="says there is no image", picked=got.strip(), sampled=got)
