"""Batch sources: what the one trainer trains on.

A run trains on a weighted mixture of sources; the step's loss is Σ weight · loss of the
source's rows (mean over its target tokens). A source is a small object:

    name, weight              who it is; its loss weight in the mixture (0: evaluated, not trained)
    eval_key                  its metrics.jsonl key ({"step": k, eval_key: evaluate()})
    attach(raw)               add modules to the model (before weights load), e.g. an encoder
    optimizers()              extra optimizers for what attach added (after the model's own)
    rows(index) -> Rows       this rank's rows of micro-batch `index`: a pure function of
                              (seed, index, rank), so resuming needs only the step
    evaluate(model) -> dict   held-out results (all ranks call it; FSDP needs every rank)
    summary(result) -> str    one log line of that result
    report(result) -> dict    its sections of report.json

Rows are x [B, L] token ids, y [B, L] targets (-1: no loss) and optionally pixels [n, 3, S, S]
for the n images whose <|image|> tokens appear in x, in order. One process runs one forward per
source; under DDP the sources' rows share one forward, each source's loss normalised by its
target tokens on all ranks (so two processes step exactly like one).

A new source (chat SFT, a long-context mix) is a class here and a line in `build`; the loop
does not change. Chat rows come from glassgpt.data.chat (`training_row`, then `targets`), as
the image-chat rows here do.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from glassgpt.config import Config, VisionConfig
from glassgpt.data import chat
from glassgpt.data import images as img_mod
from glassgpt.data.images import Sample
from glassgpt.data.shards import Corpus, Loader
from glassgpt.errors import ConfigError
from glassgpt.model.vision import VisionError, attach, count, preprocess
from glassgpt.train.optim import Muon

log = logging.getLogger(__name__)

EVAL_TASKS = ("digits", "shapes", "text", "charts")


@dataclass
class Rows:
    x: torch.Tensor  # [B, L] inputs
    y: torch.Tensor  # [B, L] targets, -1 where there is no loss
    pixels: torch.Tensor | None = None  # [n_images, 3, S, S] for the <|image|> runs of x, in order


class Source:
    name = "source"
    eval_key = "eval"
    weight = 1.0

    def attach(self, raw) -> None:
        pass

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return []

    def rows(self, index: int) -> Rows:
        raise NotImplementedError

    def evaluate(self, model) -> dict:
        return {}

    def summary(self, result: dict) -> str:
        return ""

    def report(self, result: dict | None) -> dict:
        return {}


def build(cfg: Config, corpus: Corpus, d, autocast) -> list[Source]:
    """The run's sources, in loss order. Vision runs: image chat first, then text at
    vision.text_weight (the order of the two forwards, kept so curves stay as they were)."""
    text = TextSource(cfg, corpus, d, autocast)
    if not cfg.vision.enabled:
        return [text]
    text.weight = cfg.vision.text_weight
    return [ImageChatSource(cfg, corpus.tokenizer, d.rank, d.world), text]


# --- plain-text pretraining -----------------------------------------------------------------------
def eval_indices(n_rows: int, n_wanted: int) -> np.ndarray:
    """Evenly spaced rows over a held-out split (fixed, so every eval sees the same text)."""
    n = min(n_rows, max(1, n_wanted))
    return np.linspace(0, n_rows - 1, n).round().astype(np.int64)


class TextSource(Source):
    """BOS-aligned rows of the token shards; held-out loss and bits per byte per split."""

    name, eval_key = "text", "eval"

    def __init__(self, cfg: Config, corpus: Corpus, d, autocast):
        self.cfg, self.corpus, self.d, self.autocast = cfg, corpus, d, autocast
        T = cfg.model.seq_len
        self.loader = Loader(corpus.split("train", T), cfg.train.batch_size, cfg.train.seed, d.rank, d.world)

    def rows(self, index: int) -> Rows:
        batch = torch.from_numpy(self.loader.batch(index))
        return Rows(batch[:, :-1], batch[:, 1:])

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        """Loss (nats/token) and bits per byte on every held-out split, shared over ranks."""
        cfg, corpus, d = self.cfg, self.corpus, self.d
        T, B = cfg.model.seq_len, cfg.train.batch_size
        token_bytes = torch.from_numpy(corpus.tokenizer.token_byte_lengths.astype(np.int64))
        results = {}
        was_training = model.training
        model.eval()
        for name in corpus.heldout_sets:
            rows = corpus.split(name, T)
            if len(rows) == 0:
                continue
            idx = eval_indices(len(rows), cfg.train.eval_tokens // T)
            mine = idx[d.rank :: d.world]
            nats = toks = nbytes = 0.0
            # every rank runs the same number of forwards (FSDP needs all ranks in each one)
            n_batches = math.ceil(len(idx[0 :: d.world]) / B)
            for b in range(n_batches):
                chunk = mine[b * B : (b + 1) * B]
                if len(chunk) == 0:
                    chunk = idx[:1]
                    weight = 0.0
                else:
                    weight = 1.0
                batch = torch.from_numpy(rows.get(chunk))
                x, y = batch[:, :-1].to(d.device), batch[:, 1:]
                with self.autocast:
                    loss = model(x, y.to(d.device), reduction="none")
                nats += weight * float(loss.double().sum())
                toks += weight * y.numel()
                nbytes += weight * float(token_bytes[y].sum())
            nats, toks, nbytes = d.all_sum([nats, toks, nbytes])
            results[name] = {"loss": nats / toks, "bpb": nats / (nbytes * math.log(2)), "tokens": int(toks)}
        model.train(was_training)
        return results

    def summary(self, result: dict) -> str:
        return ", ".join(f"{k} {v['loss']:.4f} nats/tok {v['bpb']:.4f} bpb" for k, v in result.items())

    def report(self, result: dict | None) -> dict:
        m = self.corpus.manifest
        return {"heldout": result or {},
                "data": {"manifest_sha256": m["shards_sha256"], "train_tokens": m["splits"]["train"]["tokens"]}}


# --- image chat -----------------------------------------------------------------------------------
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


def sample_messages(tok, s: Sample) -> list[dict]:
    """One image-chat turn: the image and question from the user, the answer from the assistant."""
    return s.messages(with_answer=False) + [{"role": "assistant", "content": [{"type": "ids", "ids": answer_ids(tok, s)}]}]


def sample_ids(tok, s: Sample, n_img: int) -> tuple[list[int], list[bool]]:
    """(ids of the whole turn, which of them are trained on), from the one chat renderer."""
    return chat.training_row(tok, sample_messages(tok, s), n_img)


def collate(tok, samples: list[Sample], n_img: int, T: int, image_size: int):
    """→ x [B, T], y [B, T] (-1 except the answer and its end token), pixels [B, 3, S, S]."""
    x = torch.full((len(samples), T), tok.pad_id, dtype=torch.long)
    y = torch.full((len(samples), T), -1, dtype=torch.long)
    for i, s in enumerate(samples):
        ids, trained = sample_ids(tok, s, n_img)
        if trained.index(True) >= T:
            raise VisionError(f"a {s.task} prompt takes {trained.index(True)} tokens, more than the {T}-token "
                              "context; raise model.seq_len")
        xi, yi = chat.targets(ids[: T + 1], trained[: T + 1])
        x[i, : len(xi)] = torch.tensor(xi)
        y[i, : len(yi)] = torch.tensor(yi)
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


@torch.no_grad()
def token_scores(model, tok, samples: list[Sample], vc: VisionConfig) -> list[tuple[bool, float, float]]:
    """Per sample, by teacher forcing: (greedy exact match, fraction of answer tokens and
    <|assistant_end|> whose argmax is right, their mean cross-entropy in nats). A greedy decode
    returns exactly the answer iff the argmax at every answer position (end token included) is
    the answer's token, so one forward scores a batch."""
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


def exact_match(model, tok, samples: list[Sample], vc: VisionConfig, batch: int = 64) -> float:
    ok = []
    for i in range(0, len(samples), batch):
        ok += [r[0] for r in token_scores(model, tok, samples[i : i + batch], vc)]
    return sum(ok) / max(1, len(ok))


class ImageChatSource(Source):
    """Image-chat rows (the question in the user turn, the answer as the assistant's) with the
    encoder on the model as `model.vision`; held-out exact match per task."""

    name, eval_key = "image_chat", "vision_eval"

    def __init__(self, cfg: Config, tokenizer, rank: int = 0, world: int = 1):
        if cfg.train.fsdp and world > 1:
            raise ConfigError("vision runs use DDP; set train.fsdp=false")
        self.cfg, self.vc, self.tok, self.rank, self.world = cfg, cfg.vision, tokenizer, rank, world
        self.mix = Mix(self.vc.mix, cfg.train.seed)
        self.counts = count(self.vc, cfg.model.d_model)
        self._heldout = {}
        self.skipped_long = 0

    def attach(self, raw) -> None:
        self.raw = raw
        self.enc = attach(raw, self.vc, seed=self.cfg.train.seed)
        if self.vc.freeze_lm:
            for n, p in raw.named_parameters():
                if not n.startswith("vision."):
                    p.requires_grad_(False)

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

    def rows(self, index: int) -> Rows:
        """This rank's image rows of micro-batch `index` (global batch split over ranks), cut to
        the longest row (no padding to seq_len)."""
        B = self.vc.batch_size
        first = (index * self.world + self.rank) * B
        T, n_img = self.cfg.model.seq_len, self.vc.n_image_tokens
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
        x, y, px = collate(self.tok, samples, n_img, T, self.vc.image_size)
        L = int((x != self.tok.pad_id).sum(1).max())
        return Rows(x[:, :L], y[:, :L], px)

    def heldout(self, task: str, n: int) -> list[Sample]:
        if (task, n) not in self._heldout:
            self._heldout[(task, n)] = img_mod.heldout_samples(task, n, self.cfg.train.seed)
        return self._heldout[(task, n)]

    @torch.no_grad()
    def evaluate(self, model=None) -> dict:
        # the unwrapped model: every rank scores all samples itself, no collective in the forward
        n = self.vc.eval_samples
        tasks = [t for t in EVAL_TASKS if t in {name for name, _, _ in self.mix.entries}]
        return {t: exact_match(self.raw, self.tok, self.heldout(t, n), self.vc) for t in tasks}

    def summary(self, result: dict) -> str:
        return ", ".join(f"{k} {v:.1%}" for k, v in result.items())

    def report(self, result: dict | None) -> dict:
        return {"vision": {"encoder_params": self.counts.params, "encoder_flops_per_image": self.counts.flops_per_image,
                           "image_tokens": self.vc.n_image_tokens, "images_per_step": self.vc.batch_size * self.world,
                           "mix": self.vc.mix, "text_weight": self.vc.text_weight, "freeze_lm": self.vc.freeze_lm,
                           "heldout_accuracy": result}}
