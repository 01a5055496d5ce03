"""Run one eval or an eval set: build completion functions, the eval and the recorder;
write the final report (metrics, bootstrap std, token usage, cost, error count)."""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from .completion_fns import RateLimiter, make_completion_fn
from .errors import EvalError, UnsupportedEvalClass
from .eval import RunOptions
from .record import Recorder, make_run_spec
from .registry import Registry, load_class

log = logging.getLogger(__name__)

DEFAULT_SEED = 20220722


@dataclasses.dataclass
class RunResult:
    eval_name: str
    record_path: Optional[Path]
    run_id: str
    final_report: dict
    errors: int
    resumed: int = 0


@dataclasses.dataclass
class SetResult:
    results: list
    skipped: list  # (eval name, reason) for unsupported classes
    failed: list  # (eval name, message) for evals that could not run


def default_record_path(run_id: str, fns: str, eval_name: str) -> Path:
    return Path(tempfile.gettempdir()) / "evallogs" / f"{run_id}_{fns.replace('/', '_')}_{eval_name}.jsonl"


def usage_and_cost(recorder: Recorder, completion_fns: Sequence) -> dict:
    """Sum token usage over sampling events; cost when a function has a price."""
    totals: dict[str, int] = {}
    prices = {getattr(f, "name", None): getattr(f, "price", None) for f in completion_fns}
    priced = [p for p in prices.values() if p]
    cost, costed = 0.0, False
    for e in recorder.get_events("sampling"):
        u = e.data.get("usage")
        if not isinstance(u, dict):
            continue
        for k, v in u.items():
            if isinstance(v, (int, float)):
                totals[k] = totals.get(k, 0) + int(v)
        price = prices.get(e.data.get("model")) or (priced[0] if len(priced) == 1 else None)
        if price:
            cost += (u.get("prompt_tokens") or 0) / 1000 * price["prompt"]
            cost += (u.get("completion_tokens") or 0) / 1000 * price["completion"]
            costed = True
    out = {f"usage_{k}": v for k, v in totals.items()}
    if costed:
        out["cost_usd"] = round(cost, 6)
    return out


def run_eval(eval_name: str, completion_fns: Sequence, registry: Registry, *, completion_fn_names: Sequence[str] = (),
             record_path: Optional[os.PathLike] = None, seed: int = DEFAULT_SEED, max_samples: Optional[int] = None,
             threads: int = 10, resume: bool = False, skip_bad_samples: bool = False, show_progress: bool = True,
             extra_eval_params: Optional[dict] = None, command: Optional[str] = None) -> RunResult:
    """Run one eval (by registry name) with already-built completion functions."""
    spec = registry.get_eval(eval_name)
    cls = load_class(spec.cls)
    names = list(completion_fn_names) or [getattr(f, "name", type(f).__name__) for f in completion_fns]
    args = {**spec.args, **(extra_eval_params or {})}
    run_config = {
        "completion_fns": names,
        "eval_spec": {"cls": spec.cls, "registry_path": str(spec.registry_path), "args": args, "key": spec.key,
                      "group": spec.group},
        "seed": seed,
        "max_samples": max_samples,
        "command": command if command is not None else " ".join(map(shlex.quote, sys.argv)),
        "initial_settings": {"visible": max_samples is None},
    }
    run_spec = make_run_spec(names, spec.key, run_config)
    if resume and record_path is None:
        raise EvalError("--resume needs --record_path (the record file to continue)")
    path = Path(record_path) if record_path is not None else default_record_path(run_spec["run_id"], ",".join(names), spec.key)
    options = RunOptions(threads=threads, max_samples=max_samples, skip_bad_samples=skip_bad_samples,
                         show_progress=show_progress)
    try:
        ev = cls(completion_fns=list(completion_fns), eval_registry_path=spec.registry_path, seed=seed, name=spec.key,
                 registry=registry, options=options, **args)
    except TypeError as e:
        raise EvalError(f"{spec.file}: bad args for eval '{spec.key}' ({spec.cls}): {e}") from None
    recorder = Recorder(path, run_spec, resume=resume)
    report = dict(ev.run(recorder))
    if "boostrap_std" in report and "bootstrap_std" not in report:
        report["bootstrap_std"] = report["boostrap_std"]
    if "bootstrap_std" in report and "accuracy" in report and "boostrap_std" not in report:
        report["boostrap_std"] = report["bootstrap_std"]
    for k, v in usage_and_cost(recorder, completion_fns).items():
        report.setdefault(k, v)
    report["errors"] = len({e.sample_id for e in recorder.get_events("error")})
    if ev.bad_samples:
        report["bad_samples"] = len(ev.bad_samples)
    recorder.record_final_report(report)
    log.info("%s: %s (record: %s)", spec.key, report, path)
    return RunResult(spec.key, path, recorder.run_id, report, recorder.n_errors, recorder.resumed_from)


def build_completion_fns(spec: str, registry: Registry, *, base_url: Optional[str] = None, rpm: Optional[float] = None,
                         cache_dir: Optional[os.PathLike] = None, completion_args: Optional[dict] = None) -> list:
    """'model' or 'model,grader' -> completion functions sharing one rate limiter."""
    limiter = RateLimiter(rpm)
    names = [n for n in spec.split(",") if n.strip()]
    if not names:
        raise EvalError("no completion function given (e.g. 'scripted:echo' or 'gpt-4o-mini,gpt-4o')")
    return [make_completion_fn(n, registry=registry, base_url=base_url, limiter=limiter, cache_dir=cache_dir,
                               **(completion_args or {})) for n in names]


def run_target(target: str, completion_fn_spec: str, registry: Registry, *, completion_fns: Optional[list] = None,
               base_url: Optional[str] = None, rpm: Optional[float] = None, cache_dir: Optional[os.PathLike] = None,
               completion_args: Optional[dict] = None, record_path: Optional[os.PathLike] = None, **kw) -> SetResult:
    """An eval or an eval set. In a set, unsupported classes are skipped and counted and
    an eval that fails to load is reported; the other evals still run. For a set,
    record_path is a directory with one <eval>.jsonl per eval."""
    kind, evals = registry.resolve(target)
    fns = completion_fns if completion_fns is not None else build_completion_fns(
        completion_fn_spec, registry, base_url=base_url, rpm=rpm, cache_dir=cache_dir, completion_args=completion_args)
    names = [n.strip() for n in completion_fn_spec.split(",") if n.strip()]
    if kind == "eval":
        return SetResult([run_eval(target, fns, registry, completion_fn_names=names, record_path=record_path, **kw)], [], [])
    out = SetResult([], [], [])
    rec_dir = Path(record_path) if record_path is not None else None
    for name in evals:
        try:
            path = rec_dir / f"{name}.jsonl" if rec_dir is not None else None
            out.results.append(run_eval(name, fns, registry, completion_fn_names=names, record_path=path, **kw))
        except UnsupportedEvalClass as e:
            out.skipped.append((name, str(e)))
            log.warning("skipping %s: %s", name, e)
        except EvalError as e:
            out.failed.append((name, str(e)))
            log.warning("eval %s could not run: %s", name, e)
    return out


def vision_chat_table(run_dir, n: int = 100, record_dir=None, progress: bool = False) -> dict[tuple[str, str, str], float]:
    """{(task, lang, phrasing): accuracy}: the `glassgpt-vision-chat` registry evals of the tasks in the
    run's image mix, and the no-image questions ("noimage"), against the run in-process (greedy, the
    serving engine), n questions an eval. An emoji's two kinds of question are also cells of their own
    ("emoji/name", "emoji/category")."""
    from glassgpt.data.images import parse_mix
    from glassgpt.evals.registry import default_registry_paths
    from glassgpt.evals.vision import VisionLocalFn

    reg = Registry(default_registry_paths())
    fn = VisionLocalFn(run_dir, name=f"local:{run_dir}")
    trained = {name for name, _ in parse_mix(fn.cfg.vision.mix)}
    out = {}
    try:
        for name in reg.resolve("glassgpt-vision-chat")[1]:
            args = reg.get_eval(name).args  # VisionChatQA: task, lang, phrasing; VisionNoImage: lang, phrasing
            task, lang, which = args.get("task", "noimage"), args["lang"], args["phrasing"]
            if task != "noimage" and task not in trained:
                continue
            rec = Path(record_dir) / f"{name}.jsonl" if record_dir is not None else None
            rep = run_eval(name, [fn], reg, max_samples=n, record_path=rec, show_progress=progress).final_report
            out[(task, lang, which)] = rep["accuracy"]
            for k, v in rep.items():
                if task == "emoji" and k.startswith("accuracy_"):
                    out[(f"emoji/{k.removeprefix('accuracy_')}", lang, which)] = v
    finally:
        fn.engine.stop()
    return out
