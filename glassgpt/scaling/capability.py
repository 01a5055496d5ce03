"""Capability for the ladder: completing the next line of held-out HumanEval solutions.

Task: for a line of a HumanEval canonical solution, given the prompt and the solution's lines
before it, produce the line exactly. A problem's *pass rate* is the probability that sampling
at temperature T = 0.2 (Codex's temperature for pass@1) reproduces the line token by token:
p = exp(Σ log softmax(logits / T)[token]), computed exactly in one forward pass (no sampling
noise), so small models score strictly between 0 and 1 and the GPT-4 form
−E[log pass_rate(C)] = α·C^(−k) can be fitted over the problems the rungs solve at least
sometimes. Greedy exact match (T → 0) is recorded too.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from glassgpt.errors import ScalingError

log = logging.getLogger(__name__)

TEMPERATURE = 0.2
TASK = f"humaneval-next-line (sampled pass rate, T={TEMPERATURE})"
MIN_PROBLEMS = 20  # solvable problems a capability fit needs
MAX_LINE_TOKENS = 8  # short lines (e.g. `return result`): small models solve some of them sometimes


_CACHE: dict = {}


def problems(tokenizer, seq_len: int, max_problems: int = 256) -> list[dict]:
    """Deterministic problems: (token ids of context + line, index where the line starts).
    Cached per (tokenizer, seq_len) within a process: every rung of a ladder shares them."""
    key = (tokenizer.hf.to_str() if hasattr(tokenizer, "hf") else id(tokenizer), seq_len, max_problems)
    if key not in _CACHE:
        _CACHE[key] = _problems(tokenizer, seq_len, max_problems)
    return _CACHE[key]


def _problems(tokenizer, seq_len: int, max_problems: int) -> list[dict]:
    from glassgpt.data.sources import humaneval_problems

    out = []
    for prob in humaneval_problems():
        sol_lines = prob["canonical_solution"].split("\n")
        for k, line in enumerate(sol_lines):
            if len(line.strip()) < 6:
                continue
            context = prob["prompt"] + "\n".join(sol_lines[:k]) + ("\n" if k else "")
            ctx_ids = [tokenizer.bos_id] + tokenizer.encode(context)
            full_ids = [tokenizer.bos_id] + tokenizer.encode(context + line + "\n")
            n_line = len(full_ids) - len(ctx_ids)
            if full_ids[: len(ctx_ids)] != ctx_ids or n_line > min(MAX_LINE_TOKENS, seq_len // 2):
                continue  # the tokenization merges across the boundary, or the line is too long
            keep = full_ids[-(seq_len + 1):] if len(full_ids) > seq_len + 1 else full_ids
            start = len(ctx_ids) - (len(full_ids) - len(keep))
            out.append({"id": f"{prob['task_id']}:{k}", "ids": keep, "start": start})
    # an evenly spread, fixed subset
    if len(out) > max_problems:
        idx = np.linspace(0, len(out) - 1, max_problems).round().astype(int)
        out = [out[i] for i in idx]
    return out


@torch.no_grad()
def score(model, probs: list[dict], batch: int = 16, temperature: float = TEMPERATURE) -> tuple[list[float], list[bool]]:
    """(log pass rate, greedy exact) for each problem."""
    logps, greedy = [], []
    dev = next(model.parameters()).device
    for i in range(0, len(probs), batch):
        chunk = probs[i : i + batch]
        L = max(len(p["ids"]) for p in chunk)
        x = torch.zeros(len(chunk), L - 1, dtype=torch.long)
        y = torch.full((len(chunk), L - 1), -1, dtype=torch.long)
        for j, p in enumerate(chunk):
            ids = torch.tensor(p["ids"])
            x[j, : len(ids) - 1] = ids[:-1]
            y[j, p["start"] - 1 : len(ids) - 1] = ids[p["start"]:]
        logits = model(x.to(dev)).float()
        lp = torch.log_softmax(logits / temperature, -1).cpu()
        mask = y >= 0
        tok_lp = lp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        hit = (lp.argmax(-1) == y) | ~mask
        logps += [float(v) for v in tok_lp.sum(1)]
        greedy += [bool(v) for v in hit.all(1)]
    return logps, greedy


def evaluate_run(run_dir: Path, max_problems: int = 256) -> dict:
    """Score a run's final checkpoint; writes capability.json beside its report."""
    from glassgpt.train import checkpoint

    run_dir = Path(run_dir)
    model, tok, cfg = checkpoint.load_model(run_dir)
    probs = problems(tok, cfg.model.seq_len, max_problems)
    if not probs:
        raise ScalingError("no capability problems fit this tokenizer and sequence length; raise model.seq_len")
    logps, greedy = score(model, probs)
    out = {"task": TASK, "ids": [p["id"] for p in probs], "logp": logps, "greedy": greedy,
           "greedy_accuracy": sum(greedy) / len(greedy),
           "mean_pass_rate": float(np.mean(np.exp(logps)))}
    (run_dir / "capability.json").write_text(json.dumps(out))
    return out


def solvable(rung_logps: list[list[float]], threshold: float = math.log(0.05)) -> list[int]:
    """Problems some rung solves at least sometimes (pass rate ≥ 5%)."""
    arr = np.asarray(rung_logps)
    return [int(i) for i in np.nonzero(arr.max(0) >= threshold)[0]]


def fit_and_predict(flops: list[float], rung_logps: list[list[float]], target_flops: float) -> dict:
    """Fit −E[log pass_rate](C) = α·C^(−k) over solvable problems (least squares in log-log)."""
    S = solvable(rung_logps)
    if len(S) < MIN_PROBLEMS:
        # with a handful of problems, picking them by the rungs' best pass rate picks lucky ones
        # (a CPU ladder's 3–5 such problems gave predictions off by 10–100×): refuse instead
        raise ScalingError(f"only {len(S)} capability problems are solved at least sometimes by the rungs "
                           f"(need {MIN_PROBLEMS}); the capability prediction needs larger rungs")
    arr = np.asarray(rung_logps)[:, S]
    m = -arr.mean(1)  # −E[log pass rate] per rung
    x, y = np.log(np.asarray(flops)), np.log(np.maximum(m, 1e-9))
    k, log_a = np.polyfit(x, y, 1)
    k = -k
    pred_m = float(math.exp(log_a - k * math.log(target_flops)))
    return {"task": TASK, "problems": S, "n_problems": len(S), "alpha": float(math.exp(log_a)), "k": float(k),
            "predicted_neg_mean_log_pass": pred_m, "predicted": math.exp(-pred_m),
            "rungs": [{"flops": f, "neg_mean_log_pass": float(v)} for f, v in zip(flops, m)]}


def actual(run_logps: list[float], problems_idx: list[int]) -> dict:
    m = -float(np.mean(np.asarray(run_logps)[problems_idx]))
    return {"neg_mean_log_pass": m, "actual": math.exp(-m)}
