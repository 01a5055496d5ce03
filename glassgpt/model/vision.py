"""Image input: a ViT trained from scratch and a pixel-shuffle projector into the LM.

    image (any size) ─► letterbox to S×S ─► patches (P×P) ─► linear ─► + 2-D position
       ─► bidirectional transformer blocks ─► pixel shuffle (s×s neighbours → one token)
       ─► linear to d_model ─► spliced into the LM at the <|image|> positions

The encoder lives on the language model as `model.vision`, so one state dict (one
safetensors file) holds both, DDP sees every parameter, and `getattr(model, "vision",
None)` tells whether a model takes images. The number of image tokens per image is
(S / P / s)² (config `vision`), and `render_chat(..., n_image_tokens=...)` emits that
many `<|image|>` tokens for every image part.

Training (`VisionTraining`) runs inside the one trainer: each step's batch is the text
rows plus image-chat rows (the question in the user turn, the answer as the assistant's)
padded to the context, one forward, loss only on the answer tokens (targets -1
elsewhere), the text loss weighted by `vision.text_weight` so language is not wrecked.
Held-out accuracy is exact-match of the greedy answer, computed by teacher forcing: a
greedy decode returns exactly the answer iff the argmax at every answer position
(including <|assistant_end|>) is the answer's token, so one forward scores a batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from glassgpt.config import Config, VisionConfig
from glassgpt.data import images as img_mod
from glassgpt.data.images import ImageError, Sample
from glassgpt.errors import GlassError
from glassgpt.train.optim import Muon

log = logging.getLogger(__name__)

EVAL_TASKS = ("digits", "shapes", "text", "charts")


class VisionError(GlassError):
    """Image input that the model cannot take (no encoder, too many images for the context)."""


# --- the encoder ---------------------------------------------------------------------------
class ViTBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fc = nn.Linear(width, hidden)
        self.out = nn.Linear(hidden, width)
        self.n1, self.n2 = nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # every patch sees every patch
        x = x + self.proj(y.transpose(1, 2).reshape(B, N, C))
        return x + self.out(F.gelu(self.fc(self.n2(x))))


class VisionEncoder(nn.Module):
    def __init__(self, vc: VisionConfig, d_model: int):
        super().__init__()
        self.vc = vc
        g = vc.grid
        if vc.stem == "conv":  # stride-2 3×3 convs down to the patch grid (Xiao et al. 2021: ViTs train faster)
            ch = stem_channels(vc)
            layers = []
            for a, b in zip(ch, ch[1:]):
                layers += [nn.Conv2d(a, b, 3, 2, 1), nn.GELU()]
            self.patch = nn.Sequential(*layers[:-1])
        else:
            self.patch = nn.Linear(3 * vc.patch_size ** 2, vc.width)
        # 2-D position: a learned row embedding plus a learned column embedding (separable).
        self.pos_row = nn.Parameter(torch.zeros(g, vc.width))
        self.pos_col = nn.Parameter(torch.zeros(g, vc.width))
        hidden = int(vc.mlp_ratio * vc.width)
        self.blocks = nn.ModuleList(ViTBlock(vc.width, vc.heads, hidden) for _ in range(vc.depth))
        self.norm = nn.LayerNorm(vc.width)
        # Projector: pixel shuffle (s×s neighbouring patches → one token with s²·width
        # channels; nanoVLM) then a linear map into the LM's embedding space.
        self.proj = nn.Linear(vc.width * vc.shuffle ** 2, d_model)
        if vc.projector == "mlp":
            self.proj = nn.Sequential(self.proj, nn.GELU(), nn.Linear(d_model, d_model))
        elif vc.projector == "overlap":  # (2s-1)² windows at stride s: what the s×s grid splits is whole in one token
            k = 2 * vc.shuffle - 1
            self.proj = nn.Conv2d(vc.width, d_model, k, vc.shuffle, vc.shuffle - 1)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        gen = torch.Generator(device=self.pos_row.device)
        if seed is not None:
            gen.manual_seed(seed)
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                bound = math.sqrt(3.0 / (mod.weight[0].numel()))  # 1/sqrt(fan_in) spread
                mod.weight.uniform_(-bound, bound, generator=gen)
                mod.bias.zero_()
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.fill_(1.0)
                mod.bias.zero_()
        for blk in self.blocks:  # residual branches start as identity
            blk.proj.weight.zero_()
            blk.out.weight.zero_()
        self.pos_row.normal_(0, 0.02, generator=gen)
        self.pos_col.normal_(0, 0.02, generator=gen)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] (normalised) → [B, n_image_tokens, d_model]."""
        vc = self.vc
        B, P, g = pixels.size(0), vc.patch_size, vc.grid
        if vc.stem == "conv":
            x = self.patch(pixels).flatten(2).transpose(1, 2)  # [B, g·g, width], row-major like the patches
        else:
            x = pixels.unfold(2, P, P).unfold(3, P, P)  # [B, 3, g, g, P, P]
            x = self.patch(x.permute(0, 2, 3, 1, 4, 5).reshape(B, g * g, 3 * P * P))
        x = x + (self.pos_row[:, None, :] + self.pos_col[None, :, :]).reshape(g * g, -1)
        for blk in self.blocks:
            x = blk(x)
        return self.project(self.norm(x))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features [B, g·g, width] (row-major) → image tokens [B, (g/s)², d_model]."""
        (B, _, C), g, s = x.shape, self.vc.grid, self.vc.shuffle
        if self.vc.projector == "overlap":
            return self.proj(x.transpose(1, 2).reshape(B, C, g, g)).flatten(2).transpose(1, 2)
        # pixel shuffle: [B, g, g, C] → [B, g/s, g/s, s·s·C]
        x = x.view(B, g // s, s, g // s, s, C).permute(0, 1, 3, 2, 4, 5).reshape(B, (g // s) ** 2, s * s * C)
        return self.proj(x)


@dataclass(frozen=True)
class VisionCounts:
    params: int
    flops_per_image_fwd: int  # encoder + projector, matmuls and attention (flops.py convention)
    flops_per_image: int  # training: forward + backward
    image_tokens: int  # LM positions per image (the LM's per-token FLOPs apply to these)


def stem_channels(vc: VisionConfig) -> list[int]:
    """Channels of the conv stem: 3 → width/2^(k-1) → … → width, k = log2(patch_size) convs."""
    k = vc.patch_size.bit_length() - 1
    return [3] + [vc.width >> (k - 1 - i) for i in range(k)]


def count(vc: VisionConfig, d_model: int) -> VisionCounts:
    """Exact parameter and FLOP counts of the encoder and projector (same convention as
    glassgpt.model.flops: 2 FLOPs per matmul weight per token, attention's QKᵀ and AV
    over the full N×N square; norms and GELU left out). Checked against
    torch.utils.flop_counter in the tests."""
    N, W, H = vc.grid ** 2, vc.width, int(vc.mlp_ratio * vc.width)
    patch_in = 3 * vc.patch_size ** 2
    block_mm = W * 3 * W + W * W + W * H + H * W
    block_params = block_mm + 3 * W + W + H + W + 4 * W  # + biases + two LayerNorms
    proj_in = W * (vc.shuffle ** 2 if vc.projector != "overlap" else (2 * vc.shuffle - 1) ** 2)
    if vc.stem == "conv":
        ch = stem_channels(vc)
        stem_params = sum(9 * a * b + b for a, b in zip(ch, ch[1:]))
        stem_flops = sum(2 * (vc.image_size >> (i + 1)) ** 2 * 9 * a * b for i, (a, b) in enumerate(zip(ch, ch[1:])))
    else:
        stem_params, stem_flops = patch_in * W + W, 2 * N * patch_in * W
    proj_mm = proj_in * d_model + (d_model * d_model if vc.projector == "mlp" else 0)
    proj_params = proj_mm + d_model * (2 if vc.projector == "mlp" else 1)
    params = stem_params + 2 * vc.grid * W + vc.depth * block_params + 2 * W + proj_params
    fwd = stem_flops + 2 * N * vc.depth * block_mm + vc.depth * 2 * (2 * N * N * W) + 2 * vc.n_image_tokens * proj_mm
    return VisionCounts(params, fwd, 3 * fwd, vc.n_image_tokens)


def attach(model, vc: VisionConfig, seed: int | None = 0) -> VisionEncoder:
    """Give `model` (a GPT) an encoder as `model.vision`, on the model's device."""
    dev = model.wte.weight.device
    with torch.device("meta"):
        enc = VisionEncoder(vc, model.cfg.d_model)
    enc.to_empty(device=dev)
    enc.init_weights(seed)
    model.vision = enc
    return enc


# --- preprocessing and the serve/chat hook ------------------------------------------------
def preprocess(images, size: int) -> torch.Tensor:
    """PIL images (any size and aspect) → [n, 3, size, size] in [-1, 1]: scaled to fit
    the encoder's square grid, aspect kept, centred on black (letterbox)."""
    import numpy as np
    from PIL import Image

    out = np.zeros((len(images), size, size, 3), dtype=np.float32)
    for i, im in enumerate(images):
        im = img_mod.to_rgb(im)
        w, h = im.size
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resample = Image.NEAREST if scale >= 4 else Image.BILINEAR  # keep tiny images (digits) crisp
        a = np.asarray(im.resize((nw, nh), resample), dtype=np.float32)
        y0, x0 = (size - nh) // 2, (size - nw) // 2
        out[i, y0 : y0 + nh, x0 : x0 + nw] = a
    return torch.from_numpy(out).permute(0, 3, 1, 2).div_(127.5).sub_(1.0)


def n_image_tokens(model) -> int:
    enc = getattr(model, "vision", None)
    return enc.vc.n_image_tokens if enc is not None else 0


@torch.no_grad()
def encode_images(model, images, *, name: str = "image") -> torch.Tensor:
    """The hook for chat and serve: a list of images (PIL images, bytes, paths or data:
    URLs) → embeddings [len(images) · n_image_tokens, d_model] for GPT.forward/generate's
    `image_embeds`, in the order the images appear. Raises VisionError for a model without
    an encoder and ImageError (a one-line message) for any bad image."""
    enc = getattr(model, "vision", None)
    if enc is None:
        raise VisionError("this model has no image input (no vision encoder); send text only or use a vision run")
    pil = []
    for i, im in enumerate(images):
        label = f"{name} {i + 1}" if len(images) > 1 else name
        if isinstance(im, str) and im.startswith("data:"):
            pil.append(img_mod.decode_data_url(im, name=label))
        else:
            pil.append(img_mod.load_image(im, name=label, animated="first"))
    if not pil:
        return torch.zeros(0, model.cfg.d_model, device=enc.pos_row.device)
    px = preprocess(pil, enc.vc.image_size).to(enc.pos_row.device)
    return enc(px).reshape(-1, model.cfg.d_model)


def check_fits(model, n_prompt_tokens: int, max_new_tokens: int = 1) -> None:
    """A clear error when the images (and text) of one request exceed the context."""
    if n_prompt_tokens + max_new_tokens > model.cfg.seq_len:
        raise VisionError(f"the prompt needs {n_prompt_tokens} tokens (each image takes {n_image_tokens(model)}) but "
                          f"the context holds {model.cfg.seq_len}; send fewer images or less text")


@torch.no_grad()
def ask(model, tokenizer, images, question: str, max_new_tokens: int = 16) -> str:
    """One chat turn with images, greedy; returns the assistant's text."""
    parts = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    ids = tokenizer.render_chat([{"role": "user", "content": parts}], True, n_image_tokens(model))
    if images and getattr(model, "vision", None) is None:
        raise VisionError("this model has no image input (no vision encoder); send text only or use a vision run")
    check_fits(model, len(ids))
    emb = encode_images(model, images) if images else None
    dev = model.wte.weight.device
    out = model.generate(torch.tensor([ids], device=dev), min(max_new_tokens, model.cfg.seq_len - len(ids)),
                         temperature=0, image_embeds=emb)[0, len(ids):].tolist()
    end = tokenizer.special["<|assistant_end|>"]
    return tokenizer.decode(out[: out.index(end)] if end in out else out).strip()


# --- training rows ----------------------------------------------------------------------------
def answer_ids(tok, s: Sample) -> list[int]:
    """The answer's tokens. Read text is spelled one character a token: BPE would merge some
    letter pairs ('ER', 'ST', ...) and the model would have to learn the merges of random
    strings as well as read them; greedy chat decodes either spelling to the same text."""
    if s.task == "text":
        out = []
        for ch in s.answer:
            out += tok.encode(ch)
        return out
    return tok.encode(s.answer)


def sample_ids(tok, s: Sample, n_img: int) -> tuple[list[int], int]:
    """(ids of the whole turn, index where the answer starts)."""
    prompt = tok.render_chat(s.messages(with_answer=False), True, n_img)
    return prompt + answer_ids(tok, s) + [tok.special["<|assistant_end|>"]], len(prompt)


def collate(tok, samples: list[Sample], n_img: int, T: int, image_size: int):
    """→ x [B, T], y [B, T] (-1 except answer tokens), pixels [B, 3, S, S]."""
    x = torch.full((len(samples), T), tok.pad_id, dtype=torch.long)
    y = torch.full((len(samples), T), -1, dtype=torch.long)
    for i, s in enumerate(samples):
        ids, a = sample_ids(tok, s, n_img)
        if a >= T:
            raise VisionError(f"a {s.task} prompt takes {a} tokens, more than the {T}-token context; raise model.seq_len")
        ids = ids[: T + 1]
        x[i, : len(ids) - 1] = torch.tensor(ids[:-1])
        y[i, a - 1 : len(ids) - 1] = torch.tensor(ids[a:])
    return x, y, preprocess([s.image for s in samples], image_size)


class Mix:
    """A deterministic image-text stream: sample k of the training mix is a pure function
    of (seed, k), so resuming needs only the step."""

    def __init__(self, mix: str, seed: int):
        self.entries = [(name, w, img_mod.get_source(name)) for name, w in img_mod.parse_mix(mix)]
        self.seed = seed
        total = sum(w for _, w, _ in self.entries)
        self.cum = []
        acc = 0.0
        for _, w, _ in self.entries:
            acc += w / total
            self.cum.append(acc)

    def sample(self, k: int) -> Sample:
        u = img_mod._rng(self.seed, "mix", k).random()
        j = next((i for i, c in enumerate(self.cum) if u < c), len(self.entries) - 1)
        name, _, src = self.entries[j]
        return src(self.seed, "train", k)


class VisionTraining:
    """What the trainer needs for a vision run: the encoder on the model, its optimizer,
    the image rows of each step, the combined loss, and held-out accuracy."""

    def __init__(self, raw, cfg: Config, tokenizer, rank: int = 0, world: int = 1):
        self.cfg, self.vc, self.tok, self.rank, self.world = cfg, cfg.vision, tokenizer, rank, world
        if cfg.train.fsdp and world > 1:
            from glassgpt.errors import ConfigError

            raise ConfigError("vision runs use DDP; set train.fsdp=false")
        if self.vc.init_from:
            self._load_lm(raw, self.vc.init_from)
        self.enc = attach(raw, self.vc, seed=cfg.train.seed)
        self.raw = raw
        self.mix = Mix(self.vc.mix, cfg.train.seed)
        if self.vc.freeze_lm:
            for n, p in raw.named_parameters():
                if not n.startswith("vision."):
                    p.requires_grad_(False)
        self.counts = count(self.vc, raw.cfg.d_model)
        self._heldout = {}
        self.skipped_long = 0

    @staticmethod
    def _load_lm(raw, path):
        from glassgpt.train import checkpoint

        meta, state, _ = checkpoint.read(checkpoint.resolve(Path(path)))
        state = {k: v for k, v in state.items() if not k.startswith("vision.")}
        try:
            raw.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise VisionError(f"vision.init_from={path}: its language model does not match model.* "
                              f"({str(e).splitlines()[0][:120]})") from None
        log.info("language model initialised from %s", path)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """AdamW for the encoder; with `vision.muon_lr` > 0, Muon for its weight matrices and conv
        filters instead (the first conv, 3 colour channels in, stays on AdamW, as do vectors and
        position tables)."""
        first = self.enc.patch[0].weight if isinstance(self.enc.patch, nn.Sequential) else self.enc.patch.weight
        muon, adam = [], []
        for n, p in self.enc.named_parameters():
            to_muon = self.vc.muon_lr > 0 and p.dim() >= 2 and not n.startswith("pos_") and p is not first
            (muon if to_muon else adam).append(p)
        opts = [torch.optim.AdamW(adam, lr=self.vc.lr, betas=self.cfg.train.betas, eps=1e-10, weight_decay=0.0)]
        if muon:
            opts.append(Muon(muon, lr=self.vc.muon_lr))
        for opt in opts:
            for g in opt.param_groups:
                g["initial_lr"] = g["lr"]
        return opts

    def rows(self, index: int):
        """This rank's image rows of micro-batch `index` (global batch split over ranks)."""
        B = self.vc.batch_size
        first = (index * self.world + self.rank) * B
        T, n_img = self.raw.cfg.seq_len, self.vc.n_image_tokens
        samples = []
        for j in range(B):
            for attempt in range(20):  # a sample too long for the context is skipped, not fatal
                s = self.mix.sample(first + j + attempt * 1_000_003)
                if len(sample_ids(self.tok, s, n_img)[0]) <= T + 1:
                    break
                self.skipped_long += 1
                if self.skipped_long in (1, 10, 100, 1000):
                    log.warning("skipped %d image samples longer than the %d-token context", self.skipped_long, T)
            else:
                raise VisionError(f"image samples do not fit the {T}-token context ({n_img} image tokens each); raise model.seq_len")
            samples.append(s)
        return collate(self.tok, samples, self.vc.n_image_tokens, self.raw.cfg.seq_len, self.vc.image_size)

    def loss(self, fwd, text_batch: torch.Tensor, index: int) -> torch.Tensor:
        """text_weight · text loss + answer loss, from one forward over both kinds of rows."""
        dev = text_batch.device
        x, y, px = self.rows(index)
        x, y = x.to(dev), y.to(dev)
        emb = self.enc(px.to(dev)).reshape(-1, self.raw.cfg.d_model)
        w = self.vc.text_weight
        if self.world == 1:  # two forwards, image rows cut to their longest row (no padding to seq_len)
            L = int((x != self.tok.pad_id).sum(1).max())
            x, y = x[:, :L], y[:, :L]
            loss = fwd(x, y, image_embeds=emb)
            return loss + w * fwd(text_batch[:, :-1], text_batch[:, 1:]) if w > 0 else loss
        if w > 0:  # DDP: one forward per backward, so text and image rows share one batch
            x = torch.cat([text_batch[:, :-1], x])
            y = torch.cat([text_batch[:, 1:], y])
        per = fwd(x, y, image_embeds=emb, reduction="none").view(x.size(0), -1)
        nt = text_batch.size(0) if w > 0 else 0
        img_tokens = (y[nt:] != -1).sum().clamp(min=1)
        loss = per[nt:].sum() / img_tokens
        if w > 0:
            loss = loss + w * per[:nt].mean()
        return loss

    # --- held-out accuracy -----------------------------------------------------------------
    def heldout(self, task: str, n: int):
        key = (task, n)
        if key not in self._heldout:
            src = img_mod.get_source(task)
            self._heldout[key] = [src(self.cfg.train.seed, "heldout", i) for i in range(n)]
        return self._heldout[key]

    @torch.no_grad()
    def evaluate(self, n: int | None = None) -> dict:
        n = n or self.vc.eval_samples
        tasks = [t for t in EVAL_TASKS if t in {name for name, _, _ in self.mix.entries}]
        return {t: exact_match(self.raw, self.tok, self.heldout(t, n), self.vc) for t in tasks}

    def report(self) -> dict:
        return {"encoder_params": self.counts.params, "encoder_flops_per_image": self.counts.flops_per_image,
                "image_tokens": self.vc.n_image_tokens, "images_per_step": self.vc.batch_size * self.world,
                "mix": self.vc.mix, "text_weight": self.vc.text_weight, "freeze_lm": self.vc.freeze_lm}


@torch.no_grad()
def token_scores(model, tok, samples: list[Sample], vc: VisionConfig) -> list[tuple[bool, float, float]]:
    """Per sample, by teacher forcing (see the module docstring): (greedy exact match, fraction of
    answer tokens and <|assistant_end|> whose argmax is right, their mean cross-entropy in nats) —
    partial credit and a smooth measure, to see progress before answers come out exactly right."""
    dev = model.wte.weight.device
    was = model.training
    model.eval()
    x, y, px = collate(tok, samples, vc.n_image_tokens, model.cfg.seq_len, vc.image_size)
    emb = model.vision(px.to(dev)).reshape(-1, model.cfg.d_model)
    logits = model(x.to(dev), image_embeds=emb).float()
    model.train(was)
    y = y.to(dev)
    mask = y != -1
    hit = (logits.argmax(-1) == y) & mask
    ce = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-1, reduction="none")
    n = mask.sum(1).clamp(min=1)
    exact = (hit.sum(1) == mask.sum(1)).tolist()
    return list(zip(exact, (hit.sum(1) / n).tolist(), ((ce * mask).sum(1) / n).tolist()))


def answer_correct(model, tok, samples: list[Sample], vc: VisionConfig) -> list[bool]:
    """Greedy exact match, by teacher forcing."""
    return [r[0] for r in token_scores(model, tok, samples, vc)]


def exact_match(model, tok, samples: list[Sample], vc: VisionConfig, batch: int = 64) -> float:
    ok = []
    for i in range(0, len(samples), batch):
        ok += answer_correct(model, tok, samples[i : i + batch], vc)
    return sum(ok) / max(1, len(ok))


def question_type(s: Sample) -> str:
    """A coarse kind of question, for the per-type breakdown (`eval --by-type`)."""
    q = s.question
    if s.task == "text":
        return f"text {len(s.answer)} chars"
    for key, name in (("How many", "count"), ("What colour", "colour"), ("What shape", "shape"),
                      ("further left", "left/right"), ("further right", "left/right"),
                      ("higher", "above/below"), ("lower", "above/below"),
                      ("Which bar", "largest bar"), ("value of bar", "bar value"), ("Which point", "highest point")):
        if key in q:
            return name
    return s.task


# --- commands: held-out table, answer grid, one question -----------------------------------------
def load(run_dir, device: str = "cpu"):
    from glassgpt.train.checkpoint import load_model

    model, tok, cfg = load_model(run_dir, device=device)
    if getattr(model, "vision", None) is None:
        raise VisionError(f"{run_dir} is a text-only run (no vision encoder)")
    return model, tok, cfg


def heldout_samples(seed: int, task: str, n: int) -> list[Sample]:
    """The first n held-out samples of a task (digits: at most the 300 held out)."""
    src = img_mod.get_source(task)
    n = min(n, img_mod.DIGITS_HELDOUT) if task == "digits" else n
    return [src(seed, "heldout", i) for i in range(n)]


def heldout_scores(model, tok, cfg, n: int = 300, tasks=EVAL_TASKS, batch: int = 64) -> dict:
    """{task: [(sample, token_scores row)]} over the held-out samples, in one pass."""
    out = {}
    for t in tasks:
        samples = heldout_samples(cfg.train.seed, t, n)
        rows = []
        for i in range(0, len(samples), batch):
            chunk = samples[i : i + batch]
            rows += zip(chunk, token_scores(model, tok, chunk, cfg.vision))
        out[t] = rows
    return out


def heldout_table(scores: dict) -> dict:
    """Held-out exact match per task, from `heldout_scores`."""
    return {t: {"accuracy": sum(r[0] for _, r in rows) / max(1, len(rows)), "n": len(rows)} for t, rows in scores.items()}


def by_type_table(scores: dict) -> dict:
    """Held-out exact match, token accuracy and answer loss per question type, from `heldout_scores`."""
    groups: dict[str, list[tuple[bool, float, float]]] = {}
    for t, rows in scores.items():
        for s, r in rows:
            groups.setdefault(f"{t}: {question_type(s)}", []).append(r)
    return {k: {"accuracy": sum(r[0] for r in v) / len(v), "token_accuracy": sum(r[1] for r in v) / len(v),
                "answer_loss": sum(r[2] for r in v) / len(v), "n": len(v)} for k, v in sorted(groups.items())}


def render_grid(run_dir, out_png, per_task: int = 6, tasks=EVAL_TASKS, seed_offset: int = 0) -> Path:
    """A PNG grid of held-out images with the question, the model's greedy answer and
    the truth (green when right, red when wrong)."""
    from PIL import Image, ImageDraw

    model, tok, cfg = load(run_dir)
    cell, text_h = 128, 40
    grid = Image.new("RGB", (cell * per_task, (cell + text_h) * len(tasks)), (255, 255, 255))
    d = ImageDraw.Draw(grid)
    font = img_mod._font(None, 10)
    for r, t in enumerate(tasks):
        src = img_mod.get_source(t)
        for c in range(per_task):
            s = src(cfg.train.seed, "heldout", seed_offset + c)
            got = ask(model, tok, [s.image], s.question)
            im = s.image.copy()
            scale = cell / max(im.size)
            im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                           Image.NEAREST if scale >= 4 else Image.BILINEAR)
            x0, y0 = c * cell, r * (cell + text_h)
            grid.paste(im, (x0 + (cell - im.size[0]) // 2, y0))
            d.text((x0 + 2, y0 + cell + 1), s.question[:26], fill=(0, 0, 0), font=font)
            d.text((x0 + 2, y0 + cell + 13), f"model: {got[:18]}", fill=(0, 140, 0) if got == s.answer else (200, 0, 0), font=font)
            d.text((x0 + 2, y0 + cell + 25), f"truth: {s.answer}", fill=(90, 90, 90), font=font)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.name + ".tmp.png")
    grid.save(tmp)
    tmp.replace(out_png)
    return out_png


def main(argv=None) -> int:
    """python -m glassgpt.model.vision {eval,grid,ask} RUN_DIR ..."""
    p = argparse.ArgumentParser(prog="python -m glassgpt.model.vision", description="Image input: held-out table, answer grid, one question.")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="held-out exact-match accuracy per task")
    e.add_argument("run")
    e.add_argument("--n", type=int, default=300)
    e.add_argument("--greedy", action="store_true", help="score real greedy chat answers (the registry evals' rule; slower)")
    e.add_argument("--by-type", action="store_true", help="also break accuracy down by question type (with token accuracy)")
    g = sub.add_parser("grid", help="PNG grid of held-out images with the model's answers")
    g.add_argument("run")
    g.add_argument("--out", default="docs/vision_grid.png")
    g.add_argument("--per-task", type=int, default=6)
    a = sub.add_parser("ask", help="ask one question about one or more images")
    a.add_argument("run")
    a.add_argument("--image", action="append", required=True)
    a.add_argument("question")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "eval":
            if args.greedy:
                from glassgpt.evals.elsuite.vision import accuracy_table

                table = {t: {"accuracy": a, "n": min(args.n, img_mod.DIGITS_HELDOUT) if t == "digits" else args.n}
                         for t, a in accuracy_table(args.run, args.n).items()}
            else:
                scores = heldout_scores(*load(args.run), n=args.n)
                table = heldout_table(scores)
            for t, r in table.items():
                print(f"{t:8s} {r['accuracy'] * 100:6.1f}%  (n={r['n']})")
            print(json.dumps(table))
            if args.by_type:
                if args.greedy:  # the teacher-forced scores the breakdown needs
                    scores = heldout_scores(*load(args.run), n=args.n)
                for k, r in by_type_table(scores).items():
                    print(f"  {k:22s} {r['accuracy'] * 100:6.1f}%  tokens {r['token_accuracy'] * 100:5.1f}%  "
                          f"loss {r['answer_loss']:.3f}  (n={r['n']})")
        elif args.cmd == "grid":
            print(render_grid(args.run, args.out, args.per_task))
        else:
            model, tok, _ = load(args.run)
            print(ask(model, tok, args.image, args.question))
    except GlassError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
