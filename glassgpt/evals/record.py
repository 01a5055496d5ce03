"""Recorder: the JSONL log in openai/evals' format, written so a run can be resumed.

File layout (identical to the reference's LocalRecorder):

    {"spec": {...RunSpec...}}
    {"run_id": ..., "event_id": 0, "sample_id": "base.split.17", "type": "match", "data": {...},
     "created_by": "", "created_at": "2024-... +00:00"}
    ...
    {"final_report": {...}, "run_id": ...}

Difference that makes `--resume` exact: a sample's events are held in memory until the
sample finishes and are then appended in one write. A sample id present in the file
(without an `error` event) is therefore finished, and is never asked again.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import os
import threading
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Optional

from .errors import EvalError

log = logging.getLogger(__name__)

_default_recorder: ContextVar[Optional["Recorder"]] = ContextVar("glassgpt_recorder", default=None)
_current_sample: ContextVar[Optional[str]] = ContextVar("glassgpt_sample", default=None)


@dataclasses.dataclass
class Event:
    run_id: str
    event_id: int
    sample_id: Optional[str]
    type: str
    data: dict
    created_by: str
    created_at: str


def _to_py(o: Any):
    if isinstance(o, Path):
        return o.as_posix()
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if hasattr(o, "model_dump"):  # pydantic (e.g. openai usage objects)
        return o.model_dump()
    if hasattr(o, "item") and callable(o.item):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return repr(o)


def jsondumps(o: Any) -> str:
    return json.dumps(o, default=_to_py, ensure_ascii=False)


def now_str() -> str:
    return str(_dt.datetime.now(_dt.timezone.utc))


def new_run_id() -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%y%m%d%H%M%S") + base64.b32encode(os.urandom(5)).decode("ascii")


def make_run_spec(completion_fns: list[str], eval_name: str, run_config: dict, created_by: str = "") -> dict:
    parts = eval_name.split(".")
    return {
        "completion_fns": list(completion_fns),
        "eval_name": eval_name,
        "base_eval": parts[0],
        "split": parts[1] if len(parts) > 1 else "",
        "run_config": run_config,
        "created_by": created_by,
        "run_id": new_run_id(),
        "created_at": str(_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)),
    }


@dataclasses.dataclass
class RecordFile:
    """A parsed record file (ours or the reference's)."""

    path: Path
    spec: dict
    events: list[Event]
    final_report: Optional[dict]

    def get_events(self, type: str) -> list[Event]:
        return [e for e in self.events if e.type == type]


def read_record(path, strict: bool = False) -> RecordFile:
    """Parse a record file. Unparseable lines (a run killed mid-write) are skipped
    unless strict. The last final_report wins."""
    path = Path(path)
    if not path.exists():
        raise EvalError(f"record file not found: {path}")
    spec, events, final = None, [], None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                if strict:
                    raise EvalError(f"{path}:{lineno}: not a JSON line") from None
                log.warning("%s:%d: skipping a partial line", path, lineno)
                continue
            if "spec" in d and spec is None:
                spec = d["spec"]
            elif "final_report" in d:
                final = d["final_report"]
            elif "type" in d:
                events.append(
                    Event(
                        run_id=d.get("run_id", ""),
                        event_id=d.get("event_id", len(events)),
                        sample_id=d.get("sample_id"),
                        type=d["type"],
                        data=d.get("data") or {},
                        created_by=d.get("created_by", ""),
                        created_at=d.get("created_at", ""),
                    )
                )
    if spec is None:
        raise EvalError(f"{path} has no spec line; is it an eval record file?")
    return RecordFile(path, spec, events, final)


class Recorder:
    """Collects events in memory and (with a path) appends them to a JSONL record."""

    def __init__(self, path: Optional[os.PathLike], run_spec: dict, resume: bool = False):
        self.path = Path(path) if path is not None else None
        self.run_spec = run_spec
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._buffers: dict[str, list[tuple[str, dict, str]]] = {}
        self._next_id = 0
        self.finished: set[str] = set()  # sample ids done in an earlier (resumed) run
        self.n_errors = 0
        self.resumed_from = 0
        self._fh = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():
            self._load_for_resume()
        else:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(jsondumps({"spec": run_spec}) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)

    @property
    def run_id(self) -> str:
        return self.run_spec["run_id"]

    # --- resume -------------------------------------------------------------------
    def _load_for_resume(self) -> None:
        old = read_record(self.path)
        for key in ("eval_name", "completion_fns"):
            if old.spec.get(key) != self.run_spec.get(key):
                raise EvalError(
                    f"cannot resume {self.path}: it was written for {key}={old.spec.get(key)!r}, "
                    f"not {self.run_spec.get(key)!r}; use another --record_path or drop --resume"
                )
        self.run_spec = old.spec  # keep the original run id
        failed = {e.sample_id for e in old.events if e.type == "error"}
        keep = [e for e in old.events if e.sample_id not in failed]
        self._events = list(keep)
        self.finished = {e.sample_id for e in keep if e.sample_id is not None}
        self.resumed_from = len(self.finished)
        self._next_id = max((e.event_id for e in old.events), default=-1) + 1
        # rewrite without a stale final report or a half-written last line
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(jsondumps({"spec": old.spec}) + "\n")
            for e in old.events:
                f.write(jsondumps(dataclasses.asdict(e)) + "\n")
        os.replace(tmp, self.path)
        log.info("resuming %s: %d samples already finished", self.path, len(self.finished))

    # --- recording ----------------------------------------------------------------
    @contextlib.contextmanager
    def as_default_recorder(self, sample_id: Optional[str]):
        t1 = _default_recorder.set(self)
        t2 = _current_sample.set(sample_id)
        try:
            yield self
        finally:
            _current_sample.reset(t2)
            _default_recorder.reset(t1)

    def current_sample_id(self) -> Optional[str]:
        return _current_sample.get()

    def record_event(self, type: str, data: dict | None = None, sample_id: Optional[str] = None) -> None:
        sample_id = sample_id if sample_id is not None else self.current_sample_id()
        item = (type, data if data is not None else {}, now_str())
        with self._lock:
            if sample_id is not None and sample_id in self._buffers:
                self._buffers[sample_id].append(item)
                return
        self._commit(sample_id, [item])

    def start_sample(self, sample_id: str) -> None:
        with self._lock:
            self._buffers[sample_id] = []

    def finish_sample(self, sample_id: str) -> None:
        with self._lock:
            items = self._buffers.pop(sample_id, [])
        self._commit(sample_id, items)

    def fail_sample(self, sample_id: str, error: BaseException, **extra) -> None:
        """Drop the sample's partial events and record one `error` event instead."""
        with self._lock:
            self._buffers.pop(sample_id, None)
            self.n_errors += 1
        data = {"type": type(error).__name__, "message": str(error), **extra}
        self._commit(sample_id, [("error", data, now_str())])

    def _commit(self, sample_id, items) -> None:
        if not items:
            return
        with self._lock:
            events = []
            for type_, data, created in items:
                events.append(Event(self.run_id, self._next_id, sample_id, type_, data,
                                    self.run_spec.get("created_by", ""), created))
                self._next_id += 1
            self._events.extend(events)
            if self.path is not None:
                text = "".join(jsondumps(dataclasses.asdict(e)) + "\n" for e in events)
                if self._fh is None:
                    self._fh = open(self.path, "a", encoding="utf-8")
                self._fh.write(text)
                self._fh.flush()  # one sample's events reach the OS together: a kill loses none of them

    def record_final_report(self, report: dict) -> None:
        if self.path is not None:
            with self._lock:
                self.close_file()
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(jsondumps({"final_report": report, "run_id": self.run_id}) + "\n")

    def close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __del__(self):
        try:
            self.close_file()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # --- reading back ---------------------------------------------------------------
    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def get_events(self, type: str) -> list[Event]:
        with self._lock:
            return [e for e in self._events if e.type == type]

    def get_metrics(self) -> list[dict]:
        return [e.data for e in self.get_events("metrics")]

    def get_scores(self, key: str) -> list:
        return [e.data[key] for e in self.get_events("metrics") if key in e.data]


# --- helpers used inside eval_sample and completion functions (reference names) ------
def default_recorder() -> Optional[Recorder]:
    return _default_recorder.get()


def record_event(type: str, data: dict | None = None, sample_id=None) -> None:
    r = default_recorder()
    if r is not None:
        r.record_event(type, data, sample_id)


def record_match(correct: bool, *, expected=None, picked=None, **extra) -> None:
    if isinstance(expected, list) and len(expected) == 1:
        expected = expected[0]
    record_event("match", {"correct": bool(correct), "expected": expected, "picked": picked, **extra})


def record_sampling(prompt, sampled, **extra) -> None:
    record_event("sampling", {"prompt": prompt, "sampled": sampled, **extra})


def record_cond_logp(prompt, completion, logp, **extra) -> None:
    record_event("cond_logp", {"prompt": prompt, "completion": completion, "logp": logp, **extra})


def record_pick_option(prompt, options, picked, **extra) -> None:
    record_event("pick_option", {"prompt": prompt, "options": options, "picked": picked, **extra})


def record_metrics(**kwargs) -> None:
    record_event("metrics", kwargs)


def record_extra(data) -> None:
    record_event("extra", data)


def record_raw(data) -> None:
    record_event("raw_sample", data)
