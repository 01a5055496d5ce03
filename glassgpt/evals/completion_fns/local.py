"""A glassgpt checkpoint as a completion function: in-process and batched.

Completions decode through the serving engine (glassgpt.serve.engine), the one inference
path: a KV cache, and continuous batching of the requests that the eval runner's threads
make at the same time (up to `batch_size` sequences share each forward pass; a batched
answer equals the answer the same request gets alone, tested). No engine thread is
started: each caller runs the engine's steps while its own request is unfinished.

Scoring (`loglikelihood`, `loglikelihood_rolling`) is one plain forward per batch and
relies only on `model(idx[B,T]) -> logits[B,T,V]`. torch and the checkpoint loader are
imported lazily.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from ..errors import EvalError
from ..prompt import is_chat_prompt, to_text
from ..record import record_sampling
from .base import CompletionFn, CompletionResult

log = logging.getLogger(__name__)


def _block_size(model, cfg) -> Optional[int]:
    for obj in (cfg, getattr(model, "config", None), getattr(model, "cfg", None), model):
        if obj is None:
            continue
        for name in ("block_size", "sequence_len", "seq_len", "max_seq_len", "context_length", "n_ctx"):
            v = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
            if isinstance(v, int) and v > 0:
                return v
        model_cfg = obj.get("model") if isinstance(obj, dict) else getattr(obj, "model", None)
        if model_cfg is not None and model_cfg is not obj and not callable(model_cfg):
            got = _block_size(None, model_cfg)
            if got:
                return got
    return None


class LocalModelFn(CompletionFn):
    def __init__(self, model, tokenizer, cfg=None, name: str = "local", max_tokens: int = 64, batch_size: int = 8,
                 block_size: Optional[int] = None, chat: Optional[bool] = None, seed: int = 0,
                 precision: Optional[str] = None):
        import torch

        from glassgpt.train import dist

        self.torch = torch
        self.model = model
        self.tok = tokenizer
        self.name = name
        self.cache_id = name
        self.max_tokens = int(max_tokens)
        self.batch_size = max(1, int(batch_size))
        self.block_size = block_size or _block_size(model, cfg)
        self.chat = chat if chat is not None else hasattr(tokenizer, "render_chat")
        self.is_chat = self.chat
        try:
            self.device = next(model.parameters()).device
        except (AttributeError, StopIteration):
            self.device = torch.device("cpu")
        # scoring and generation in one precision (the engine, built lazily, converts the weights for
        # bf16); None: fp32, as before precision was a choice
        self.precision = dist.resolve_precision(precision, str(self.device)) if precision else None
        if self.precision:
            self.cache_id = f"{name}@{self.precision}"
        self._autocast = lambda: dist.autocast(self.device, self.precision or "fp32")
        self.gen = torch.Generator(device="cpu").manual_seed(int(seed))  # seeds of sampled requests
        self.bos_id = getattr(tokenizer, "bos_id", None)
        self._engine = None  # built at the first completion: scoring alone needs none
        self._engine_lock = threading.Lock()
        self._model_lock = threading.Lock()
        if hasattr(model, "eval"):
            model.eval()

    @classmethod
    def from_run_dir(cls, run_dir, **kwargs) -> "LocalModelFn":
        try:
            from glassgpt.train.checkpoint import load_model
        except ImportError as e:
            raise EvalError(f"cannot load local checkpoints: {e}") from None
        model, tokenizer, cfg = load_model(run_dir)
        kwargs.setdefault("name", f"local:{run_dir}")
        return cls(model, tokenizer, cfg, **kwargs)

    # --- tokens -------------------------------------------------------------------
    def encode_prompt(self, prompt) -> list[int]:
        if is_chat_prompt(prompt) and self.chat and hasattr(self.tok, "render_chat"):
            return list(self.tok.render_chat(prompt))
        ids = list(self.tok.encode(to_text(prompt)))
        return ([self.bos_id] if self.bos_id is not None else []) + ids

    def _fit(self, ids: list[int], room: int) -> list[int]:
        if self.block_size is None:
            return ids
        keep = max(1, self.block_size - room)
        return ids[-keep:]

    # --- decoding ---------------------------------------------------------------------
    @property
    def engine(self):
        with self._engine_lock:
            if self._engine is None:
                from glassgpt.serve.engine import Engine

                # The eval runner's threads wait here rather than in the server's bounded queue.
                self._engine = Engine(self.model, self.tok, name=self.name, max_batch=self.batch_size,
                                      max_queue=1 << 20, device=str(self.device), precision=self.precision)
        return self._engine

    def __call__(self, prompt, max_tokens: Optional[int] = None, temperature: float = 0.0, stop=None, n: int = 1,
                 **_ignored) -> CompletionResult:
        from glassgpt.serve.engine import SamplingParams

        max_new = max(1, int(max_tokens or self.max_tokens))
        if self.block_size:
            max_new = min(max_new, max(1, self.block_size - 1))
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        ids = self._fit(self.encode_prompt(prompt), max_new)
        temperature = float(temperature or 0.0)
        extras = self._chat_sampling(prompt)
        completions, n_tokens = [], 0
        left = max(1, int(n or 1))
        while left:  # the engine takes at most batch_size choices per request
            k = min(left, self.batch_size)
            left -= k
            seed = int(self.torch.randint(0, 2**62, (1,), generator=self.gen)) if temperature > 0 else None
            out = self.engine.generate(ids, SamplingParams(max_tokens=max_new, temperature=temperature, stop=stops,
                                                           n=k, seed=seed, **extras))
            completions += [c["text"] for c in out["choices"]]
            n_tokens += out["completion_tokens"]
        usage = {"prompt_tokens": len(ids), "completion_tokens": n_tokens, "total_tokens": len(ids) + n_tokens}
        record_sampling(prompt=prompt, sampled=completions, model=self.name, usage=usage)
        return CompletionResult(completions, usage=usage, prompt=prompt)

    def _chat_sampling(self, prompt) -> dict:
        """What the API adds to a chat request to a chat-tuned model that leaves it unset (DRY:
        chat.DEFAULT_SAMPLING), so a local eval scores what `glassgpt serve` answers."""
        from glassgpt.config import CHAT_STAGES
        from glassgpt.data.chat import DEFAULT_SAMPLING

        if is_chat_prompt(prompt) and self.chat and self.engine.stage in CHAT_STAGES:
            return dict(DEFAULT_SAMPLING)
        return {}

    # --- scoring ----------------------------------------------------------------------
    def loglikelihood(self, requests):
        """[(context, continuation)] -> [(sum log p(continuation | context), is_greedy)]."""
        torch = self.torch
        items = []
        for context, continuation in requests:
            ctx = ([self.bos_id] if self.bos_id is not None else []) + list(self.tok.encode(context))
            cont = list(self.tok.encode(continuation))
            if not cont:
                items.append(None)
                continue
            full = ctx + cont
            if self.block_size is not None and len(full) > self.block_size + 1:
                full = full[-(self.block_size + 1):]
            items.append((full, len(cont)))
        out: list = [None] * len(items)
        todo = [i for i, it in enumerate(items) if it is not None]
        for i, it in enumerate(items):
            if it is None:
                out[i] = (0.0, True)
        with self._model_lock, torch.no_grad():
            for s in range(0, len(todo), self.batch_size):
                chunk = todo[s: s + self.batch_size]
                T = max(len(items[i][0]) - 1 for i in chunk)
                x = torch.zeros((len(chunk), T), dtype=torch.long)
                for r, i in enumerate(chunk):
                    full = items[i][0]
                    x[r, : len(full) - 1] = torch.tensor(full[:-1])
                with self._autocast():
                    logits = self.model(x.to(self.device))
                if isinstance(logits, tuple):
                    logits = logits[0]
                logp = torch.log_softmax(logits.float(), dim=-1).cpu()
                for r, i in enumerate(chunk):
                    full, n_cont = items[i]
                    L = len(full) - 1
                    tgt = torch.tensor(full[1:])
                    pos = torch.arange(L - n_cont, L)
                    lp = logp[r, pos, tgt[pos]]
                    greedy = bool((logp[r, pos].argmax(-1) == tgt[pos]).all())
                    out[i] = (float(lp.sum()), greedy)
        return out

    def loglikelihood_rolling(self, texts) -> list[float]:
        """Total log p(text) over all its tokens, in disjoint windows of the context length
        (the first window starts after bos). Used for bits per byte."""
        torch = self.torch
        windows = []  # (text index, input ids, target ids)
        for t, text in enumerate(texts):
            ids = ([self.bos_id] if self.bos_id is not None else []) + list(self.tok.encode(text))
            W = self.block_size or max(1, len(ids) - 1)
            for s in range(0, max(0, len(ids) - 1), W):
                windows.append((t, ids[s: s + W], ids[s + 1: s + W + 1]))
        totals = [0.0] * len(texts)
        with self._model_lock, torch.no_grad():
            for s in range(0, len(windows), self.batch_size):
                chunk = windows[s: s + self.batch_size]
                T = max(len(w[1]) for w in chunk)
                x = torch.zeros((len(chunk), T), dtype=torch.long)
                for r, (_, inp, _) in enumerate(chunk):
                    x[r, : len(inp)] = torch.tensor(inp)
                with self._autocast():
                    logits = self.model(x.to(self.device))
                if isinstance(logits, tuple):
                    logits = logits[0]
                logp = torch.log_softmax(logits.float(), dim=-1).cpu()
                for r, (t, inp, tgt) in enumerate(chunk):
                    n = len(tgt)
                    totals[t] += float(logp[r, torch.arange(n), torch.tensor(tgt)].sum())
        return totals
