"""The glassgpt decoder: one file, read in one sitting.

A decoder-only transformer in the modern style (as in nanochat / Llama):
- RoPE positions, stretched for long context by position interpolation, NTK-aware or YaRN scaling,
- RMSNorm without learnable gain (one less thing to tune; Muon does not need it),
- QK-norm, so attention logits stay bounded without a softmax temperature hack,
- grouped-query attention (fewer K/V heads: a smaller KV cache when serving),
- no biases anywhere, an untied LM head,
- a ReLU² or SwiGLU MLP,
- torch's scaled_dot_product_attention (flash / memory-efficient kernels where available),
- optionally token smearing: the previous token's (or k tokens') embedding mixed into each input (induction in one layer).

The model is built on the meta device (no memory, no init cost) and initialised by an
explicit `init_weights()` after it is moved to its real device, so that FSDP can shard
it before any weight exists and every rank gets identical weights from one seed.
Image embeddings (from glassgpt.model.vision) are spliced in at `<image>` token positions.

Inference: `forward` also takes a `KVCache` with one slot per sequence; each row of a call
says which slot it uses and where it starts, so sequences of different lengths share one
forward pass. Sampling, batching and stopping live in glassgpt.serve.engine, the one
decoding loop, which drives this forward: the serving code imports the model, never the reverse.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from glassgpt.config import ModelConfig

# Above this many target tokens in one training forward, the head and its loss go in chunks of it
# (recomputed in the backward): at 32K tokens and a 4K vocabulary the logits alone are 512 MB in
# fp32, and their softmax and gradient as much again each. Costs one more head forward per chunk.
CE_CHUNK = 8192
# Training rows at least this long keep only each block's input and recompute the block in the
# backward (activation checkpointing): the long stage's 32,768 tokens a step are ~0.7 GB of activations
# a block at width 256, and its 8K- and 32K-row steps peaked near 7 GiB in fp32 (docs/long_context.md).
# Costs one more forward of every block on those rows only; ordinary training rows stay far below.
RECOMPUTE_ROWS = 8192


class RMSNorm(torch.autograd.Function):
    """x / rms(x), without gain. Hand-written backward: on CPU, torch's F.rms_norm runs as a
    chain of small kernels and measured ~3x slower than this (bench: docs/devlog.md).
    Statistics in fp32 whatever x's dtype (bf16's eps alone is 0.8%); for fp32 x the casts are no-ops."""

    @staticmethod
    def forward(ctx, x):
        xf = x.float()
        rstd = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(torch.finfo(torch.float32).eps))
        y = (xf * rstd).to(x.dtype)
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        y, rstd = ctx.saved_tensors
        g, yf = grad.float(), y.float()
        return (g - yf * (g * yf).mean(-1, keepdim=True)).mul_(rstd).to(grad.dtype)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    if x.is_cuda:  # fused kernels there
        return F.rms_norm(x, (x.size(-1),))
    return RMSNorm.apply(x)


def rope_frequencies(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [head_dim/2], attention factor) for cfg's RoPE scaling (config.ROPE_SCALINGS).

    s = rope_scale. linear: all of them / s (position interpolation; rope_tables divides the
    positions instead, as it always has, so old runs get bit-identical tables);
    ntk: the base raised to base · s^(d/(d-2)), so the lowest frequency is interpolated by s
    and the highest is left as trained; yarn: per band of dimensions by how many turns it makes
    over the original window L: more than beta_fast=32 turns kept (extrapolated), fewer than
    beta_slow=1 turn divided by s, a linear ramp between; and softmax sharpened by
    t = 0.1·ln(s) + 1 applied to q and k (cos and sin), i.e. logits × t²."""
    d, half, s = cfg.head_dim, cfg.head_dim // 2, cfg.rope_scale
    base = cfg.rope_base * s ** (d / (d - 2)) if cfg.rope_scaling == "ntk" else cfg.rope_base
    inv_freq = 1.0 / (base ** (torch.arange(half, dtype=torch.float32, device=device) / half))
    if cfg.rope_scaling != "yarn" or s == 1.0:
        return inv_freq, 1.0

    def band(turns):  # the dimension index whose wavelength fits `turns` times in the original window
        return d * math.log(cfg.rope_original_len / (turns * 2 * math.pi)) / (2 * math.log(cfg.rope_base))

    lo, hi = max(math.floor(band(32)), 0), min(math.ceil(band(1)), d - 1)
    hi = max(hi, lo + 1e-3)
    ramp = ((torch.arange(half, dtype=torch.float32, device=device) - lo) / (hi - lo)).clamp(0, 1)  # 1: interpolate
    return inv_freq * (1 - ramp) + inv_freq / s * ramp, 0.1 * math.log(s) + 1.0


def rope_tables(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [seq_len, head_dim/2] (times the attention factor, which scales q and k)."""
    inv_freq, factor = rope_frequencies(cfg, device)
    pos = torch.arange(cfg.seq_len, dtype=torch.float32, device=device)
    if cfg.rope_scaling == "linear":
        pos = pos / cfg.rope_scale
    angles = torch.outer(pos, inv_freq)
    return angles.cos() * factor, angles.sin() * factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Rotate pairs (first half, second half) of each head; cos/sin broadcast over x's other dims.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class KVCache:
    """Keys/values of `slots` sequences, each at its own length: k, v [depth, slots, kv_heads,
    max_len, head_dim]. One forward call writes T new positions into chosen slots, each row
    from its own start, so sequences of different lengths decode together (continuous batching).
    The lengths themselves are the caller's to keep (the serving engine keeps one per slot)."""

    def __init__(self, cfg: ModelConfig, slots: int, max_len: int, device, dtype):
        shape = (cfg.depth, slots, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # a smearing model reads the token before each call's first one: the slots' token ids
        self.tokens = torch.zeros(slots, max_len, dtype=torch.long, device=device) if cfg.smear else None

    def rows(self, slots: list[int], starts: list[int], T: int) -> "CacheRows":
        """Where one call of T tokens per row reads and writes (plain ints: no device sync)."""
        if len(slots) != len(starts):
            raise ValueError(f"{len(slots)} slots for {len(starts)} start positions")
        if max(starts) + T > self.k.size(3):
            raise ValueError(f"sequence of {max(starts) + T} tokens exceeds the cache's {self.k.size(3)} positions")
        return CacheRows(self, slots, starts, T)

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Share a prefix: n choices of one prompt run its prefill once."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]
        if self.tokens is not None:
            self.tokens[dst, :length] = self.tokens[src, :length]


class CacheRows:
    """One forward call's view of a KVCache: row b writes positions starts[b].. of slot slots[b]."""

    def __init__(self, cache: KVCache, slots: list[int], starts: list[int], T: int):
        dev = cache.k.device
        self.cache, self.L = cache, max(starts) + T  # keys 0..L-1 cover every row
        self.slots = torch.tensor(slots, dtype=torch.long, device=dev)
        self.pos = torch.tensor(starts, dtype=torch.long, device=dev)[:, None] + torch.arange(T, device=dev)  # [B, T]
        # Consecutive slots read a slice of the cache; others need a gathered copy.
        lo = slots[0]
        self.read = slice(lo, lo + len(slots)) if list(slots) == list(range(lo, lo + len(slots))) else self.slots
        # Query i of row b sees keys 0..starts[b]+i: its own prefix, nothing of other rows.
        self.mask = (torch.arange(self.L, device=dev) <= self.pos[:, :, None])[:, None]  # [B, 1, T, L]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v [B, kv_heads, T, head_dim]; return the keys/values to attend to."""
        ck, cv = self.cache.k[layer], self.cache.v[layer]  # [slots, kv_heads, max_len, head_dim]
        ck[self.slots[:, None], :, self.pos] = k.transpose(1, 2).to(ck.dtype)
        cv[self.slots[:, None], :, self.pos] = v.transpose(1, 2).to(cv.dtype)
        return ck[self.read, :, : self.L], cv[self.read, :, : self.L]

    def previous(self, idx: torch.Tensor, k: int = 1) -> torch.Tensor:
        """Record idx [B, T] in the slots; return the k tokens before each position [B, T, k], nearest
        first (any before position 0)."""
        tokens = self.cache.tokens
        tokens[self.slots[:, None], self.pos] = idx
        back = torch.arange(1, k + 1, device=idx.device)
        return tokens[self.slots[:, None, None], (self.pos[..., None] - back).clamp(min=0)]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.h, self.kv, self.hd = layer, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.c_qkv = nn.Linear(cfg.d_model, (self.h + 2 * self.kv) * self.hd, bias=False)
        self.c_proj = nn.Linear(self.h * self.hd, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, rows: CacheRows | None = None, spans=None):
        B, T, _ = x.shape
        qk, v = self.c_qkv(x).split([(self.h + self.kv) * self.hd, self.kv * self.hd], dim=-1)
        # Norm and rotate queries and keys together: half the elementwise kernels on CPU.
        qk = apply_rope(rms_norm(qk.view(B, T, self.h + self.kv, self.hd)), cos, sin)
        q, k = qk.transpose(1, 2).split([self.h, self.kv], dim=1)
        v = v.view(B, T, self.kv, self.hd).transpose(1, 2)
        gqa = self.kv != self.h
        if spans is not None:  # document masking: each document of a row attends within itself only
            y = torch.cat([torch.cat([F.scaled_dot_product_attention(q[b:b + 1, :, a:e], k[b:b + 1, :, a:e],
                                                                     v[b:b + 1, :, a:e], is_causal=True, enable_gqa=gqa)
                                      for a, e in row], dim=2) for b, row in enumerate(spans)])
        elif rows is None:  # training or a plain forward: causal attention over this call alone
            # no mask tensor, so CPU and GPU take the flash kernel: no T×T matrix at 32K tokens
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:  # with a cache: each row attends to its slot's prefix and its own new keys
            k, v = rows.update(self.layer, k, v)
            with torch.autocast(q.device.type, enabled=False):  # in the cache's dtype (autocast would recast it)
                y = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=rows.mask, enable_gqa=gqa)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, self.h * self.hd))


class ReluSquared(torch.autograd.Function):
    """relu(x)² with a two-kernel backward (autograd's pow backward takes four)."""

    @staticmethod
    def forward(ctx, x):
        r = F.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad):
        (r,) = ctx.saved_tensors
        return (grad * r).mul_(2.0)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_hidden * (2 if self.swiglu else 1), bias=False)
        self.c_proj = nn.Linear(cfg.d_hidden, cfg.d_model, bias=False)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:  # ReLU²: as good as GELU at this scale and cheaper (modded-nanogpt)
            h = ReluSquared.apply(h)
        return self.c_proj(h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, rows=None, spans=None):
        x = x + self.attn(rms_norm(x), cos, sin, rows, spans)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer) before building a model")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # the previous smear_tokens tokens' embeddings, side by side, through one map
        self.smear = nn.Linear(cfg.smear_tokens * cfg.d_model, cfg.d_model, bias=False) if cfg.smear else None
        cos, sin = rope_tables(cfg)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Fill every weight; call after `to_empty(device=...)` (the model is built on meta)."""
        gen = torch.Generator(device=self.wte.weight.device)
        if seed is not None:
            gen.manual_seed(seed)
        self.wte.weight.normal_(0.0, 1.0, generator=gen)  # normed right after, so scale is free
        self.lm_head.weight.normal_(0.0, 0.001, generator=gen)  # start near uniform predictions
        for block in self.blocks:
            for lin in (block.attn.c_qkv, block.mlp.c_fc):
                bound = math.sqrt(3.0 / lin.in_features)  # unit-variance outputs for unit inputs
                lin.weight.uniform_(-bound, bound, generator=gen)
            # Residual branches start as identity: deep nets begin as shallow ones (nanochat).
            block.attn.c_proj.weight.zero_()
            block.mlp.c_proj.weight.zero_()
        if self.smear is not None:
            self.smear.weight.zero_()  # starts as the plain model (so --init-from a plain run works too)
        cos, sin = rope_tables(self.cfg, device=self.cos.device)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def _smeared(self, emb, idx, rows, docs):
        """The embeddings of the smear_tokens tokens before each position through the smear map; nothing
        for a position before a sequence's or a document's start. Token embeddings only (an image's
        placeholder token, not its image), so a cached call, which sees only token ids, computes the same."""
        k = self.cfg.smear_tokens
        if rows is None:
            prevs = []
            for j in range(1, k + 1):
                prev = F.pad(emb[:, :-j], (0, 0, j, 0))
                if docs is not None:  # a document's first tokens do not see the ones before it
                    prev = prev * (docs == F.pad(docs[:, :-j], (j, 0), value=-1)).unsqueeze(-1)
                prevs.append(prev)
            return self.smear(torch.cat(prevs, -1))
        back = torch.arange(1, k + 1, device=idx.device)
        prev = self.wte(rows.previous(idx, k)) * (rows.pos[..., None] >= back).unsqueeze(-1).to(emb.dtype)  # [B, T, k, d]
        return self.smear(prev.flatten(-2))

    def _token_losses(self, x, targets):
        return F.cross_entropy(self.lm_head(x).float(), targets, reduction="none")

    def forward(self, idx, targets=None, image_embeds=None, cache: KVCache | None = None, reduction="mean", *,
                slots: list[int] | None = None, starts: list[int] | None = None, last: bool | list[int] = False,
                docs: torch.Tensor | None = None, hidden: bool = False):
        """idx [B, T] token ids. Returns logits [B, T, V] ([B, V] with last=True: the last
        position only; last=[i_0, .., i_B-1]: position i_b of row b), or the loss when targets are given (targets -1 are ignored).
        image_embeds [n, d_model] replace the embeddings at the n positions where
        idx == cfg.image_token_id, in order (row-major).
        With a cache: row b holds positions starts[b]..starts[b]+T-1 of cache slot slots[b]
        (defaults: slots 0..B-1, starts 0); its keys/values are written there and query i
        attends to keys 0..starts[b]+i of that slot.
        docs [B, T] (training, no cache): a document index per position, non-decreasing along a
        row; attention then stays within each document (positions keep counting across them:
        RoPE sees only distances, so a document scores as it would alone).
        hidden=True returns the final normed hidden states [B, T, d_model] instead (for a reward,
        value or classifier head on top of the model, glassgpt.align.heads)."""
        B, T = idx.shape
        rows = None
        if cache is not None:
            rows = cache.rows(list(range(B)) if slots is None else list(slots), [0] * B if starts is None else list(starts), T)
        end = T if rows is None else rows.L
        if end > self.cos.size(0):
            raise ValueError(f"sequence of {end} tokens exceeds the context window of {self.cos.size(0)}")
        x = self.wte(idx)
        if self.smear is not None:
            x = x + self._smeared(x, idx, rows, docs)
        if image_embeds is not None:
            where = (idx == self.cfg.image_token_id).unsqueeze(-1)
            if int(where.sum()) != image_embeds.numel() // x.size(-1):
                raise ValueError("number of image embeddings does not match the <image> positions")
            x = x.masked_scatter(where, image_embeds.to(x.dtype))
        x = rms_norm(x)
        # RoPE angles broadcast over heads: [T, 1, D/2] shared by all rows, or [B, T, 1, D/2] per row.
        pos = slice(0, T) if rows is None else rows.pos
        cos, sin = self.cos[pos].to(x.dtype).unsqueeze(-2), self.sin[pos].to(x.dtype).unsqueeze(-2)
        spans = doc_spans(docs) if docs is not None and rows is None else None
        recompute = rows is None and T >= RECOMPUTE_ROWS and torch.is_grad_enabled() and not torch.compiler.is_compiling()
        for block in self.blocks:
            if recompute:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, None, spans, use_reentrant=False)
            else:
                x = block(x, cos, sin, rows, spans)
        if last is True:
            x = x[:, -1]
        elif last is not False:  # one position per row (rows padded to a common length)
            x = x[torch.arange(B, device=x.device), torch.tensor(last, device=x.device)]
        x = rms_norm(x)
        if hidden:
            return x
        if targets is None:
            return self.lm_head(x)
        if torch.compiler.is_compiling():  # a data-dependent shape would break the graph: head everywhere
            loss = F.cross_entropy(self.lm_head(x).float().flatten(0, 1), targets.reshape(-1), ignore_index=-1, reduction=reduction)
            return loss.view(targets.shape) if reduction == "none" else loss
        # The head only where there is a target: image-chat rows score just their answers.
        keep = targets != -1
        x, kept = x[keep], targets[keep]
        if kept.numel() <= CE_CHUNK or not torch.is_grad_enabled():
            loss = F.cross_entropy(self.lm_head(x).float(), kept, reduction=reduction)
        else:  # the [N, vocab] fp32 logits never exist at once: CE_CHUNK rows at a time, recomputed in backward
            loss = torch.cat([torch.utils.checkpoint.checkpoint(self._token_losses, x[i:i + CE_CHUNK], kept[i:i + CE_CHUNK],
                                                                use_reentrant=False) for i in range(0, kept.numel(), CE_CHUNK)])
            loss = loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss
        if reduction != "none":
            return loss
        return torch.zeros(targets.shape, dtype=loss.dtype, device=loss.device).masked_scatter(keep, loss)


def doc_spans(docs: torch.Tensor) -> list[list[tuple[int, int]]] | None:
    """Per row, the (start, end) of each document in `docs` [B, T]; None when no row has two
    (the plain causal kernel then serves). One device sync, once per forward."""
    d = docs.cpu()
    cuts = (d[:, 1:] != d[:, :-1]).nonzero().tolist()
    if not cuts:
        return None
    T = d.size(1)
    bounds = [[0] for _ in range(d.size(0))]
    for b, t in cuts:
        bounds[b].append(t + 1)
    return [list(zip(bs, bs[1:] + [T])) for bs in bounds]


def build(cfg: ModelConfig, device="cpu", seed: int | None = 0) -> GPT:
    """Build on meta, materialise on `device`, initialise."""
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device=device)
    model.init_weights(seed)
    return model
