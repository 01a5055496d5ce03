"""Aggregate metrics over recorded events (same definitions as openai/evals)."""

from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np


def get_accuracy(events: Sequence) -> float:
    if not events:
        return float("nan")
    return sum(int(e.data["correct"]) for e in events) / len(events)


def bootstrap_std(values: Sequence[float], num_samples: int = 1000, seed: int = 0) -> float:
    """Std of the mean over `num_samples` random half-size subsamples (without replacement).

    The reference draws from the global `random` state; we seed it, so a report is
    reproducible. Same estimator, so values agree up to Monte-Carlo noise."""
    vals = [float(v) for v in values]
    if len(vals) < 2:
        return 0.0
    rng = random.Random(seed)
    half = len(vals) // 2
    return float(np.std([np.mean(rng.sample(vals, half)) for _ in range(num_samples)]))


def get_bootstrap_accuracy_std(events: Sequence, num_samples: int = 1000, seed: int = 0) -> float:
    return bootstrap_std([e.data["correct"] for e in events], num_samples, seed)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def nanmean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else float("nan")
