"""A glassgpt checkpoint as a completion function: in-process and batched.

Threads of the eval runner each ask for one completion; a single worker thread
gathers whatever requests are waiting (up to `batch_size`) and decodes them together.
Sequences are right-padded: with causal attention the padding after a row's last
real token cannot change that row's logits, so a batched answer equals the answer
the same request gets alone (tested).

Relies only on: `model(idx[B,T]) -> logits[B,T,V]`, `tokenizer.encode/decode`,
`tokenizer.bos_id`, optionally `tokenizer.eos_id` and `tokenizer.render_chat(messages)`.
torch and the checkpoint loader are imported lazily.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
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
                 batch_wait_s: float = 0.005, block_size: Optional[int] = None, chat: Optional[bool] = None,
                 seed: int = 0):
        import torch

        self.torch = torch
        self.model = model
        self.tok = tokenizer
        self.name = name
        self.cache_id = name
        self.max_tokens = int(max_tokens)
        self.batch_size = max(1, int(batch_size))
        self.batch_wait_s = float(batch_wait_s)
        self.block_size = block_size or _block_size(model, cfg)
        self.chat = chat if chat is not None else hasattr(tokenizer, "render_chat")
        self.is_chat = self.chat
        try:
            self.device = next(model.parameters()).device
        except (AttributeError, StopIteration):
            self.device = torch.device("cpu")
        self.gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.eos_id = getattr(tokenizer, "eos_id", None)
        self.bos_id = getattr(tokenizer, "bos_id", None)
        # generation ends at end-of-text, a new document (bos) or the end of the assistant turn
        special = getattr(tokenizer, "special", None) or {}
        self.stop_ids = {i for i in (self.eos_id, self.bos_id, special.get("<|assistant_end|>")) if i is not None}
        self._queue: "queue.Queue" = queue.Queue()
        self._worker: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self.batches: list[int] = []  # batch sizes actually run (for tests and stats)
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

    # --- batched decoding -----------------------------------------------------------
    def _ensure_worker(self):
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="glassgpt-local-batcher", daemon=True)
                self._worker.start()

    def _loop(self):
        while True:
            first = self._queue.get()
            batch = [first]
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get(timeout=self.batch_wait_s))
                except queue.Empty:
                    break
            try:
                outs = self._generate_batch([(r[0], r[1], r[2], r[3]) for r in batch])
                for r, o in zip(batch, outs):
                    r[4].set_result(o)
            except BaseException as e:  # hand the failure to every waiting caller
                for r in batch:
                    if not r[4].done():
                        r[4].set_exception(e)

    def _generate_batch(self, reqs):
        """reqs: [(ids, max_new, temperature, stops)] -> [text]."""
        torch = self.torch
        self.batches.append(len(reqs))
        B = len(reqs)
        rows = [list(r[0]) for r in reqs]
        max_new = [int(r[1]) for r in reqs]
        total = max(len(r) + m for r, m in zip(rows, max_new))
        buf = torch.zeros((B, total), dtype=torch.long)
        for i, r in enumerate(rows):
            buf[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        cur = [len(r) for r in rows]
        start = list(cur)
        done = [m <= 0 for m in max_new]
        texts = [""] * B
        with self._model_lock, torch.no_grad():
            while not all(done):
                T = max(c for c, d in zip(cur, done) if not d)
                logits = self.model(buf[:, :T].to(self.device))
                if isinstance(logits, tuple):
                    logits = logits[0]
                for i in range(B):
                    if done[i]:
                        continue
                    lg = logits[i, cur[i] - 1].float().cpu()
                    temp = float(reqs[i][2] or 0.0)
                    if temp <= 0:
                        nxt = int(torch.argmax(lg))
                    else:
                        probs = torch.softmax(lg / temp, dim=-1)
                        nxt = int(torch.multinomial(probs, 1, generator=self.gen))
                    if nxt in self.stop_ids:
                        done[i] = True
                        continue
                    buf[i, cur[i]] = nxt
                    cur[i] += 1
                    if cur[i] - start[i] >= max_new[i]:
                        done[i] = True
                    stops = reqs[i][3]
                    if stops:
                        text = self.tok.decode(buf[i, start[i]: cur[i]].tolist())
                        if any(s in text for s in stops):
                            done[i] = True
        for i in range(B):
            text = self.tok.decode(buf[i, start[i]: cur[i]].tolist())
            for s in reqs[i][3] or []:
                j = text.find(s)
                if j >= 0:
                    text = text[:j]
            texts[i] = text
        return texts

    def __call__(self, prompt, max_tokens: Optional[int] = None, temperature: float = 0.0, stop=None, n: int = 1,
                 **_ignored) -> CompletionResult:
        max_new = int(max_tokens or self.max_tokens)
        if self.block_size:
            max_new = min(max_new, max(1, self.block_size - 1))
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        ids = self._fit(self.encode_prompt(prompt), max_new)
        self._ensure_worker()
        futures = []
        for _ in range(max(1, int(n or 1))):
            f: Future = Future()
            self._queue.put((ids, max_new, temperature, stops, f))
            futures.append(f)
        completions = [f.result() for f in futures]
        usage = {"prompt_tokens": len(ids), "completion_tokens": sum(len(self.tok.encode(c)) for c in completions)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        record_sampling(prompt=prompt, sampled=completions, model=self.name, usage=usage)
        return CompletionResult(completions, usage=usage, prompt=prompt)

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
        self.batches.append(len(todo))
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
                logits = self.model(x.to(self.device))
                if isinstance(logits, tuple):
                    logits = logits[0]
                logp = torch.log_softmax(logits.float(), dim=-1).cpu()
                for r, (t, inp, tgt) in enumerate(chunk):
                    n = len(tgt)
                    totals[t] += float(logp[r, torch.arange(n), torch.tensor(tgt)].sum())
        return totals
