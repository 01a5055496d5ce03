"""Any OpenAI-compatible HTTP endpoint, through the official `openai` client.

`--base-url` (or OPENAI_BASE_URL) picks the server; the key comes from the environment
(OPENAI_API_KEY). The client's own retries are off: this module retries 429, 5xx and
connection errors itself, with backoff and a shared requests-per-minute limit, so the
behaviour is the same for every server. Anything else that goes wrong becomes a
CompletionError, which the runner records as an `error` event for that sample.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

from ..errors import CompletionError, EvalError
from ..prompt import to_chat, to_text
from ..record import record_sampling
from .base import CompletionFn, CompletionResult
from .ratelimit import RateLimiter, backoff_delay

log = logging.getLogger(__name__)

# arguments the reference passes that chat servers may reject when they are defaults
_SAMPLING_KEYS = {"temperature", "top_p", "max_tokens", "n", "stop", "frequency_penalty", "presence_penalty",
                  "seed", "logit_bias", "user"}


def _usage_dict(usage) -> Optional[dict]:
    if usage is None:
        return None
    if hasattr(usage, "model_dump"):
        usage = usage.model_dump()
    if not isinstance(usage, dict):
        return None
    return {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens") if k in usage}


class OpenAICompatFn(CompletionFn):
    def __init__(self, model: str, base_url: Optional[str] = None, api_key: Optional[str] = None, chat: bool = True,
                 rpm: Optional[float] = None, max_retries: int = 6, backoff_base: float = 1.0, timeout: float = 60.0,
                 price_per_1k_prompt: Optional[float] = None, price_per_1k_completion: Optional[float] = None,
                 price_per_1k: Optional[float] = None, limiter: Optional[RateLimiter] = None, **extra_options):
        import openai

        self._openai = openai
        self.model = model
        self.chat = bool(chat)
        self.is_chat = self.chat
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if self.base_url is None:
                raise EvalError(f"no API key for model '{model}': set OPENAI_API_KEY, or point --base-url at a local server")
            key = "none"  # local OpenAI-compatible servers usually ignore the key
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, max_retries=0, timeout=float(timeout))
        self.name = model
        self.cache_id = f"{self.base_url or 'openai'}|{model}|{'chat' if chat else 'completions'}"
        self.limiter = limiter or RateLimiter(float(rpm) if rpm else None)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.extra_options = extra_options
        pp = price_per_1k_prompt if price_per_1k_prompt is not None else price_per_1k
        pc = price_per_1k_completion if price_per_1k_completion is not None else price_per_1k
        self.price = {"prompt": float(pp), "completion": float(pc)} if pp is not None and pc is not None else None
        self.retries = 0
        self._tokenize_ok: Optional[bool] = None  # whether the server has vLLM's /tokenize

    def _retrying(self, create, **kwargs):
        oa = self._openai
        for attempt in range(self.max_retries + 1):
            self.limiter.acquire()
            try:
                return create(**kwargs)
            except (oa.RateLimitError, oa.InternalServerError, oa.APIConnectionError, oa.APITimeoutError) as e:
                status = getattr(e, "status_code", None)
                if attempt == self.max_retries:
                    raise CompletionError(f"{self.model}: gave up after {attempt + 1} tries: "
                                          f"{type(e).__name__} {status or ''} {e}".strip()) from None
                retry_after = None
                resp = getattr(e, "response", None)
                if resp is not None:
                    try:
                        retry_after = float(resp.headers.get("retry-after"))
                    except (TypeError, ValueError):
                        retry_after = None
                delay = backoff_delay(attempt, self.backoff_base, retry_after=retry_after)
                self.retries += 1
                log.info("%s: %s, retry %d in %.2fs", self.model, type(e).__name__, attempt + 1, delay)
                time.sleep(delay)
            except oa.APIStatusError as e:
                raise CompletionError(f"{self.model}: HTTP {e.status_code}: {e.message}") from None
            except (oa.OpenAIError, ValueError, TypeError, KeyError) as e:  # unparseable bodies and the like
                raise CompletionError(f"{self.model}: bad response ({type(e).__name__}: {e})") from None

    def _kwargs(self, kwargs: dict) -> dict:
        out = {k: v for k, v in kwargs.items() if k in _SAMPLING_KEYS and v is not None}
        out.update(self.extra_options)
        return out

    def __call__(self, prompt, **kwargs) -> CompletionResult:
        if self.chat:
            messages = to_chat(prompt)
            raw = self._retrying(self.client.chat.completions.create, model=self.model, messages=messages,
                                 **self._kwargs(kwargs))
            sent = messages
        else:
            sent = to_text(prompt)
            raw = self._retrying(self.client.completions.create, model=self.model, prompt=sent, **self._kwargs(kwargs))
        choices = getattr(raw, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise CompletionError(f"{self.model}: response has no choices: {str(raw)[:200]!r}")
        completions = []
        try:
            for c in choices:
                text = c.message.content if self.chat else c.text
                if text is not None:
                    completions.append(text if isinstance(text, str) else str(text))
        except AttributeError:
            raise CompletionError(f"{self.model}: malformed choices in response: {str(raw)[:200]!r}") from None
        usage = _usage_dict(getattr(raw, "usage", None))
        record_sampling(prompt=sent, sampled=completions, model=getattr(raw, "model", self.model), usage=usage)
        return CompletionResult(completions, usage=usage, raw=raw, prompt=sent)

    def _tokenize(self, text: str, bos: bool) -> Optional[list[int]]:
        """The server's own tokenizer through vLLM's /tokenize (glassgpt serve and vLLM have
        it; OpenAI has not): None when the endpoint has no such route."""
        if self._tokenize_ok is False or not self.base_url:
            return None
        import httpx

        root = self.base_url.rstrip("/")
        root = root[:-3] if root.endswith("/v1") else root
        try:
            r = httpx.post(root + "/tokenize", json={"model": self.model, "prompt": text, "add_special_tokens": bos},
                           headers={"authorization": f"Bearer {self.client.api_key}"}, timeout=self.client.timeout)
            ids = r.json().get("tokens") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            ids = None
        if not (isinstance(ids, list) and all(isinstance(t, int) for t in ids)):
            self._tokenize_ok = False
            log.info("%s: no /tokenize at %s; scoring aligns on the echoed tokens instead", self.model, root)
            return None
        self._tokenize_ok = True
        return ids

    def loglikelihood(self, requests):
        """Conditional log-probabilities through the completions endpoint (echo + logprobs).

        The continuation is found by tokens, never by character offsets (a character may be
        split across tokens). Where the server tokenizes over /tokenize, context and
        continuation are tokenized apart, the context with the tokenizer's BOS, and sent as
        token ids: the same numbers as an in-process forward pass. Elsewhere (OpenAI) the
        context and the whole text are sent as two prompts, and the continuation starts
        after the tokens the two have in common."""
        out = []
        for context, continuation in requests:
            kw = dict(model=self.model, max_tokens=0, echo=True, logprobs=1, temperature=0)
            ctx_ids = self._tokenize(context, bos=True)
            cont_ids = self._tokenize(continuation, bos=False) if ctx_ids is not None else None
            try:
                if cont_ids is not None:
                    raw = self._retrying(self.client.completions.create, prompt=[ctx_ids + cont_ids], **kw)
                    lp, start = raw.choices[0].logprobs, len(ctx_ids)
                elif context:
                    raw = self._retrying(self.client.completions.create, prompt=[context, context + continuation], **kw)
                    ch = sorted(raw.choices, key=lambda c: c.index)
                    head, lp = ch[0].logprobs.tokens, ch[1].logprobs
                    start = 0
                    while start < min(len(head), len(lp.tokens)) and head[start] == lp.tokens[start]:
                        start += 1
                else:
                    raw = self._retrying(self.client.completions.create, prompt=continuation, **kw)
                    lp, start = raw.choices[0].logprobs, 0
                token_lps, tops = lp.token_logprobs, lp.top_logprobs
            except (AttributeError, IndexError, TypeError):
                raise CompletionError(f"{self.model}: endpoint does not return echo logprobs") from None
            total, greedy = 0.0, True
            for i in range(start, len(token_lps)):
                tlp = token_lps[i]
                if tlp is None:
                    continue
                total += float(tlp)
                if tops and i < len(tops) and tops[i]:
                    greedy = greedy and tlp >= max(tops[i].values()) - 1e-9
            out.append((total, greedy))
        return out
