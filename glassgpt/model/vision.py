"""Image input: a ViT trained from scratch and a pixel-shuffle projector into the LM.

    image (any size) ─► letterbox to S×S ─► patches (P×P) ─► linear ─► + 2-D position
       ─► bidirectional transformer blocks ─► pixel shuffle (s×s neighbours → one token)
       ─► linear to d_model ─► spliced into the LM at the <|image|> positions

The encoder lives on the language model as `model.vision`, so one state dict (one
safetensors file) holds both, DDP sees every parameter, and `getattr(model, "vision",
None)` tells whether a model takes images. The number of image tokens per image is
(S / P / s)² (config `vision`), and `render_chat(..., n_image_tokens=...)` emits that
many `<|image|>` tokens for every image part.

Only the model side lives here (nanoVLM's split). Image-chat training rows and the mix are
the image-chat batch source (glassgpt.train.sources); held-out scoring, the answer grid and
one-question `ask` are glassgpt.evals.vision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from glassgpt.config import VisionConfig
from glassgpt.data import images as img_mod
from glassgpt.errors import GlassError


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
