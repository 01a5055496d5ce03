"""API keys, the usage ledger and rate limits, in one SQLite file.

Keys are `sk-glass-<id>-<secret>`; only the SHA-256 of the whole key is stored (the
secret is 32 random bytes, so a plain hash is enough: there is nothing to brute-force).
Every served request adds one row to `usage`: key, model, endpoint, prompt and
completion tokens and their cost from the price table (per 1K tokens, as OpenAI prices).
"""

from __future__ import annotations

import collections
import hashlib
import math
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from glassgpt.serve.errors import AuthError, RateLimitError, ServeError

# $ per 1K tokens (prompt, completion). gpt-3.5-turbo's launch price is the default.
DEFAULT_PRICE = (0.002, 0.002)
KNOWN_PRICES = {
    "gpt-3.5-turbo": (0.002, 0.002),
    "gpt-4": (0.03, 0.06),
    "gpt-4-32k": (0.06, 0.12),
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    revoked REAL,
    rpm INTEGER,
    tpm INTEGER
);
CREATE TABLE IF NOT EXISTS usage (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    day TEXT NOT NULL,
    key_id TEXT,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_key_day ON usage (key_id, day);
"""


@dataclass
class Key:
    id: str
    name: str
    created: float
    revoked: float | None
    rpm: int | None
    tpm: int | None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Store:
    def __init__(self, path, default_rpm: int | None = None, default_tpm: int | None = None, cache_size: int = 4096):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit is a write() to the WAL, not an fsync. Committed rows survive the
            # process being killed (they are in the OS's cache); only an OS crash or power loss can
            # take back the last commits. FULL cost 4-12 ms of fsync per write, and the server
            # writes each request's row on its event loop: that was most of /health's p99 under load.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise ServeError(f"cannot open the key/usage database {self.path}: {e}") from None
        self.lock = threading.Lock()
        self.default_rpm, self.default_tpm = default_rpm, default_tpm
        self._windows: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        # hash → (checked at, record or None). Wrong keys are cached too (a flood of them must
        # not become a flood of queries), so the cache is an LRU with a cap: a client without
        # a valid key cannot grow it.
        self._cache: collections.OrderedDict[str, tuple[float, Key | None]] = collections.OrderedDict()
        self.cache_size = cache_size

    def close(self) -> None:
        self.db.close()

    # --- keys ----------------------------------------------------------------------------
    def create_key(self, name: str = "default", rpm: int | None = None, tpm: int | None = None) -> tuple[str, Key]:
        """Returns (the key, shown once, and its record)."""
        kid = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        key = f"sk-glass-{kid}-{secret}"
        rec = Key(kid, name, time.time(), None, rpm, tpm)
        with self.lock:
            self.db.execute("INSERT INTO keys (id, name, hash, created, rpm, tpm) VALUES (?, ?, ?, ?, ?, ?)",
                            (kid, name, _hash(key), rec.created, rpm, tpm))
        return key, rec

    def list_keys(self) -> list[Key]:
        with self.lock:
            rows = self.db.execute("SELECT id, name, created, revoked, rpm, tpm FROM keys ORDER BY created").fetchall()
        return [Key(*r) for r in rows]

    def revoke(self, key_id: str) -> Key:
        with self.lock:
            cur = self.db.execute("UPDATE keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), key_id))
            if cur.rowcount == 0:
                known = self.db.execute("SELECT revoked FROM keys WHERE id = ?", (key_id,)).fetchone()
                if known is None:
                    raise ServeError(f"no key with id '{key_id}'; `glassgpt keys list` shows the ids")
                raise ServeError(f"key '{key_id}' is already revoked")
            self._cache.clear()
            row = self.db.execute("SELECT id, name, created, revoked, rpm, tpm FROM keys WHERE id = ?", (key_id,)).fetchone()
        return Key(*row)

    def authenticate(self, header: str | None) -> Key:
        """The Authorization header → the key's record, or AuthError (401)."""
        if not header:
            raise AuthError("You didn't provide an API key. Provide it in an Authorization header "
                            "(Authorization: Bearer YOUR_KEY); create one with `glassgpt keys create`.")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("The Authorization header must be 'Bearer YOUR_KEY'.")
        h = _hash(token)
        now = time.time()
        with self.lock:
            hit = self._cache.get(h)
            if hit is None or now - hit[0] > 5.0:  # revocation takes effect within 5 s across processes
                row = self.db.execute("SELECT id, name, created, revoked, rpm, tpm FROM keys WHERE hash = ?", (h,)).fetchone()
                hit = (now, Key(*row) if row else None)
                self._cache[h] = hit
            self._cache.move_to_end(h)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        key = hit[1]
        if key is None:
            shown = token[:12] + "…" if len(token) > 12 else "***"
            raise AuthError(f"Incorrect API key provided: {shown}. Create one with `glassgpt keys create`.")
        if key.revoked:
            raise AuthError(f"API key {key.id} has been revoked.")
        return key

    # --- rate limits -------------------------------------------------------------------------
    def _limits(self, key: Key) -> tuple[int | None, int | None]:
        return (key.rpm if key.rpm is not None else self.default_rpm,
                key.tpm if key.tpm is not None else self.default_tpm)

    def precheck_rate(self, key: Key | None) -> None:
        """The part of the rate limit that needs no token count: a key whose window is already
        full (requests, or tokens) is refused before its body is read or tokenized."""
        if key is None:
            return
        rpm, tpm = self._limits(key)
        if not rpm and not tpm:
            return
        now = time.time()
        with self.lock:
            win = self._windows.get(key.id)
            if not win:
                return
            while win and now - win[0][0] > 60.0:
                win.popleft()
            if rpm and len(win) >= rpm:
                raise self._rpm_error(key, rpm, now - win[0][0])
            used = sum(t for _, t in win)
            if tpm and used >= tpm:
                raise self._tpm_error(key, tpm, used, 0, now - win[0][0])

    def rate_headers(self, key: Key) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for a key with limits (none for a key without)."""
        rpm, tpm = self._limits(key)
        if not rpm and not tpm:
            return {}
        now = time.time()
        with self.lock:
            win = list(self._windows.get(key.id) or ())
        win = [(t, n) for t, n in win if now - t <= 60.0]
        out = {}
        if rpm:
            reset = 60.0 - (now - win[0][0]) if len(win) >= rpm else 0.0
            out.update({"x-ratelimit-limit-requests": str(rpm), "x-ratelimit-remaining-requests": str(max(0, rpm - len(win))),
                        "x-ratelimit-reset-requests": f"{math.ceil(reset)}s"})
        if tpm:
            used = sum(n for _, n in win)
            reset = 60.0 - (now - win[0][0]) if win else 0.0  # when the oldest tokens leave the window
            out.update({"x-ratelimit-limit-tokens": str(tpm), "x-ratelimit-remaining-tokens": str(max(0, tpm - used)),
                        "x-ratelimit-reset-tokens": f"{math.ceil(reset)}s"})
        return out

    @staticmethod
    def _rpm_error(key: Key, rpm: int, age: float) -> RateLimitError:
        wait = max(1, math.ceil(60.0 - age))
        err = RateLimitError(f"Rate limit reached for key {key.id}: {rpm} requests per minute. "
                             f"Try again in {wait}s.", code="rate_limit_exceeded")
        err.retry_after = wait
        return err

    @staticmethod
    def _tpm_error(key: Key, tpm: int, used: int, tokens: int, age: float) -> RateLimitError:
        wait = max(1, math.ceil(60.0 - age))
        err = RateLimitError(f"Rate limit reached for key {key.id}: {tpm} tokens per minute "
                             f"(used {used}, requested {tokens}). Try again in {wait}s.", code="rate_limit_exceeded")
        err.type = "tokens"
        err.retry_after = wait
        return err

    def check_rate(self, key: Key | None, tokens: int) -> None:
        """Sliding 60 s window per key: requests per minute and tokens per minute (prompt +
        requested completion tokens, as OpenAI estimates). Raises RateLimitError (429)."""
        if key is None:
            return
        rpm, tpm = self._limits(key)
        if not rpm and not tpm:
            return
        now = time.time()
        with self.lock:
            win = self._windows[key.id]
            while win and now - win[0][0] > 60.0:
                win.popleft()
            if rpm and len(win) >= rpm:
                raise self._rpm_error(key, rpm, now - win[0][0])
            used = sum(t for _, t in win)
            if tpm and used + tokens > tpm:
                # An empty window means the request alone exceeds the limit: waiting won't help,
                # but the header still has to be a number; a minute is the honest upper bound.
                raise self._tpm_error(key, tpm, used, tokens, now - win[0][0] if win else 0.0)
            win.append((now, tokens))

    # --- metering ----------------------------------------------------------------------------
    def record(self, key_id: str | None, model: str, endpoint: str, prompt_tokens: int, completion_tokens: int,
               price: tuple[float, float], status: str = "ok") -> float:
        cost = prompt_tokens / 1000 * price[0] + completion_tokens / 1000 * price[1]
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        with self.lock:
            self.db.execute("INSERT INTO usage (ts, day, key_id, model, endpoint, prompt_tokens, completion_tokens, cost, status) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (now, day, key_id, model, endpoint, prompt_tokens, completion_tokens, cost, status))
        return cost

    # Live metering: a request's row is written when it starts ('running'), its completion
    # tokens are updated as they are produced (batched, about once a second, by the server),
    # and it is closed with its final status. A crash loses at most one interval of tokens;
    # `reconcile` closes the rows a dead server left 'running'.
    def open_usage(self, key_id: str | None, model: str, endpoint: str, prompt_tokens: int,
                   price: tuple[float, float]) -> int:
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        with self.lock:
            cur = self.db.execute("INSERT INTO usage (ts, day, key_id, model, endpoint, prompt_tokens, completion_tokens, "
                                  "cost, status) VALUES (?, ?, ?, ?, ?, ?, 0, ?, 'running')",
                                  (now, day, key_id, model, endpoint, prompt_tokens, prompt_tokens / 1000 * price[0]))
            return cur.lastrowid

    def update_usage(self, rows: list[tuple[int, int, float, str | None]]) -> None:
        """[(row, completion_tokens, cost, final status or None while running)], one transaction."""
        if not rows:
            return
        with self.lock:
            self.db.execute("BEGIN")
            try:
                for n, ct, cost, status in rows:
                    self.db.execute("UPDATE usage SET completion_tokens = ?, cost = ?, status = COALESCE(?, status) "
                                    "WHERE n = ?", (ct, cost, status, n))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def reconcile(self) -> int:
        """Close the rows of requests a server was running when it died, keeping the tokens
        metered up to then: status 'error'. Call it when a server starts on this database,
        not while another server uses it. Returns how many rows it closed."""
        with self.lock:
            return self.db.execute("UPDATE usage SET status = 'error' WHERE status = 'running'").rowcount

    def usage(self, by: str = "key,day") -> list[dict]:
        """Totals grouped by key and/or day (UTC)."""
        cols = [c for c in by.split(",") if c]
        allowed = {"key": "COALESCE(usage.key_id, '(no auth)')", "day": "usage.day", "model": "usage.model"}
        for c in cols:
            if c not in allowed:
                raise ServeError(f"cannot group usage by '{c}'; use key, day and/or model")
        sel = ", ".join(f"{allowed[c]} AS {c}" for c in cols)
        group = ", ".join(allowed[c] for c in cols)
        sql = (f"SELECT {sel + ',' if sel else ''} COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost) "
               f"FROM usage {'GROUP BY ' + group + ' ORDER BY ' + group if group else ''}")
        with self.lock:
            rows = self.db.execute(sql).fetchall()
        out = []
        for r in rows:
            d = dict(zip(cols, r[: len(cols)]))
            n, p, c, cost = r[len(cols):]
            if not n:
                continue
            d.update(requests=n, prompt_tokens=p or 0, completion_tokens=c or 0, total_tokens=(p or 0) + (c or 0), cost=cost or 0.0)
            out.append(d)
        return out

    def totals(self) -> dict:
        rows = self.usage(by="")
        return rows[0] if rows else {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost": 0.0}
