"""Capability for the ladder: completing the end of a line of held-out code.

A *problem* is one line of held-out code (the stdlib's test files, or HumanEval's canonical
solutions): given the file before the line and the line's start, produce the line's last
SPAN_TOKENS tokens and its newline exactly. A problem's *pass rate* is the probability that
sampling at temperature T reproduces them token by token, p = exp(Σ log softmax(logits / T)[token]),
computed exactly in one forward pass (no sampling noise). Small models score strictly between 0
and 1 on it, so the GPT-4 form −E[log pass_rate(C)] = α·C^(−k) can be fitted over the problems
the rungs solve at least sometimes. Greedy exact match (T → 0) is recorded too.

Why this task and not whole lines at T = 0.2 (the first version): on the cpu ladder (loss ≈ 3.4
nats/token) the best rung solved 4 of 256 HumanEval lines that way, and 2 of 384 stdlib-test lines,
so every capability prediction was refused. Line endings at T = 1 give the rungs 20–50 solvable
problems (docs/devlog.md, 2026-11-29: capability with 2,048 problems). Version 3 draws up to 2,048 problems a task instead of
512 (HumanEval has 368 in all): smaller rungs then still solve the 20 a fit needs, and fewer lucky
lines move the mean.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from glassgpt.errors import ScalingError
from glassgpt.scaling import fit as fit_mod
from glassgpt.train import dist

log = logging.getLogger(__name__)

TEMPERATURE = 1.0
SPAN_TOKENS = 3  # the line's last tokens to produce (its newline included)
MAX_LINE_TOKENS = 8  # only short lines (in tokens), so the span is a good part of its line
MIN_PROBLEMS = 20  # solvable problems a capability fit needs
MIN_RUNGS = 3
MAX_PROBLEMS = 2048  # problems drawn per task
VERSION = 3  # of the task: a capability.json of another version is re-scored, never fitted beside this one
TASKS = ("stdlib_tests", "humaneval")  # the first is the headline task


def task_label(task: str) -> str:
    return f"{task}-line-end (last {SPAN_TOKENS} tokens, sampled pass rate, T={TEMPERATURE:g})"


_CACHE: dict = {}


def problems(tokenizer, seq_len: int, task: str = TASKS[0], max_problems: int = MAX_PROBLEMS) -> list[dict]:
    """Deterministic problems: token ids of context + line, and the index where the span starts.
    Cached per (task, tokenizer, seq_len) within a process: every rung of a ladder shares them."""
    if task not in TASKS:
        raise ScalingError(f"unknown capability task {task!r}; choose one of {', '.join(TASKS)}")
    key = (task, tokenizer.hf.to_str() if hasattr(tokenizer, "hf") else id(tokenizer), seq_len, max_problems)
    if key not in _CACHE:
        _CACHE[key] = _problems(_ITEMS[task](seq_len), tokenizer, seq_len, max_problems)
    return _CACHE[key]


def _humaneval_items(seq_len: int) -> list[tuple[str, Callable]]:
    from glassgpt.data.sources import humaneval_problems

    out = []
    for prob in humaneval_problems():
        sol_lines = prob["canonical_solution"].split("\n")
        for k, line in enumerate(sol_lines):
            if len(line.strip()) >= 6:
                context = prob["prompt"] + "\n".join(sol_lines[:k]) + ("\n" if k else "")
                out.append((f"{prob['task_id']}:{k}", lambda c=context, ln=line: (c, ln)))
    return out


def _stdlib_tests_items(seq_len: int) -> list[tuple[str, Callable]]:
    """Short code lines (not comments) of the held-out stdlib test files."""
    from glassgpt.data.sources import _stdlib_files, stdlib_root

    root, out = stdlib_root(), []
    for p in _stdlib_files(heldout=True):
        try:
            text = p.read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        off = 0
        for k, line in enumerate(text.split("\n")):
            s = line.strip()
            if len(s) >= 6 and len(line) <= 48 and not s.startswith("#"):
                # 8 characters per position is more context than seq_len tokens ever hold
                out.append((f"{p.relative_to(root)}:{k}",
                            lambda t=text, a=max(0, off - 8 * seq_len), b=off, n=len(line): (t[a:b], t[b : b + n])))
            off += len(line) + 1
    return out


_ITEMS = {"stdlib_tests": _stdlib_tests_items, "humaneval": _humaneval_items}


def _spread_order(n: int) -> Iterator[int]:
    """0..n-1 in a golden-ratio stride: any prefix is spread evenly over the whole list."""
    step = max(1, round(n * 0.6180339887))
    while math.gcd(step, n) != 1:
        step += 1
    return ((k * step) % n for k in range(n))


def _problems(items, tokenizer, seq_len: int, max_problems: int) -> list[dict]:
    """The first max_problems candidates, in spread order, whose line is short and tokenizes on its own."""
    out = []
    for i in _spread_order(len(items)):
        pid, get = items[i]
        context, line = get()
        ctx_ids = [tokenizer.bos_id] + tokenizer.encode(context)
        full_ids = [tokenizer.bos_id] + tokenizer.encode(context + line + "\n")
        n_line = len(full_ids) - len(ctx_ids)
        if full_ids[: len(ctx_ids)] != ctx_ids or n_line > min(MAX_LINE_TOKENS, seq_len // 2):
            continue  # the tokenization merges across the boundary, or the line is too long
        keep = full_ids[-(seq_len + 1):]
        out.append({"id": pid, "ids": keep, "start": len(keep) - min(SPAN_TOKENS, n_line)})
        if len(out) == max_problems:
            break
    return out


@torch.no_grad()
def score(model, probs: list[dict], batch: int = 16, temperature: float = TEMPERATURE) -> tuple[list[float], list[bool]]:
    """(log pass rate, greedy exact) for each problem."""
    logps, greedy = [], []
    dev = next(model.parameters()).device
    autocast = dist.autocast(dev)  # bf16 on GPU, as the trainer's held-out evals
    for i in range(0, len(probs), batch):
        chunk = probs[i : i + batch]
        L = max(len(p["ids"]) for p in chunk)
        x = torch.zeros(len(chunk), L - 1, dtype=torch.long)
        y = torch.full((len(chunk), L - 1), -1, dtype=torch.long)
        for j, p in enumerate(chunk):
            ids = torch.tensor(p["ids"])
            x[j, : len(ids) - 1] = ids[:-1]
            y[j, p["start"] - 1 : len(ids) - 1] = ids[p["start"]:]
        with autocast:
            logits = model(x.to(dev)).float()
        lp = torch.log_softmax(logits / temperature, -1)
        y = y.to(dev)  # gather on the model's device: the full log-probabilities are ~0.5 GB a batch
        mask = y >= 0
        tok_lp = lp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        hit = (lp.argmax(-1) == y) | ~mask
        logps += tok_lp.sum(1).tolist()
        greedy += hit.all(1).tolist()
    return logps, greedy


def evaluate_run(run_dir: Path, tasks: tuple[str, ...] = TASKS) -> dict:
    """Score a run's final checkpoint on each task; writes capability.json beside its report."""
    from glassgpt.train import checkpoint

    run_dir = Path(run_dir)
    model, tok, cfg = checkpoint.load_model(run_dir, device=dist.auto_device())  # a GPU run's scoring is a GPU job
    out = {"version": VERSION, "tasks": {}}
    for task in tasks:
        probs = problems(tok, cfg.model.seq_len, task)
        if not probs:
            log.warning("no %s capability problems fit this tokenizer and sequence length %d", task, cfg.model.seq_len)
            continue
        logps, greedy = score(model, probs)
        out["tasks"][task] = {"task": task_label(task), "ids": [p["id"] for p in probs], "logp": logps, "greedy": greedy,
                              "greedy_accuracy": sum(greedy) / len(greedy),
                              "mean_pass_rate": float(np.mean(np.exp(logps)))}
    if not out["tasks"]:
        raise ScalingError("no capability problems fit this tokenizer and sequence length; raise model.seq_len")
    (run_dir / "capability.json").write_text(json.dumps(out))
    return out


def load(run_dir: Path) -> dict | None:
    """{task: per-problem log pass rates} of a scored run; None where it is unscored or was scored
    by another version of the task (other problems: not comparable)."""
    path = Path(run_dir) / "capability.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    if doc.get("version") != VERSION:
        return None
    return {k: v["logp"] for k, v in doc["tasks"].items()}


def solvable(rung_logps: list[list[float]], threshold: float = math.log(0.05)) -> list[int]:
    """Problems some rung solves at least sometimes (pass rate ≥ 5%)."""
    arr = np.asarray(rung_logps)
    return [int(i) for i in np.nonzero(arr.max(0) >= threshold)[0]]


def _gpt4_fit(C, arr: np.ndarray) -> tuple[float, float]:
    """(k, ln α) of −E[log pass rate] = α·C^(−k): least squares in log-log over the rungs."""
    m = -arr.mean(1)
    slope, log_a = np.polyfit(np.log(np.asarray(C, dtype=float)), np.log(np.maximum(m, 1e-9)), 1)
    return float(-slope), float(log_a)


def every(arr: np.ndarray) -> list[int]:
    """Every problem: the unfiltered selection."""
    return list(range(np.asarray(arr).shape[1]))


def backtest(C: list[float], rung_logps: list[list[float]], select: Callable = solvable) -> list[dict]:
    """Rolling origin, as for the loss (fit.backtest): every prefix of ≥ fit.MIN_ORIGIN_SIZES rungs picks
    its own problems (`select`), fits the GPT-4 form and predicts each larger rung's −E[log pass rate]
    on those problems. Each miss keeps its reach, ln(compute predicted / the prefix's largest)."""
    order = np.argsort(C)
    C, arr = np.asarray(C, dtype=float)[order], np.asarray(rung_logps)[order]
    out = []
    for m in range(fit_mod.MIN_ORIGIN_SIZES, len(C)):
        S = select(arr[:m])
        if len(S) < MIN_PROBLEMS:
            continue
        k, log_a = _gpt4_fit(C[:m], arr[:m, S])
        for q in range(m, len(C)):
            pred, act = math.exp(log_a - k * math.log(C[q])), -float(arr[q, S].mean())
            out.append({"origin": m, "reach": math.log(C[q] / C[m - 1]), "log_error": math.log(pred / act)})
    return out


def _law(C: list[float], arr: np.ndarray, target_C: float, select: Callable, n_boot: int) -> dict:
    """−E[log pass_rate](C) = α·C^(−k) over the problems `select` picks from the rungs (least squares in
    log-log), with a 90% interval on the predicted geometric-mean pass rate: the bootstrap over problems
    and the backtest's model error (per e-fold of compute × the target's reach, Student's t over the
    origins), added in quadrature on log(−E[log pass rate]), as fit.interval does for the loss."""
    S = select(arr)
    sub = arr[:, S]
    k, log_a = _gpt4_fit(C, sub)
    pred_m = float(math.exp(log_a - k * math.log(target_C)))
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(n_boot):
        kb, lab = _gpt4_fit(C, sub[:, rng.integers(0, len(S), len(S))])
        boot.append(lab - kb * math.log(target_C))
    b_lo, b_hi = (math.log(pred_m) - np.percentile(boot, 5), np.percentile(boot, 95) - math.log(pred_m)) if boot else (0, 0)
    bt = backtest(C, arr, select)
    reach = math.log(target_C / max(C))
    iv = {"reach": reach, "n_backtests": len(bt), "bootstrap_half_widths": [float(b_lo), float(b_hi)]}
    extra = 0.0
    if bt:
        rate = math.sqrt(sum((b["log_error"] / b["reach"]) ** 2 for b in bt) / len(bt))
        dof = len({b["origin"] for b in bt})
        iv.update({"error_per_efold": rate, "mean_log_error_per_efold": sum(b["log_error"] / b["reach"] for b in bt) / len(bt),
                   "dof": dof, "t_model": fit_mod.t95(dof)})
        extra = (fit_mod.t95(dof) * rate * reach) ** 2
    else:
        iv["note"] = (f"no backtest possible (no prefix of ≥ {fit_mod.MIN_ORIGIN_SIZES} rungs has {MIN_PROBLEMS} problems): "
                      "the interval holds the problems' bootstrap only, not the law's own error; not confident")
    m_lo, m_hi = pred_m * math.exp(-math.sqrt(max(b_lo, 0) ** 2 + extra)), pred_m * math.exp(math.sqrt(max(b_hi, 0) ** 2 + extra))
    return {"problems": S, "n_problems": len(S), "alpha": float(math.exp(log_a)), "k": k,
            "predicted_neg_mean_log_pass": pred_m, "predicted": math.exp(-pred_m),
            "ci90": [math.exp(-m_hi), math.exp(-m_lo)], "interval": iv, "confident": bool(bt),
            "rungs": [{"compute": f, "neg_mean_log_pass": float(v)} for f, v in zip(C, -sub.mean(1))]}


def fit_and_predict(C: list[float], rung_logps: list[list[float]], target_C: float, task: str = TASKS[0],
                    n_boot: int = 200) -> dict:
    """The GPT-4 form over the solvable problems (the headline), and beside it the same law over every
    problem (`unfiltered`). GPT-4 filtered because a sampled pass rate of 0 has no log; ours are exact.
    Choosing the problems by the rungs being fitted biases the filtered fit (cpu bench, 5 seeds at
    1/3–1/11: mean |error| 7–22%, too optimistic, against 1.2–2.5% unfiltered), and with fewer than
    MIN_PROBLEMS solvable it is refused while the unfiltered one still predicts: then the result is
    {"task", "refused", "unfiltered"}."""
    if len(set(C)) < MIN_RUNGS:  # a line through two points has no residual to judge it by
        raise ScalingError(f"a capability fit needs rungs of at least {MIN_RUNGS} compute budgets; got {len(set(C))}")
    arr = np.asarray(rung_logps, dtype=float)
    unfiltered = _law(C, arr, target_C, every, n_boot)
    del unfiltered["problems"]  # all of them
    S = solvable(arr)
    if len(S) < MIN_PROBLEMS:
        # with a handful of problems, picking them by the rungs' best pass rate picks lucky ones
        # (a CPU ladder's 3–5 such problems gave predictions off by 10–100×): refuse instead
        return {"task": task_label(task), "unfiltered": unfiltered,
                "refused": f"only {len(S)} capability problems are solved at least sometimes by the rungs "
                           f"(need {MIN_PROBLEMS}); the GPT-4 form needs larger rungs (the unfiltered fit stands)"}
    return {"task": task_label(task), **_law(C, arr, target_C, solvable, n_boot), "unfiltered": unfiltered}


def predict_all(points: list[dict], target: dict) -> dict:
    """{task: fit_and_predict's result, or {"task", "refused"}} from ladder points carrying `capability`,
    on the loss fits' compute coordinate (`fit.compute`; on the cpu bench's five seeds it took the
    unfiltered law's mean miss at 1/3–1/11 from 4.5–6.1% to 1.2–2.5%, docs/devlog.md, 2026-11-30)."""
    out = {}
    for task in TASKS:
        pts = [p for p in points if task in (p.get("capability") or {})]
        if not pts:
            continue
        try:
            out[task] = fit_and_predict([fit_mod.compute(p) for p in pts], [p["capability"][task] for p in pts],
                                        fit_mod.compute(target), task)
            out[task]["max_run_flops"] = max(p["flops"] for p in pts)
        except ScalingError as e:  # too few rungs
            out[task] = {"task": task_label(task), "refused": str(e)}
    return out


def actual(run_logps: list[float], problems_idx: list[int] | None = None) -> dict:
    """A run's −E[log pass rate] and geometric-mean pass rate over the given problems (all: None)."""
    lp = np.asarray(run_logps)
    m = -float(np.mean(lp if problems_idx is None else lp[problems_idx]))
    return {"neg_mean_log_pass": m, "actual": math.exp(-m)}


def compare(pred: dict, run_logps: list[float], problems_idx: list[int] | None = None) -> dict:
    """A prediction (fit_and_predict's, or its `unfiltered`) against a run scored on the same problems."""
    act = actual(run_logps, problems_idx)
    ci = pred.get("ci90")  # a version-3 unfiltered fit registered before 2026-11-29's interval change has none
    return {"actual": act["actual"], "actual_neg_mean_log_pass": act["neg_mean_log_pass"],
            "neg_mean_log_pass_error": pred["predicted_neg_mean_log_pass"] / act["neg_mean_log_pass"] - 1,
            "inside_ci90": ci[0] <= act["actual"] <= ci[1] if ci else None}
