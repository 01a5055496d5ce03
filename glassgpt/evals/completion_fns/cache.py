"""On-disk response cache keyed by (model, prompt, sampling args).

One small JSON file per key under <dir>/<2 hex>/<sha256>.json, written to a temp name
and renamed, so concurrent threads and killed runs never leave a torn entry."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from ..record import record_sampling
from .base import CompletionFn, CompletionResult, cache_key

log = logging.getLogger(__name__)


class ResponseCache:
    def __init__(self, directory: os.PathLike):
        self.dir = Path(directory)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str):
        p = self._path(key)
        try:
            with open(p, encoding="utf-8") as f:
                d = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        return d

    def put(self, key: str, value: dict) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, p)


class CachedCompletionFn(CompletionFn):
    """Wraps a completion function; identical requests are answered from disk."""

    def __init__(self, inner: CompletionFn, cache: ResponseCache):
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.cache_id = inner.cache_id or inner.name
        self.price = getattr(inner, "price", None)
        if getattr(inner, "loglikelihood", None) is not None:
            self.loglikelihood = inner.loglikelihood

    def __getattr__(self, item):  # expose the inner function's extras (is_chat, model, ...)
        return getattr(self.inner, item)

    def __call__(self, prompt, **kwargs) -> CompletionResult:
        key = cache_key(self.cache_id, prompt, kwargs)
        hit = self.cache.get(key)
        if hit is not None:
            record_sampling(prompt=prompt, sampled=hit["completions"], model=self.name, cached=True)
            return CompletionResult(hit["completions"], usage=None, prompt=prompt)
        result = self.inner(prompt, **kwargs)
        self.cache.put(key, {"completions": result.get_completions(), "usage": result.usage})
        return result
