"""The Eval base class: samples in, events out, a final report from the events.

Sample order, sample ids and per-sample random generators follow openai/evals exactly
(indices shuffled with seed 123, ids `<base>.<split>.<index>`, rng seeded with
"<sample_id>:<seed>"), so the same `--max_samples` picks the same samples and a
shuffled multiple-choice prompt is the same in both tools.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Optional

from .data import read_jsonl
from .errors import EvalError
from .record import Recorder

log = logging.getLogger(__name__)

SHUFFLE_SEED = 123


@dataclasses.dataclass
class RunOptions:
    threads: int = 10
    max_samples: Optional[int] = None
    skip_bad_samples: bool = False
    show_progress: bool = True


def index_samples(samples: list, max_samples: Optional[int]) -> list[tuple[Any, int]]:
    idx = list(range(len(samples)))
    random.Random(SHUFFLE_SEED).shuffle(idx)
    if max_samples is not None:
        idx = idx[:max_samples]
    return [(samples[i], i) for i in idx]


class Eval(abc.ABC):
    def __init__(self, completion_fns: list, eval_registry_path: Path, seed: int = 20220722,
                 name: str = "no_name_eval.default", registry=None, samples_jsonl: Optional[str] = None,
                 options: Optional[RunOptions] = None, **unused):
        if len(name.split(".")) < 2:
            raise EvalError(f"eval name must look like <base>.<split>, got '{name}'")
        if unused:
            log.warning("%s: ignoring unknown eval args %s", name, sorted(unused))
        self.completion_fns = list(completion_fns)
        self.eval_registry_path = Path(eval_registry_path)
        self.seed = seed
        self.name = name
        self.registry = registry
        self.samples_jsonl = samples_jsonl
        self.options = options or RunOptions()
        self.bad_samples: list[str] = []

    @property
    def completion_fn(self):
        return self.completion_fns[0]

    def _require_fns(self, n: int, cls: str) -> None:
        if len(self.completion_fns) != n:
            raise EvalError(f"{cls} takes {n} completion function(s), got {len(self.completion_fns)}")

    # --- data -----------------------------------------------------------------------
    def _prefix_registry_path(self, data_path) -> Path:
        p = Path(data_path)
        if p.is_file():
            return p
        return self.eval_registry_path / "data" / data_path

    def get_samples(self) -> list:
        if self.samples_jsonl is None:
            raise EvalError(f"{self.name}: no samples_jsonl in its registry args")
        return read_jsonl(self._prefix_registry_path(self.samples_jsonl), skip_bad=self.options.skip_bad_samples,
                          bad=self.bad_samples)

    # --- what each eval class defines -------------------------------------------------
    @abc.abstractmethod
    def eval_sample(self, sample: Any, rng: random.Random):
        """Score one sample (records its events)."""

    @abc.abstractmethod
    def run(self, recorder: Recorder) -> dict:
        """Evaluate all samples and return the final report."""

    # --- the loop ---------------------------------------------------------------------
    def sample_id(self, idx: int) -> str:
        base, split = self.name.split(".")[0:2]
        return f"{base}.{split}.{idx}"

    def eval_all_samples(self, recorder: Recorder, samples: list, **_):
        work = index_samples(samples, self.options.max_samples)
        todo = [(s, i) for s, i in work if self.sample_id(i) not in recorder.finished]
        if len(todo) < len(work):
            log.info("%s: %d of %d samples already in the record, %d to run", self.name,
                     len(work) - len(todo), len(work), len(todo))
        results: dict[int, Any] = {}

        def one(item):
            sample, idx = item
            sid = self.sample_id(idx)
            recorder.start_sample(sid)
            with recorder.as_default_recorder(sid):
                rng = random.Random(f"{sid}:{self.seed}".encode("utf-8"))
                try:
                    out = self.eval_sample(sample, rng)
                except Exception as e:  # one bad sample or request never stops the run
                    log.debug("%s failed: %r", sid, e)
                    recorder.fail_sample(sid, e)
                    return idx, None, e
            recorder.finish_sample(sid)
            return idx, out, None

        threads = max(1, int(self.options.threads))
        first_error: list = []
        with _Progress(self.name, len(todo), self.options.show_progress) as bar:
            if threads == 1:
                it = map(one, todo)
                pool = None
            else:
                pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="glassgpt-eval")
                it = (f.result() for f in as_completed([pool.submit(one, w) for w in todo]))
            try:
                for idx, out, err in it:
                    if err is None:
                        results[idx] = out
                    elif not first_error:
                        first_error.append(err)
                        log.warning("%s: a sample failed (%s: %s); continuing", self.name, type(err).__name__, err)
                    bar.advance(err is not None)
            except KeyboardInterrupt:
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
                raise
            finally:
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
        return [results[k] for k in sorted(results)]


class _Progress:
    """rich progress bar with samples/s and an error count (no-op when disabled)."""

    def __init__(self, name: str, total: int, enabled: bool):
        self.enabled = enabled and total > 0
        self.name_for_bar = name
        self.total = total
        self.errors = 0
        self.done = 0
        self.t0 = time.perf_counter()

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[rate]:.1f} samples/s"), TextColumn("errors: {task.fields[errors]}"),
                              TimeRemainingColumn(), transient=False)
            self.p.__enter__()
            self.task = self.p.add_task(self.name_for_bar, total=self.total, rate=0.0, errors=0)
        return self

    def advance(self, error: bool):
        self.done += 1
        self.errors += int(error)
        if self.enabled:
            rate = self.done / max(1e-9, time.perf_counter() - self.t0)
            self.p.update(self.task, advance=1, rate=rate, errors=self.errors)

    def __exit__(self, *exc):
        if self.enabled:
            self.p.__exit__(*exc)
        return False
