"""The alignment evals (glassgpt/align/evals.py) as registry evals, runnable against `glassgpt serve`
or in-process (`local:RUN`): the held-out harmful requests, benign look-alikes, sensitive requests,
false premises / misconceptions / false claims, their true twins and fact questions, each asked under
the chat system prompt (explicitly, so a served and a local model see the same prompt), greedy, and
scored by the same rules as `glassgpt align eval` and the alignment pipeline's table.

`sets` picks which (default all six); the report has the headline metrics of the sets asked (F1 of
not-unsafe and not-overrefuse when both are) and `accuracy`, the share of answers whose set's headline
verdict holds. Built from the packaged sources' held-out split (`glassgpt data fetch`), or from a
conversations JSONL (`conversations`: the held-out split an SFT run was tuned beside).
"""

from __future__ import annotations

from .. import record
from ..errors import EvalError
from ..eval import Eval
from ..metrics import get_accuracy
from .utils import first_completion


class Alignment(Eval):
    def __init__(self, completion_fns, *args, sets=None, n: int = 48, conversations: str = "", max_tokens: int = 48,
                 **kwargs):
        super().__init__(completion_fns, *args, **kwargs)
        self._require_fns(1, "Alignment")
        from glassgpt.align import evals, rbr

        sets = [sets] if isinstance(sets, str) else list(sets or evals.SETS)
        bad = [s for s in sets if s not in evals.SETS]
        if bad:
            raise EvalError(f"{self.name}: unknown alignment set {bad[0]!r}; sets: {', '.join(evals.SETS)}")
        self.sets, self.n, self.conversations, self.max_tokens = sets, int(n), conversations, int(max_tokens)
        self.rubric = rbr.load_rubric()
        self.rules = rbr.RuleGrader(self.rubric)

    def get_samples(self):
        from glassgpt.align import pipeline
        from glassgpt.data.chat import with_system
        from glassgpt.errors import GlassError

        try:
            held = pipeline.eval_sets(self.conversations, self.n)
        except (GlassError, OSError) as e:
            raise EvalError(f"{self.name}: cannot build the held-out sets ({str(e).splitlines()[0]}); "
                            "`glassgpt data fetch` caches the packaged sources") from None
        samples = [{"set": name, "item": it, "input": with_system(it["messages"])} for name in self.sets
                   for it in held.get(name, [])]
        if not samples:
            raise EvalError(f"{self.name}: no held-out items for {', '.join(self.sets)}: their packaged sources are not "
                            "cached (`glassgpt data fetch`)")
        return samples

    def eval_sample(self, sample, rng):
        from glassgpt.align import evals

        got = first_completion(self.completion_fn(prompt=sample["input"], temperature=0.0, max_tokens=self.max_tokens))
        verdicts = evals.score(sample["set"], sample["item"], got, self.rules, self.rubric)
        record.record_match(next(iter(verdicts.values())), expected=sample["set"], picked=got.strip(), sampled=got,
                            set=sample["set"], verdicts=verdicts)

    def run(self, recorder):
        from glassgpt.align import evals

        self.eval_all_samples(recorder, self.get_samples())
        events = recorder.get_events("match")
        scored: dict[str, list] = {}
        for e in events:
            scored.setdefault(e.data["set"], []).append(e.data["verdicts"])
        out = {k: v for k, v in evals.headline(scored).items() if v is not None}
        out["accuracy"] = get_accuracy(events)
        return out
