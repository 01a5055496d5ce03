"""Requests-per-minute limiting and retry with exponential backoff."""

from __future__ import annotations

import random
import threading
import time


class RateLimiter:
    """Spaces requests evenly: at most `rpm` starts per minute across all threads."""

    def __init__(self, rpm: float | None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def backoff_delay(attempt: int, base: float = 1.0, cap: float = 60.0, retry_after: float | None = None) -> float:
    """Delay before retry number `attempt` (0-based): Retry-After if the server gave one,
    else base * 2**attempt with full jitter, capped."""
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, cap)
    return random.uniform(0.5, 1.0) * min(cap, base * (2 ** attempt))
