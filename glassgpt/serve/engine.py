"""The inference engine: batched KV cache, sampling, continuous batching.

One background thread owns the model. Requests wait in a bounded queue; at every token
boundary the scheduler admits waiting requests into free cache *slots*, writes the next
chunk of admitted prompts into the cache (chunked prefill: a 32K prompt is written over many
steps, so it does not stall running streams), then runs one decode step for every running
sequence together, so concurrent users share the forward passes. A sequence leaves the batch
the moment it finishes or its client goes away; its slot is reused by the next request
without waiting for the others.

This is the one decoding path of glassgpt (the API, `glassgpt chat`, the evals' local
completion function and one-off calls such as a vision question all come here). It drives
the model's own forward with the model's `KVCache` `[depth, slots, kv_heads, max_len,
head_dim]`: one slot per running sequence, and every call says which slot each row uses
and where each row starts, so sequences of different lengths share one forward pass.

One-off use, no thread: `Engine(model, tokenizer, device="cpu", max_batch=1).generate(ids,
SamplingParams(max_tokens=n, temperature=0.0), images=[...])` returns `{"choices": [{"text",
"tokens", "finish_reason"}], ...}`. Without `start()` the calling thread runs the scheduler
steps itself until its request is done; the cache (max_batch slots of the whole context) is
allocated at the first prefill, so constructing an engine costs nothing.

Images: a request may carry images (a model with a vision encoder, `model.vision`). Its
prompt holds n_image_tokens(model) `<|image|>` tokens per image; at prefill the engine
thread encodes the images once (`encode_images`) and splices the embeddings in at those
positions (masked_scatter, as GPT.forward does). After that the sequence is an ordinary
row of the KV cache: decode steps and the n choices (which share the one prefill) never
see the images again.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import hashlib
import heapq
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from glassgpt.errors import GlassError
from glassgpt.model.gpt import KVCache
from glassgpt.model.vision import VisionError, check_fits, encode_images, n_image_tokens
from glassgpt.serve.errors import ContextLengthError, OverloadedError, ServeError
from glassgpt.train import dist

log = logging.getLogger(__name__)


def pick_device(device: str | None = None) -> str:
    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass
class SamplingParams:
    max_tokens: int | None = None  # None: up to the context window
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    stop: list[str] = field(default_factory=list)  # up to 4 strings, never in the output
    seed: int | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    echo_logprobs: bool = False  # log-probabilities of the prompt tokens too (legacy echo)
    # Logits processors, applied per sequence in the sampling step (see Engine._process):
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit
    presence_penalty: float = 0.0  # OpenAI's penalties over the tokens this sequence generated
    frequency_penalty: float = 0.0
    # DRY ("don't repeat yourself", as llama.cpp's sampler): a token that would extend a repeat of an
    # earlier stretch of this sequence's own output, L tokens long with L >= dry_allowed_length, loses
    # dry_multiplier * dry_base ** (L - dry_allowed_length) from its logit. Off at 0.
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    constraint: object | None = None  # a grammar.Constraint at its start; each choice gets a copy


@dataclass
class TokenInfo:
    id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob) best first; empty unless asked


@dataclass
class Event:
    """What the engine reports to a request's consumer.

    kind: 'token' (a sampled token: `token`, and `text`, the newly safe-to-show text,
    which may be empty while a stop sequence could still be forming), 'finish'
    (`finish_reason` 'stop' or 'length', and `text` flushed at the end), 'prompt'
    (prompt log-probabilities for echo: `prompt` list of TokenInfo, first has logprob None),
    'error' (`message`)."""

    kind: str
    index: int = 0
    token: TokenInfo | None = None
    text: str = ""
    finish_reason: str | None = None
    prompt: list | None = None
    message: str = ""


class Request:
    """One generation request with n choices. Consumers read events from it."""

    _ids = itertools.count()

    def __init__(self, prompt: list[int], params: SamplingParams, on_event: Callable[[Event], None],
                 images=None):
        self.id = next(self._ids)
        self.prompt = list(prompt)
        self.params = params
        # images for the <|image|> positions, in order: PIL images / bytes / paths / data:
        # URLs (encoded at prefill), or a ready [n·k, d_model] tensor of embeddings. Dropped
        # once the prefill has used them.
        self.images = images
        self._on_event = on_event
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.completion_tokens = 0  # over all choices, updated by the engine as it goes
        self.finished_choices = 0
        self.first_token_at: float | None = None
        self.bias: torch.Tensor | None = None  # params.logit_bias as a dense row, built at the first sample
        self.pending: Callable[[], int] = lambda: 0  # events delivered but not yet read (Engine.stream)

    def cancel(self) -> None:
        """Stop generating at the next token boundary (e.g. the client disconnected)."""
        self.cancelled.set()

    def end_cancelled(self) -> None:
        """A request cancelled before any of its choices ran: each choice finishes 'cancelled'."""
        self.done.set()
        for i in range(self.params.n):
            self.emit(Event("finish", index=i, finish_reason="cancelled"))

    def emit(self, ev: Event) -> None:
        try:
            self._on_event(ev)
        except Exception:  # a consumer that went away must not take the engine down
            log.exception("request %d: event consumer failed", self.id)


def dry_penalties(out: list[int], multiplier: float, base: float, allowed: int, longest: int = 48) -> dict[int, float]:
    """DRY's penalty per token: for each earlier place where the output's latest L tokens occurred
    before (L >= allowed), the token that followed them there would extend the repeat to L + 1.
    The longest match per token counts. Z-function on the reversed output: z[p] is how far the suffix
    ending p tokens back agrees with the output's own suffix, so the whole scan is O(len(out))."""
    r = out[::-1]
    n = len(r)
    z = [0] * n
    lo = hi = 0
    for p in range(1, n):
        k = min(hi - p, z[p - lo]) if p < hi else 0
        while p + k < n and r[k] == r[p + k]:
            k += 1
        z[p] = k
        if p + k > hi:
            lo, hi = p, p + k
    pen: dict[int, float] = {}
    for p in range(1, n):
        length = min(z[p], longest)
        if length >= allowed:
            tok = out[n - p]  # what followed that earlier occurrence
            pen[tok] = max(pen.get(tok, 0.0), multiplier * base ** (length - allowed))
    return pen


class _Seq:
    """One choice of a request, occupying one cache slot."""

    def __init__(self, req: Request, index: int, slot: int, stop_ids: set[int], tokenizer, max_new: int):
        self.req, self.index, self.slot = req, index, slot
        self.length = 0  # positions filled in the slot
        self.generated = 0
        self.max_new = max_new
        self.stop_ids = stop_ids
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # decoded completion so far
        self.sent = 0  # characters of text already emitted
        self.next_token: int | None = None
        p = req.params
        self.gen = None
        if p.seed is not None and p.temperature > 0:
            self.gen = torch.Generator(device="cpu")
            self.gen.manual_seed((int(p.seed) * 1_000_003 + index) % (2**63))
        self.finished = False
        self.constraint = p.constraint.fork() if p.constraint is not None else None
        self.counts: torch.Tensor | None = None  # times each token was generated (for the penalties)
        self.output: list[int] = []  # the tokens generated so far (for DRY)
        self.dry: dict[int, float] = {}  # DRY's penalties for the next token (token id -> amount)

    def holdback(self) -> int:
        """Characters at the end of text that might be the start of a stop sequence."""
        best = 0
        for s in self.req.params.stop:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    best = max(best, k)
                    break
        return best


DEFAULT_KV_MB = 4096  # the KV cache's default ceiling (see Engine.__init__)


@dataclass(eq=False)
class _Prefill:
    """An admitted request whose prompt is being written into its cache slot, chunk by chunk."""

    req: Request
    slots: list[int]
    emb: torch.Tensor | None  # image embeddings, consumed in prompt order
    done: int = 0  # prompt positions written
    used: int = 0  # embedding rows consumed
    echo: list | None = None  # prompt TokenInfos (echo_logprobs)


class Engine:
    """Serves generation requests: from a background thread after `start()`, or stepped by
    the caller of `generate()` when no thread runs (see the module docstring)."""

    def __init__(self, model, tokenizer, cfg=None, name: str = "glassgpt", max_batch: int = 16,
                 max_queue: int = 64, device: str | None = None, max_prefill_per_step: int = 16,
                 precision: str | None = None, prefill_chunk: int = 2048, prefill_share: float | None = 2.0,
                 kv_cache_mb: float | None = None, max_token_rate: float | None = None, threads: int | None = None):
        self.device = pick_device(device) if device is None else device
        # torch's CPU threads for the engine's thread (set there: an OpenMP setting is per thread)
        self.threads = int(threads or torch.get_num_threads())
        self.model = model.to(self.device).eval()
        # precision None: fp32 weights, bf16 autocast and cache on CUDA, fp32 elsewhere. 'bf16': the
        # engine's weights (it owns the model it is given) in bf16, matmuls under bf16 autocast, the KV
        # cache bf16 on CUDA (fp32 on a CPU, below); norm statistics, softmax and sampling stay fp32.
        # 'auto': bf16 where native.
        self.precision = dist.resolve_precision(precision, self.device) if precision else None
        if self.precision == "bf16":
            for p in self.model.parameters():  # parameters only: the RoPE tables stay fp32
                p.data = p.data.to(torch.bfloat16)
        self.tokenizer = tokenizer
        self.mcfg = model.cfg
        self.cfg = cfg
        self.name = name
        self.max_batch = int(max_batch)
        self.max_queue = int(max_queue)
        self.max_prefill_per_step = max(1, int(max_prefill_per_step))
        self.context_window = int(model.cos.size(0))
        on_cuda = str(self.device).startswith("cuda")
        # The KV cache: bf16 on CUDA (fp32 weights there run under bf16 autocast). On a CPU it stays fp32 even
        # with bf16 weights: torch's bf16 attention at decode shapes (one query against hundreds of cached
        # keys) ran ~6x slower than fp32 on an AVX512-bf16 CPU, most of a bf16 decode step (docs/performance.md).
        self.dtype = torch.bfloat16 if on_cuda and self.precision in (None, "bf16") else torch.float32
        # KV-cache memory, accounted before anything is allocated: each running sequence holds one
        # slot of slot_len positions. kv_cache_mb bounds the cache (default: max_batch whole-context
        # slots, at most DEFAULT_KV_MB); a budget under one whole context shortens slot_len, and
        # `check` refuses a request that cannot fit (context_length_exceeded, both numbers) instead
        # of running out of memory at a 32K prompt.
        m = self.mcfg
        self.kv_token_bytes = m.depth * 2 * m.n_kv_heads * m.head_dim * torch.finfo(self.dtype).bits // 8
        budget = (min(self.max_batch * self.context_window * self.kv_token_bytes, DEFAULT_KV_MB << 20)
                  if kv_cache_mb is None else int(kv_cache_mb * 2**20))
        self.slot_len = max(1, min(self.context_window, budget // self.kv_token_bytes))
        self.max_batch = max(1, min(self.max_batch, budget // (self.slot_len * self.kv_token_bytes)))
        self.kv_cache_bytes = self.max_batch * self.slot_len * self.kv_token_bytes
        # Chunked prefill (the idea of vLLM's): a prompt is written prefill_chunk tokens at a time
        # (which also bounds the chunk's mask), and while other sequences decode, each scheduler step
        # gives the prefill about prefill_share times the time of a decode step, sized from the
        # measured cost per prompt token, so a 32K prompt stretches running streams' inter-token
        # gaps by ~(1 + prefill_share)x instead of stalling them for the whole prefill.
        # prefill_share None: always prefill_chunk tokens a step.
        self.prefill_chunk = max(1, int(prefill_chunk))
        # Paced decoding: at most max_token_rate tokens a second per sequence. A small model on a
        # small CPU can decode faster than anyone reads, and then the decode steps and their
        # tokens' HTTP work fill the cores: a new request waits behind them. Paced, the spare time
        # serves new requests at once (a request arriving between steps is prefilled and answered
        # without waiting for the pace). Only the engine's own thread paces (see _loop).
        self.min_step_interval = 1.0 / max_token_rate if max_token_rate else 0.0
        self.prefill_share = prefill_share
        self._t_decode: float | None = None  # seconds per decode step (moving average)
        self._t_token: float | None = None  # seconds per prefill token at the latest context
        self.prefilling: collections.deque[_Prefill] = collections.deque()
        self.cache: KVCache | None = None  # allocated at the first prefill
        # Lowest free slot first (a heap), so running sequences stay packed in slots 0..B-1
        # and a decode step attends over a slice of the cache instead of a gathered copy.
        self.free_slots = list(range(self.max_batch))
        # Waiting requests, one FIFO per owner (an API key), and the owners in the order they
        # get their next turn. See _admit for the fairness rule.
        self.waiting: dict[object, collections.deque[Request]] = {}
        self.turns: collections.deque = collections.deque()
        self.n_waiting = 0
        self.running: list[_Seq] = []
        # A model with an encoder takes images: their embeddings are spliced in at prefill.
        self.has_vision = getattr(model, "vision", None) is not None
        # chat-tuned models get the default system prompt they were tuned under when a client sends none
        self.stage = cfg.stage if cfg is not None else ("vision" if self.has_vision else "base")
        self.image_tokens = n_image_tokens(model)  # <|image|> positions per image (0: text only)
        vision = getattr(model, "vision", None)
        # the encoder's input side: images are decoded at (about) this size, not larger
        self.image_side = int(getattr(getattr(vision, "vc", None), "image_size", 0) or 0)
        self.image_id = tokenizer.image_id
        special = tokenizer.special
        self.end_ids = {special["<|assistant_end|>"], tokenizer.bos_id}
        self._lock = threading.Lock()
        self._step_lock = threading.Lock()  # one scheduler step at a time: the thread's or a caller's
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.max_image = 16 * 1024 * 1024
        self.fingerprint = "fp_" + hashlib.sha256(f"{name}:{self.context_window}:{self.mcfg.d_model}:{self.mcfg.depth}".encode()).hexdigest()[:10]
        self.steps = 0  # decode steps, read by /metrics
        # events for consumers on asyncio loops (stream()), gathered during a step and handed over
        # at its end (_deliver); only the thread holding _step_lock touches it
        self._outbox: collections.defaultdict = collections.defaultdict(list)
        self._max_token_bytes: int | None = None

    @staticmethod
    def own_threads() -> int:
        """Call at start-up, before any torch work, in a process whose torch work runs on engine
        threads (`glassgpt serve`): the calling thread keeps one torch thread, and the count it had
        is returned for the engines (Engine(threads=...)). Once the main thread has run torch on
        several OpenMP threads, another thread's parallel work wakes its threads slowly (more
        OpenMP threads than cores: they stop spinning): a 20M model's decode step took 8.1 ms on
        the engine thread against 4.5 ms on the main one; 4.7 ms once the main thread kept to one
        (docs/performance.md)."""
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        return n

    @classmethod
    def from_checkpoint(cls, path, name: str | None = None, device: str | None = None, **kw) -> "Engine":
        from pathlib import Path

        from glassgpt.train.checkpoint import load_model

        dev = pick_device(device)
        model, tok, cfg = load_model(path, device=dev)
        return cls(model, tok, cfg, name=name or Path(path).resolve().name, device=dev, **kw)

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"engine-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        return self.n_waiting

    @property
    def n_running(self) -> int:
        return len(self.running)

    # --- submission -----------------------------------------------------------------
    @property
    def max_token_bytes(self) -> int:
        """The longest token in bytes: a text of b bytes is at least b / this many tokens."""
        if self._max_token_bytes is None:
            tok = self.tokenizer
            self._max_token_bytes = max(1, max(len(tok.decode_bytes([i])) for i in range(tok.vocab_size)))
        return self._max_token_bytes

    def check_size(self, chars: int, params: SamplingParams, param: str = "messages") -> None:
        """The context check before tokenizing: `chars` characters (each at least one UTF-8
        byte) are at least chars / max_token_bytes tokens. Refuses only what cannot fit."""
        # Only the prompt itself is judged here (with one token of completion); a completion
        # that does not fit is left to `check`, whose message names the exact numbers. What
        # passes is at most context x max_token_bytes characters: cheap to tokenize.
        at_least = -(-chars // self.max_token_bytes)
        if at_least + (0 if params.echo_logprobs else 1) > self.context_window:
            where = "messages" if param == "messages" else "prompt"
            raise ContextLengthError(
                f"This model's maximum context length is {self.context_window} tokens. However, your {where} "
                f"{'are' if where == 'messages' else 'is'} at least {at_least} tokens long ({chars:,} characters). "
                f"Please reduce the length of the {where}.", param=param)

    def check(self, prompt_len: int, params: SamplingParams, param: str | None = None) -> int:
        """Validate lengths; returns the effective max_tokens. param: where the prompt came
        from ('messages' or 'prompt'), named in the error as OpenAI does."""
        room = self.slot_len - prompt_len
        if params.n > self.max_batch:
            raise ServeError(f"n={params.n} exceeds this server's batch of {self.max_batch} sequences", param="n")
        if prompt_len < 1:
            raise ServeError("the prompt is empty", param=param)
        want = params.max_tokens if params.max_tokens is not None else room
        where = "prompt" if param == "prompt" else "messages"
        need = prompt_len + max(want, 0 if params.echo_logprobs else 1)
        if self.slot_len < need <= self.context_window:  # fits the model, not this server's KV cache
            raise ContextLengthError(
                f"This server's KV cache holds {self.slot_len} tokens per sequence ({self.kv_cache_bytes / 2**20:.0f} MB), "
                f"less than the model's context of {self.context_window} tokens. However, you requested "
                f"{need} tokens ({prompt_len} in the {where}, {need - prompt_len} in the completion). "
                f"Please reduce the length of the {where} or completion.", param=param)
        if room < 0 or prompt_len + want > self.context_window or (want == 0 and not params.echo_logprobs):
            raise ContextLengthError(
                f"This model's maximum context length is {self.context_window} tokens. However, you requested "
                f"{prompt_len + want} tokens ({prompt_len} in the {where}, {want} in the completion). "
                f"Please reduce the length of the {where} or completion.", param=param)
        return want

    def check_images(self, prompt: list[int], images) -> None:
        """A request with images: the model must take images and the prompt must hold
        exactly n_image_tokens <|image|> positions per image."""
        if images is None:
            return
        if not self.has_vision:
            raise ServeError(f"The model `{self.name}` has no image input (no vision encoder); send text only.",
                             code="image_input_not_supported")
        n = int(images.size(0)) // self.image_tokens if isinstance(images, torch.Tensor) else len(images)
        slots = sum(1 for t in prompt if t == self.image_id)
        if isinstance(images, torch.Tensor) and (images.dim() != 2 or images.size(0) % self.image_tokens
                                                 or images.size(1) != self.mcfg.d_model):
            raise ServeError(f"image embeddings must be [n·{self.image_tokens}, {self.mcfg.d_model}], "
                             f"not {list(images.shape)}")
        if slots != n * self.image_tokens:
            raise ServeError(f"the prompt has {slots} <|image|> positions but {n} image(s) need "
                             f"{n * self.image_tokens} ({self.image_tokens} each); render it with "
                             f"n_image_tokens={self.image_tokens}")

    def submit(self, prompt: list[int], params: SamplingParams, on_event: Callable[[Event], None],
               images=None, owner=None) -> Request:
        """Queue a request. images: one per image in the prompt (see Request.images); the
        prompt must come from render_chat(..., n_image_tokens=engine.image_tokens).
        owner: who asked (an API key id); owners share the batch fairly (see _admit)."""
        params.max_tokens = self.check(len(prompt), params)
        self.check_images(prompt, images)
        if images is not None and not isinstance(images, torch.Tensor) and len(images) == 0:
            images = None
        req = Request(prompt, params, on_event, images=images)
        req.owner = owner
        with self._lock:
            # max_queue bounds each owner's waiting requests (one 64-prompt request must not
            # fill the queue for everyone), and 4 x max_queue bounds them all.
            mine = len(self.waiting.get(owner, ()))
            if mine >= self.max_queue or self.n_waiting >= 4 * self.max_queue:
                raise OverloadedError(f"the server is overloaded ({self.n_waiting} requests waiting, {mine} of them "
                                      "yours); retry shortly")
            self.n_waiting += 1
            if owner not in self.waiting:
                self.waiting[owner] = collections.deque()
                self.turns.append(owner)
            self.waiting[owner].append(req)
        self._wake.set()
        return req

    def generate(self, prompt: list[int], params: SamplingParams, timeout: float | None = None, images=None) -> dict:
        """Blocking: {'choices': [{'text', 'tokens', 'finish_reason'}], 'prompt_logprobs', ...}.
        Without a running engine thread (no `start()`), the caller runs the steps itself."""
        events: "queue.Queue[Event]" = queue.Queue()
        req = self.submit(prompt, params, events.put, images=images)
        choices = [{"text": "", "tokens": [], "finish_reason": None} for _ in range(params.n)]
        prompt_lp = None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                ev = events.get(timeout=0.05) if self.alive else events.get_nowait()
            except queue.Empty:
                if deadline is not None and time.monotonic() > deadline:
                    req.cancel()
                    raise ServeError(f"generation timed out after {timeout}s") from None
                if not self.alive:  # no engine thread: this caller runs the steps
                    with self._step_lock:
                        self._step()
                continue
            if ev.kind == "token":
                choices[ev.index]["tokens"].append(ev.token)
                choices[ev.index]["text"] += ev.text
            elif ev.kind == "finish":
                choices[ev.index]["text"] += ev.text
                choices[ev.index]["finish_reason"] = ev.finish_reason
            elif ev.kind == "prompt":
                prompt_lp = ev.prompt
            elif ev.kind == "error":
                raise ServeError(ev.message)
            if all(c["finish_reason"] for c in choices) and req.done.is_set():
                break
        return {"choices": choices, "prompt_logprobs": prompt_lp, "prompt_tokens": len(prompt),
                "completion_tokens": req.completion_tokens}

    def generate_batch(self, prompts: list[list[int]], params: list[SamplingParams], images: list | None = None
                       ) -> list[list[dict]]:
        """Many requests at once, stepped by the calling thread (no engine thread may run): per request
        its choices [{'text', 'tokens' (TokenInfo), 'finish_reason'}]. The same prompts, weights and
        seeds give the same batches and so the same tokens every time (RL rollouts resume exactly).
        images: per request, its images or None (as `submit` takes them)."""
        if self.alive:
            raise ServeError("generate_batch steps the engine itself; stop the engine thread first")
        outs = [[{"text": "", "tokens": [], "finish_reason": None} for _ in range(p.n)] for p in params]
        errors: list[str] = []

        def consumer(k):
            def on_event(ev):
                c = outs[k][ev.index]
                if ev.kind == "token":
                    c["tokens"].append(ev.token)
                    c["text"] += ev.text
                elif ev.kind == "finish":
                    c["text"] += ev.text
                    c["finish_reason"] = ev.finish_reason
                elif ev.kind == "error":
                    errors.append(ev.message)
            return on_event

        images = images or [None] * len(prompts)
        reqs = [self.submit(pr, pa, consumer(k), images=im) for k, (pr, pa, im) in enumerate(zip(prompts, params, images))]
        while not all(r.done.is_set() for r in reqs):
            with self._step_lock:
                self._step()
            if errors:
                raise ServeError(errors[0])
        return outs

    async def stream(self, prompt: list[int], params: SamplingParams, images=None, owner=None):
        """Async iterator of Events for one request; cancelling the iteration cancels the request.
        Raises OverloadedError / ContextLengthError before the first event."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        req = self.submit(prompt, params, lambda ev: self._outbox[loop].append((q, ev)), images=images, owner=owner)
        req.pending = q.qsize
        return req, self._drain(req, q)

    def _deliver(self) -> None:
        """Hand the events of this step to the event loops waiting for them: one wake-up per loop
        per step (a wake-up per token was a system call and a GIL hand-over each)."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, collections.defaultdict(list)
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop has closed: nobody is listening
                pass

    async def _drain(self, req: Request, q: asyncio.Queue):
        finished = 0
        try:
            while finished < req.params.n:
                ev = await q.get()
                if ev.kind == "finish":
                    finished += 1
                yield ev
                if ev.kind == "error":
                    return
        finally:
            req.cancel()

    def _autocast(self):
        return dist.autocast(self.device, self.precision)

    # --- sampling -----------------------------------------------------------------------
    def _process(self, seq: _Seq, logits: torch.Tensor) -> torch.Tensor:
        """The logits this sequence samples from: the request's logit_bias added, OpenAI's
        penalties subtracted (logit[j] -= count[j] * frequency + (count[j] > 0) * presence, over
        the tokens generated so far in this sequence), and the tokens its grammar forbids masked."""
        p = seq.req.params
        if p.logit_bias:
            bias = seq.req.bias
            if bias is None:  # built once per request, shared by its choices
                bias = torch.zeros_like(logits)
                ids = torch.tensor(list(p.logit_bias), dtype=torch.long)
                bias[ids.to(logits.device)] = torch.tensor(list(p.logit_bias.values()), dtype=logits.dtype,
                                                           device=logits.device)
                seq.req.bias = bias
            logits = logits + bias
        if seq.counts is not None and (p.presence_penalty or p.frequency_penalty):
            logits = logits - seq.counts * p.frequency_penalty - (seq.counts > 0).to(logits.dtype) * p.presence_penalty
        if seq.dry:
            ids = torch.tensor(list(seq.dry), dtype=torch.long, device=logits.device)
            logits = logits.clone()
            logits[ids] -= torch.tensor(list(seq.dry.values()), dtype=logits.dtype, device=logits.device)
        if seq.constraint is not None:
            logits = seq.constraint.mask(logits)
        return logits

    @staticmethod
    def _plain(seq: _Seq, vocab: int) -> bool:
        """Sampled with temperature alone (or greedy): no processor, filter or own generator."""
        p = seq.req.params
        return (not p.logit_bias and not p.presence_penalty and not p.frequency_penalty and not seq.dry
                and seq.constraint is None
                and seq.gen is None and (not p.top_k or p.top_k >= vocab) and p.top_p >= 1.0)

    def _sample_one(self, seq: _Seq, logits: torch.Tensor) -> int:
        """One row with processors, top-k/top-p or a seed."""
        p = seq.req.params
        logits = self._process(seq, logits)
        if p.temperature < 1e-4:  # greedy (a tiny temperature would overflow the softmax)
            return int(torch.argmax(logits))
        lg = logits / p.temperature
        if p.top_k and p.top_k < lg.numel():
            kth = torch.topk(lg, p.top_k).values[-1]
            lg = lg.masked_fill(lg < kth, float("-inf"))
        probs = F.softmax(lg, dim=-1)
        if p.top_p < 1.0:
            sp, si = torch.sort(probs, descending=True)
            cum = torch.cumsum(sp, 0)
            drop = cum - sp > p.top_p  # keep the smallest prefix whose mass reaches top_p
            sp = sp.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(0, si, sp)
        probs = probs.cpu()
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
            return int(torch.argmax(logits))
        return int(torch.multinomial(probs, 1, generator=seq.gen))

    def _sample(self, seqs: list[_Seq], logits: torch.Tensor) -> list[TokenInfo]:
        """The next token of each sequence from its row of logits [B, V]. Rows that need only a
        temperature (or greedy) are sampled together in a few batched calls: one by one, a
        32-row decode step of a small model spent more time sampling than in the model. Rows
        with processors, top-k/top-p or a seed go one by one (_sample_one)."""
        V = logits.size(-1)
        # Log-probabilities are the model's own (before bias, penalties and grammar), as reported.
        logp = F.log_softmax(logits, dim=-1)
        toks: list[int | None] = [None] * len(seqs)
        plain = [i for i, s in enumerate(seqs) if self._plain(s, V)]
        if plain:
            rows = logits[torch.tensor(plain, device=logits.device)]
            temps = torch.tensor([seqs[i].req.params.temperature for i in plain], device=logits.device)
            best = rows.argmax(-1)
            pick = best
            sampled = temps >= 1e-4  # below: greedy (a tiny temperature would overflow the softmax)
            if bool(sampled.any()):
                probs = F.softmax(rows / temps.clamp_min(1e-4)[:, None], dim=-1)
                ok = sampled & torch.isfinite(probs).all(-1) & (probs.sum(-1) > 0)
                probs = torch.where(ok[:, None], probs, torch.ones_like(probs))  # bad rows: argmax below
                pick = torch.where(ok, torch.multinomial(probs, 1).squeeze(1), best)
            for i, t in zip(plain, pick.tolist()):
                toks[i] = t
        for i, s in enumerate(seqs):
            if toks[i] is None:
                toks[i] = self._sample_one(s, logits[i])
        chosen = logp.gather(1, torch.tensor(toks, device=logp.device)[:, None]).squeeze(1).tolist()
        out = []
        for i, s in enumerate(seqs):
            k = s.req.params.top_logprobs
            top = []
            if k:
                vals, idx = torch.topk(logp[i], min(k, V))
                top = list(zip(idx.tolist(), vals.tolist()))
            out.append(TokenInfo(toks[i], chosen[i], top))
        return out

    # --- the scheduler --------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        next_decode = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            due = now >= next_decode
            with self._step_lock:
                busy = self._step(decode=due)
            if due and self.running:
                next_decode = now + self.min_step_interval
            if not busy:
                self._wake.wait(timeout=0.05)
                self._wake.clear()
            elif self.min_step_interval and not (self.n_waiting or self.prefilling):
                # paced: nothing to do until the next decode step is due, unless a request comes
                self._wake.wait(timeout=max(0.0, next_decode - time.monotonic()))
                self._wake.clear()

    @torch.no_grad()
    def _step(self, decode: bool = True) -> bool:
        """Admit waiting requests, write up to prefill_chunk prompt tokens into the cache, then
        (if `decode`: a paced engine thread skips it until due) one decode step for every running
        sequence. Returns whether any work remains."""
        try:
            self._admit()
            self._prefill_chunks()
            self._deliver()  # first tokens out now, not after the decode step: time to first token
            if self.running and decode:
                self._decode_step()
        except Exception as e:  # never let one bad batch kill the server
            log.exception("engine step failed")
            for seq in list(self.running):
                self._finish(seq, None, error=f"internal engine error: {e}")
        finally:
            self._deliver()
        return bool(self.running or self.prefilling)

    def _next_request(self) -> Request | None:
        """Take the next request to admit, or None (nothing waits, or its slots are not free).

        Fairness: the owner with the fewest running sequences goes next, ties to whoever
        was served least recently, so a request's n x prompts count against its owner's
        share: while one key runs 64 prompts x n=16, another key's request is admitted as
        soon as a slot frees, not after all of them. Within an owner, first come first
        served. The chosen request waits until all its n slots are free (no owner is
        skipped for one with a smaller request, so a large request cannot starve)."""
        cancelled = []
        with self._lock:
            for owner in list(self.turns):  # drop requests whose clients went away meanwhile
                q = self.waiting[owner]
                keep = collections.deque(r for r in q if not r.cancelled.is_set())
                if len(keep) != len(q):
                    cancelled += [r for r in q if r.cancelled.is_set()]
                    self.n_waiting -= len(q) - len(keep)
                    self.waiting[owner] = keep
                if not keep:
                    del self.waiting[owner]
                    self.turns.remove(owner)
            req = None
            if self.turns:
                running = collections.Counter([s.req.owner for s in self.running] +
                                              [pf.req.owner for pf in self.prefilling for _ in pf.slots])
                owner = min(self.turns, key=lambda o: running[o])  # min keeps the first of equals
                q = self.waiting[owner]
                if len(self.free_slots) >= q[0].params.n:
                    req = q.popleft()
                    self.n_waiting -= 1
                    self.turns.remove(owner)
                    if q:
                        self.turns.append(owner)  # served: to the back of the line
                    else:
                        del self.waiting[owner]
        for r in cancelled:
            r.end_cancelled()
        return req

    def _admit(self) -> None:
        admitted = 0
        while admitted < self.max_prefill_per_step:
            req = self._next_request()
            if req is None:
                return
            try:
                self._prefill(req)
            except GlassError as e:  # e.g. an image the encoder refused: the request's fault
                log.warning("request %d: %s", req.id, e)
                req.done.set()
                req.emit(Event("error", message=str(e)))
            except Exception as e:
                log.exception("prefill failed")
                req.done.set()
                req.emit(Event("error", message=f"internal engine error: {e}"))
            admitted += 1

    def _image_embeds(self, req: Request) -> torch.Tensor | None:
        """Encode the request's images once (on the engine thread, which owns the model)."""
        images, req.images = req.images, None
        if images is None:
            return None
        if isinstance(images, torch.Tensor):
            return images.to(self.device)
        return encode_images(self.model, images)

    def _prefill(self, req: Request) -> None:
        """Admit req: encode its images, take its n slots and queue its prompt for prefilling."""
        emb = self._image_embeds(req)  # before taking slots: a failure here leaks nothing
        slots = [heapq.heappop(self.free_slots) for _ in range(req.params.n)]
        if self.cache is None:
            try:
                self.cache = KVCache(self.mcfg, self.max_batch, self.slot_len, self.device, self.dtype)
            except BaseException:
                for s in slots:
                    heapq.heappush(self.free_slots, s)
                raise
        self.prefilling.append(_Prefill(req, slots, emb, echo=[TokenInfo(req.prompt[0], None, [])]
                                        if req.params.echo_logprobs else None))

    def _prefill_chunks(self) -> None:
        """Write the next prompt tokens into the cache: up to prefill_chunk tokens this step
        (while others decode, about prefill_share decode steps' worth), first admitted first.
        Short prompts finish in one step, several in one forward call; a long one goes on at
        the next step, after a decode step."""
        budget = self.prefill_chunk
        if self.running and self.prefill_share and self._t_decode and self._t_token:
            # no floor of many tokens: deep in a 32K prompt one token's attention costs about a
            # decode step, so a 16-token floor, not prefill_share, set the streams' gaps there
            budget = int(min(budget, max(1, self.prefill_share * self._t_decode / self._t_token)))
        # a call that used the whole budget measures the cost per token, its per-call part included:
        # then budget·cost converges on the chunk that takes prefill_share decode steps, as the
        # context (and each token's attention) grows. A prompt's short tail would overstate it.
        measure = min(256, budget)
        plan = []
        for pf in list(self.prefilling):
            if pf.req.cancelled.is_set():
                self.prefilling.remove(pf)
                self._release(pf)
                pf.req.end_cancelled()
            elif budget > 0:
                n = min(len(pf.req.prompt) - pf.done, budget)
                plan.append((pf, n))
                budget -= n
        for group in self._groups(plan):
            t0 = time.perf_counter()
            try:
                lasts = self._prefill_rows(group)
            except Exception as e:
                if len(group) > 1:  # find the culprit: the others go on alone
                    lasts = [self._prefill_alone(pf, n) for pf, n in group]
                else:
                    self._prefill_failed(group[0][0], e)
                    continue
            n = sum(k for _, k in group)
            if n >= measure:  # the cost grows with the context: the latest counts
                self._t_token = (time.perf_counter() - t0) / n
            done = [(pf, last) for (pf, _), last in zip(group, lasts) if last is not None]
            for pf, _ in done:
                self.prefilling.remove(pf)
            self._start(done)

    def _groups(self, plan: list[tuple[_Prefill, int]]) -> list[list[tuple[_Prefill, int]]]:
        """Rows that share one forward call, padded to the longest: while the padding costs at most
        about what the rows themselves do. A request that wants its prompt's log-probabilities
        (every position's logits) goes alone."""
        groups, cur = [], []
        for pf, n in plan:
            if pf.req.params.echo_logprobs:
                groups.append([(pf, n)])
                continue
            trial = cur + [(pf, n)]
            T = max(k for _, k in trial)
            if cur and (len(trial) * T > 2 * sum(k for _, k in trial) + 64
                        or any(p.done + T > self.slot_len for p, _ in trial)):
                groups.append(cur)
                trial = [(pf, n)]
            cur = trial
        return groups + ([cur] if cur else [])

    def _prefill_alone(self, pf: _Prefill, n: int) -> torch.Tensor | None:
        try:
            return self._prefill_rows([(pf, n)])[0]
        except Exception as e:
            self._prefill_failed(pf, e)
            return None

    def _prefill_failed(self, pf: _Prefill, e: Exception) -> None:
        if pf in self.prefilling:
            self.prefilling.remove(pf)
        self._release(pf)
        if not isinstance(e, GlassError):
            log.error("prefill failed", exc_info=e)
        pf.req.done.set()
        pf.req.emit(Event("error", message=str(e) if isinstance(e, GlassError) else f"internal engine error: {e}"))

    def _release(self, pf: _Prefill) -> None:
        for s in pf.slots:  # give the slots back: the request never ran
            heapq.heappush(self.free_slots, s)

    def _prefill_rows(self, group: list[tuple[_Prefill, int]]) -> list[torch.Tensor | None]:
        """Write positions pf.done..+n of each row's prompt in one forward call (rows padded at the
        end: the padding's cache positions are never attended to, and are overwritten by the
        next chunk or token). Returns each row's last logits once its whole prompt is in, else None."""
        T = max(n for _, n in group)
        ids, embs = [], []
        for pf, n in group:
            chunk = pf.req.prompt[pf.done:pf.done + n]
            if pf.emb is not None:
                k = sum(1 for t in chunk if t == self.image_id)
                if k:
                    embs.append(pf.emb[pf.used:pf.used + k])
                pf.used += k
            ids.append(chunk + [0] * (T - n))
        echo = group[0][0].req.params.echo_logprobs  # such a row is alone (_groups)
        with self._autocast():
            logits = self.model(torch.tensor(ids, dtype=torch.long, device=self.device),
                                image_embeds=torch.cat(embs) if embs else None, cache=self.cache,
                                slots=[pf.slots[0] for pf, _ in group], starts=[pf.done for pf, _ in group],
                                last=False if echo else [n - 1 for _, n in group]).float()
        if echo:  # row i predicts prompt position a+i+1
            pf, n = group[0]
            req, p, a = pf.req, pf.req.params, pf.done
            lp = F.log_softmax(logits[0], dim=-1)
            for i in range(min(n, len(req.prompt) - a - 1)):
                t = req.prompt[a + i + 1]
                top = []
                if p.top_logprobs:
                    vals, idx = torch.topk(lp[i], min(p.top_logprobs, lp.size(-1)))
                    top = list(zip(idx.tolist(), vals.tolist()))
                pf.echo.append(TokenInfo(t, float(lp[i, t]), top))
            logits = logits[:, n - 1]
        out = []
        for (pf, n), row in zip(group, logits):
            pf.done += n
            out.append(row if pf.done == len(pf.req.prompt) else None)
        return out

    def _start(self, done: list[tuple[_Prefill, torch.Tensor]]) -> None:
        """These prompts are in: their n choices start decoding from the last position's logits."""
        seqs, rows = [], []
        for pf, last in done:
            req, p = pf.req, pf.req.params
            pf.emb = None
            if p.echo_logprobs:
                req.emit(Event("prompt", prompt=pf.echo))
            mine = [_Seq(req, i, s, self.end_ids, self.tokenizer, p.max_tokens) for i, s in enumerate(pf.slots)]
            for s in mine[1:]:  # n choices share one prefill
                self.cache.copy_slot(pf.slots[0], s.slot, len(req.prompt))
            for s in mine:
                s.length = len(req.prompt)
                if s.max_new == 0:
                    self._finish(s, "length")
                    continue
                self.running.append(s)
                seqs.append(s)
                rows.append(last)
        if seqs:
            self._advance(seqs, torch.stack(rows))

    def _decode_step(self) -> None:
        seqs = [s for s in self.running if not self._cancelled(s)]
        if not seqs:
            return
        lo, hi = min(s.slot for s in seqs), max(s.slot for s in seqs) + 1
        # the slots of prompts still being prefilled (chunk by chunk) must not get a dummy row
        if hi - lo <= 2 * len(seqs) and not any(lo <= i < hi for pf in self.prefilling for i in pf.slots):
            # Every slot in lo..hi-1 gets a row, so the model reads a slice of the cache, not a
            # gathered copy; free slots ride along with a dummy token at position 0
            # (overwritten by the next prefill that takes the slot, never read).
            by_slot = {s.slot: s for s in seqs}
            rows = [by_slot.get(i) for i in range(lo, hi)]
        else:
            rows = sorted(seqs, key=lambda s: s.slot)
        toks = torch.tensor([[s.next_token if s else 0] for s in rows], dtype=torch.long, device=self.device)
        slots = [s.slot if s else lo + i for i, s in enumerate(rows)]
        starts = [s.length if s else 0 for s in rows]
        t0 = time.perf_counter()
        with self._autocast():
            logits = self.model(toks, cache=self.cache, slots=slots, starts=starts, last=True).float()
        dt = time.perf_counter() - t0
        self._t_decode = dt if self._t_decode is None else 0.8 * self._t_decode + 0.2 * dt
        self.steps += 1
        live = [i for i, s in enumerate(rows) if s is not None]
        for i in live:
            rows[i].length += 1
        self._advance([rows[i] for i in live], logits[torch.tensor(live, device=logits.device)]
                      if len(live) < len(rows) else logits)

    def _cancelled(self, s: _Seq) -> bool:
        if s.req.cancelled.is_set():
            self._finish(s, "cancelled")
            return True
        return False

    def _advance(self, seqs: list[_Seq], logits: torch.Tensor) -> None:
        """Sample the next token of each sequence from its row of logits and emit what became
        safe to show."""
        for s, info in zip(seqs, self._sample(seqs, logits)):
            self._accept(s, info, logits.size(-1))

    def _accept(self, s: _Seq, info: TokenInfo, vocab: int) -> None:
        req = s.req
        if info.id in s.stop_ids:  # the chat end token: not content, not counted
            self._finish(s, "stop")
            return
        if s.constraint is not None and not s.constraint.accept(info.id):
            self._finish(s, None, error="internal engine error: the grammar refused the sampled token")
            return
        if req.params.presence_penalty or req.params.frequency_penalty:
            if s.counts is None:
                s.counts = torch.zeros(vocab, dtype=torch.float32, device=self.device)
            s.counts[info.id] += 1
        if req.params.dry_multiplier:  # the next step's penalties: a row without any samples with the batch
            s.output.append(info.id)
            s.dry = dry_penalties(s.output, req.params.dry_multiplier, req.params.dry_base,
                                  req.params.dry_allowed_length)
        s.generated += 1
        req.completion_tokens += 1
        if req.first_token_at is None:
            req.first_token_at = time.time()
        s.text += s.decoder.decode(self.tokenizer.decode_bytes([info.id]))
        stop_at = -1
        for st in req.params.stop:
            i = s.text.find(st, max(0, s.sent - len(st)))
            if i >= 0 and (stop_at < 0 or i < stop_at):
                stop_at = i
        if stop_at >= 0:
            s.text = s.text[:stop_at]
            req.emit(Event("token", index=s.index, token=info, text=""))
            self._finish(s, "stop", flush=False)
            return
        safe = len(s.text) - s.holdback()
        delta = s.text[s.sent:safe] if safe > s.sent else ""
        s.sent = max(s.sent, safe)
        req.emit(Event("token", index=s.index, token=info, text=delta))
        if s.constraint is not None and s.constraint.complete:  # the grammar admits nothing more
            self._finish(s, "stop")
            return
        if s.generated >= s.max_new or s.length >= self.context_window:
            self._finish(s, "length")
            return
        s.next_token = info.id

    def _finish(self, s: _Seq, reason: str | None, error: str | None = None, flush: bool = True) -> None:
        if s.finished:
            return
        s.finished = True
        if s in self.running:
            self.running.remove(s)
        heapq.heappush(self.free_slots, s.slot)
        req = s.req
        req.finished_choices += 1
        if req.finished_choices >= req.params.n:
            req.done.set()
        if error:
            req.emit(Event("error", index=s.index, message=error))
            return
        if reason != "cancelled" and flush:
            s.text += s.decoder.decode(b"", final=True)
        tail = s.text[s.sent:] if reason != "cancelled" else ""
        s.sent = len(s.text)
        req.emit(Event("finish", index=s.index, finish_reason=reason, text=tail))


def _put_all(items: list) -> None:
    for q, ev in items:
        q.put_nowait(ev)


def token_text(tokenizer, tid: int) -> str:
    return tokenizer.decode_bytes([tid]).decode("utf-8", errors="replace")


def token_bytes(tokenizer, tid: int) -> list[int]:
    return list(tokenizer.decode_bytes([tid]))


def image_parts(messages: list[dict]) -> tuple[list[dict], list]:
    """Chat messages with their `image_url` (or `image`) parts as image placeholders for render_chat,
    and the images (data: URLs or paths) in prompt order."""
    rendered, images = [], []
    for m in messages:
        content = m.get("content", "")
        if isinstance(content, str):
            rendered.append(m)
            continue
        parts = []
        for p in content:
            if p.get("type") == "image_url":
                images.append((p.get("image_url") or {}).get("url", ""))
                parts.append({"type": "image"})
            elif p.get("type") == "image":
                images.append(p.get("path") or p.get("url", ""))
                parts.append({"type": "image"})
            else:
                parts.append(p)
        rendered.append({**m, "content": parts})
    return rendered, images


def render_messages(model, tok, messages: list[dict]) -> tuple[list[int], list]:
    """A whole chat prompt (system, earlier turns, image parts anywhere) rendered as the API renders it:
    (token ids, the images in order). A clear error when it cannot be answered."""
    rendered, images = image_parts(messages)
    if images and getattr(model, "vision", None) is None:
        raise VisionError("this model has no image input (no vision encoder); send text only or use a vision run")
    ids = tok.render_chat(rendered, True, n_image_tokens(model) if images else 0)
    check_fits(model, len(ids))
    return ids, images


def answer_all(model, tok, prompts: list[list[dict]], max_new_tokens: int = 24, batch: int = 32) -> list[str]:
    """Greedy answers to many chat prompts (with images), decoded together by one engine stepped by
    this thread: the in-run eval of a vision chat stage."""
    eng = Engine(model, tok, device=str(next(model.parameters()).device), max_batch=batch,
                 max_queue=max(64, len(prompts)))
    rendered = [render_messages(model, tok, m) for m in prompts]
    params = [SamplingParams(max_tokens=min(max_new_tokens, model.cfg.seq_len - len(ids)), temperature=0.0)
              for ids, _ in rendered]
    outs = eng.generate_batch([ids for ids, _ in rendered], params, images=[im or None for _, im in rendered])
    return [o[0]["text"].strip() for o in outs]
