"""One trainer for every run: single process or torchrun (DDP / FSDP2), CPU or GPU.

A ladder rung and a target run are the same call with different configs; what a run trains
on is its batch sources (glassgpt.train.sources: text, image chat, ...), and a later stage
is a run started from an earlier one's weights (`init_from`). The run
directory gets: config.yaml (resolved), tokenizer.json, manifest.json, metrics.jsonl,
checkpoints/ and report.json (parameters, data, compute, hardware, method, results).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from glassgpt import __version__
from glassgpt.config import Config, ModelConfig, VisionConfig
from glassgpt.data.shards import Corpus, prepare
from glassgpt.errors import CheckpointError, ConfigError, TrainingError
from glassgpt.model import flops as flops_mod
from glassgpt.model.gpt import build
from glassgpt.train import checkpoint, dist as dist_mod, sources as sources_mod
from glassgpt.train.optim import build_optimizers, fast_newton_schulz, lr_multiplier, set_lr

log = logging.getLogger(__name__)


def fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# 'auto' compiles a CPU run of plain text of at least this many FLOPs, where a cold compile pays:
# the cpu preset's target (1.5e13) ran 53.4 s eager, 57.6 s compiled from a cold cache (a 18.8 s
# first step) and 43.6 s from a warm one (docs/performance.md). The tests' tiny runs stay eager.
AUTO_COMPILE_CPU_FLOPS = 3e13


def compile_model(model, mode: str, device, flops: float = 0.0, plain: bool = False) -> tuple:
    """(the callable to train with, whether it is compiled). 'auto' compiles on CUDA, and on a CPU
    a `plain` run (text rows of one fixed shape: no images, no RL generation, no document masks)
    of at least AUTO_COMPILE_CPU_FLOPS. Where torch.compile cannot be used, one line says why and
    the eager model trains."""
    if mode == "auto" and not str(device).startswith("cuda"):
        mode = "on" if plain and flops >= AUTO_COMPILE_CPU_FLOPS else "off"
    if mode == "off":
        return model, False
    if str(device) == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")):
        log.warning("train.compile=%s: inductor's CPU backend needs a C++ compiler (g++ or clang++, or $CXX); "
                    "training eager", mode)
        return model, False
    try:
        return torch.compile(model), True
    except Exception as e:  # e.g. no C++ compiler for inductor's CPU backend
        log.warning("torch.compile unavailable (%s); training eager", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return model, False


def compile_failure(e: BaseException) -> bool:
    """An error raised by torch.compile's tracing or code generation (not by the model's own code):
    e.g. inductor's C++ toolchain failing to import setuptools in a process where the stdlib's
    distutils was imported first."""
    return type(e).__module__.startswith(("torch._dynamo", "torch._inductor"))


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records of steps after the checkpoint (they will be redone)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


# Model keys a new stage may change: none of them changes a weight's shape.
STAGE_FREE_MODEL_KEYS = {"seq_len", "rope_base", "rope_scale", "rope_scaling", "rope_original_len", "vocab_size",
                         "image_token_id"}
# Vision keys that are training settings, not encoder shapes.
STAGE_FREE_VISION_KEYS = {"enabled", "mix", "batch_size", "text_weight", "freeze_lm", "lr", "muon_lr", "eval_samples",
                          "init_from", "encoder_from", "freeze_encoder", "chat", "no_image", "unrelated", "follow_up"}
# Vision keys that set the encoder's weight shapes (the projector's depend on the LM too).
ENCODER_SHAPE_KEYS = ("image_size", "patch_size", "stem", "width", "depth", "head_dim", "mlp_ratio")


@dataclass
class Parent:
    """The run a new stage starts from: its checkpoint, weights and tokenizer, read and checked
    before anything is written."""

    run: Path
    ck: Path
    meta: dict
    state: dict
    tokenizer: Path
    sha256: str

    def lineage(self) -> dict:
        return {"parent": str(self.run), "checkpoint": str(self.ck), "step": self.meta["step"],
                "parent_sha256": self.sha256}


def read_parent(path, cfg: Config) -> Parent:
    """Resolve and read `init_from`, and refuse a config whose weights would not fit it
    (CheckpointError naming the path or the key)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"init_from {path}: no such run or checkpoint directory")
    ck = checkpoint.resolve(path)
    meta, state = checkpoint.read_weights(ck)
    run = ck.parent.parent
    if not (run / "tokenizer.json").exists():
        raise CheckpointError(f"init_from {path}: tokenizer.json missing from run directory {run}")
    theirs = meta.get("config", {})
    ours = cfg.to_dict()
    # A stage tokenizes with the parent's tokenizer. A long-context stage (a long: section) refuses a
    # config asking for another one: its corpus, pass-key prompts and windows are sized in the
    # configured tokenizer's tokens. Other stages keep it quietly (their data.vocab_size is unused).
    theirs_vocab = theirs.get("data", {}).get("vocab_size")
    if "long" in ours and theirs_vocab is not None and cfg.data.vocab_size != theirs_vocab:
        raise CheckpointError(f"init_from {path}: the parent's tokenizer has a {theirs_vocab}-token vocabulary, this "
                              f"config's data.vocab_size={cfg.data.vocab_size}; a long-context stage keeps its "
                              f"parent's tokenizer (set data.vocab_size={theirs_vocab})")
    # a key the parent's config lacks was written before that key existed: it had the default
    tm = {**dataclasses.asdict(ModelConfig()), **theirs.get("model", {})}
    for k, v in dataclasses.asdict(cfg.model).items():  # optional keys too (to_dict leaves out their defaults)
        if k not in STAGE_FREE_MODEL_KEYS and tm.get(k) != v:
            raise CheckpointError(f"model.{k}: parent run has {tm.get(k)!r}, this config {v!r}")
    tv = {**dataclasses.asdict(VisionConfig()), **theirs.get("vision", {})}
    if cfg.vision.enabled and tv["enabled"]:
        for k, v in dataclasses.asdict(cfg.vision).items():
            if k not in STAGE_FREE_VISION_KEYS and tv.get(k) != v:
                raise CheckpointError(f"vision.{k}: parent run has {tv.get(k)!r}, this config {v!r}")
    return Parent(run, ck, meta, state, run / "tokenizer.json", checkpoint.weights_sha256(ck))


def load_stage_weights(raw, parent: Parent) -> None:
    """The parent's weights into a freshly built model. An encoder or an alignment head (`head.`:
    reward, value, classifier) the parent lacks stays as initialised; one the parent has and this
    config does not is left behind."""
    state = parent.state
    if getattr(raw, "vision", None) is None:
        state = {k: v for k, v in state.items() if not k.startswith("vision.")}
    head = getattr(raw, "head", None)
    if head is None or ("head.weight" in state and state["head.weight"].shape != head.weight.shape):
        state = {k: v for k, v in state.items() if not k.startswith("head.")}  # another stage's head
    ours = raw.state_dict()
    for k, v in state.items():
        if k in ours and ours[k].shape != v.shape:
            raise CheckpointError(f"{k}: parent run has shape {tuple(v.shape)}, this config {tuple(ours[k].shape)}")
    # a smear map the parent lacks starts at zero: the parent's function, then learnt
    missing = [k for k in ours if k not in state and not k.startswith(("vision.", "head.", "smear."))]
    extra = [k for k in state if k not in ours]
    if missing or extra:
        key = (missing or extra)[0]
        hint = "; the parent smears tokens: set model.smear=true" if key.startswith("smear.") else ""
        raise CheckpointError(f"{key}: {'missing from the parent run' if missing else 'in the parent run, not in this model'} "
                              f"({parent.ck}){hint}")
    raw.load_state_dict(state, strict=False)


@dataclass
class Encoder:
    """A trained image encoder for `vision.encoder_from`: its weights without the projector."""

    state: dict
    info: dict


def read_encoder(path, cfg: Config) -> Encoder:
    """Resolve and read `vision.encoder_from`, and refuse an encoder of another shape (CheckpointError
    naming the path and the key)."""
    path = Path(path)
    where = f"vision.encoder_from {path}"
    if not path.exists():
        raise CheckpointError(f"{where}: no such run or checkpoint directory")
    if not cfg.vision.enabled:
        raise ConfigError(f"{where}: set vision.enabled=true (a text run has no encoder to start)")
    ck = checkpoint.resolve(path)
    meta, state = checkpoint.read_weights(ck)
    theirs = {**dataclasses.asdict(VisionConfig()), **meta.get("config", {}).get("vision", {})}
    if not theirs["enabled"]:
        raise CheckpointError(f"{where}: that run has no image encoder")
    for k in ENCODER_SHAPE_KEYS:
        if theirs[k] != getattr(cfg.vision, k):
            raise CheckpointError(f"{where}: vision.{k} is {theirs[k]!r} there, {getattr(cfg.vision, k)!r} here")
    enc = {k[len("vision."):]: v for k, v in state.items() if k.startswith("vision.") and not k.startswith("vision.proj.")}
    return Encoder(enc, {"run": str(ck.parent.parent), "checkpoint": str(ck), "step": meta["step"],
                         "sha256": checkpoint.weights_sha256(ck)})


def train(cfg: Config, out: Path, resume: bool = False, *, init_from: Path | None = None,
          branch_from: Path | None = None, lr_fn: Callable[[int, int], float] | None = None,
          save_at: Iterable[int] = ()) -> dict:
    """Train cfg into the run directory `out`; returns the report.

    `init_from` (a run or checkpoint directory) starts a new stage from its WEIGHTS: fresh
    optimizers and schedule from step 0, any config change that keeps every weight's shape
    (seq_len, RoPE, data, schedule, tokens, vision on/off: a fresh encoder where the parent has
    none) and a one-line CheckpointError naming the key for the rest, before `out` is created.
    The stage tokenizes its data with the parent's tokenizer (copied into `out`), so
    data.vocab_size and data.tokenizer_* do not apply to it. report.json's `lineage` names the
    parent, its step and the sha256 of its weights (None for a fresh run). `resume` continues
    `out` exactly, as if it had never stopped.

    For the scaling ladder's warmup-stable-decay branching (all optional, additive):
    `branch_from` starts a new run from another run's checkpoint (weights, optimizer state and
    step; the loader continues from that step); `lr_fn(step, total)` replaces the config's
    schedule; `save_at` adds checkpoints at these step counts.
    """
    out = Path(out)
    init_from = init_from or cfg.vision.init_from or None
    if init_from is not None and branch_from is not None:
        raise ConfigError("init_from starts a new stage, branch_from continues a run's optimizer: give one")
    existing = checkpoint.latest(out)
    if existing and not resume:
        raise CheckpointError(f"{out} already holds checkpoints; pass --resume to continue it or choose another --out")
    # Read and check the parent before anything is written: bad input leaves no run directory.
    parent = read_parent(init_from, cfg) if init_from is not None and not existing else None
    encoder = read_encoder(cfg.vision.encoder_from, cfg) if cfg.vision.encoder_from and not existing else None
    d = dist_mod.setup()
    try:
        return _train(cfg, out, resume, d, parent=parent, encoder=encoder, branch_from=branch_from, lr_fn=lr_fn,
                      save_at=set(save_at))
    finally:
        dist_mod.teardown()


def _train(cfg: Config, out: Path, resume: bool, d: dist_mod.Dist, parent: Parent | None = None,
           encoder: Encoder | None = None, branch_from: Path | None = None, lr_fn: Callable[[int, int], float] | None = None,
           save_at: set | None = None) -> dict:
    t, m = cfg.train, cfg.model
    if t.threads:
        torch.set_num_threads(t.threads)
    fsdp = t.fsdp and d.world > 1
    if t.fsdp and d.world == 1:
        log.warning("train.fsdp ignored: FSDP needs torchrun with more than one process")
    if fsdp and t.optimizer == "muon":
        raise ConfigError("train.optimizer=muon needs whole matrices; with train.fsdp=true use train.optimizer=adamw")
    existing = checkpoint.latest(out)

    # Data: rank 0 tokenizes once; the others then find it in the cache. A stage tokenizes its
    # data with the parent's tokenizer, so token ids mean what the parent's weights learned.
    tokenizer = parent.tokenizer if parent else None
    if existing and resume:  # a stage resumes with the tokenizer it started with
        started = json.loads((existing / "meta.json").read_text()).get("lineage") or {}
        tokenizer = out / "tokenizer.json" if started.get("kind") == "init" else None
    if d.is_main:
        prepare(cfg.data, tokenizer=tokenizer)
    d.barrier()
    corpus = Corpus(prepare(cfg.data, tokenizer=tokenizer))
    m.vocab_size = corpus.tokenizer.vocab_size
    m.image_token_id = corpus.tokenizer.image_id
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
        shutil.copy(corpus.root / "tokenizer.json", out / "tokenizer.json")
        corpus.tokenizer.save_hf_config(out, m.seq_len)  # BOS/EOS for other libraries' loaders
        shutil.copy(corpus.root / "manifest.json", out / "manifest.json")

    torch.manual_seed(t.seed)
    raw = build(m, device=d.device, seed=t.seed)  # identical on every rank: same seed
    precision = dist_mod.resolve_precision(t.precision, d.device)
    autocast = dist_mod.autocast(d.device, precision)
    if cfg.align.stage:  # an alignment stage: sources with objectives of their own (glassgpt.align)
        from glassgpt.align.sources import build_sources

        sources = build_sources(cfg, corpus, d, autocast)
    else:
        sources = sources_mod.build(cfg, corpus, d, autocast)
    for src in sources:
        src.attach(raw)  # e.g. the image encoder as raw.vision
    start, opt_states = 0, None
    lineage = None
    metrics_path = out / "metrics.jsonl"
    if existing and resume:
        meta, state = checkpoint.read_weights(existing)
        checkpoint.check_compatible(meta, cfg.to_dict())
        raw.load_state_dict(state)
        opt_states = (checkpoint.read_optimizer(existing) or {}).get("optimizers")
        start, lineage = meta["step"], meta.get("lineage")
        if d.is_main:
            _truncate_metrics(metrics_path, start)
        log.info("resumed from %s (step %d)", existing.name, start)
    elif parent is not None:  # a new stage: the parent's weights, nothing else
        load_stage_weights(raw, parent)
        lineage = {"kind": "init", **parent.lineage()}
        if d.is_main and metrics_path.exists():
            metrics_path.unlink()
        log.info("new stage from %s (step %d)", parent.ck, parent.meta["step"])
    elif branch_from is not None:  # a branch: another run's weights, optimizer state and step
        ck = checkpoint.resolve(Path(branch_from))
        meta, state = checkpoint.read_weights(ck)
        checkpoint.check_compatible(meta, cfg.to_dict())
        raw.load_state_dict(state)
        opt_payload = checkpoint.read_optimizer(ck)
        opt_states = opt_payload["optimizers"] if opt_payload else None
        start = meta["step"]
        lineage = {"kind": "branch", "parent": str(ck.parent.parent), "checkpoint": str(ck), "step": start,
                   "parent_sha256": checkpoint.weights_sha256(ck)}
        if d.is_main and metrics_path.exists():
            metrics_path.unlink()
        log.info("branched from %s (step %d)", branch_from, start)
    if encoder is not None:  # a trained encoder under a fresh projector
        missing, extra = raw.vision.load_state_dict(encoder.state, strict=False)
        if extra or any(not k.startswith("proj.") for k in missing):
            raise CheckpointError(f"vision.encoder_from {encoder.info['run']}: weights do not match this encoder "
                                  f"({(extra or missing)[0]})")
        lineage = {**(lineage or {}), "encoder": encoder.info}
        log.info("image encoder from %s (step %d)", encoder.info["checkpoint"], encoder.info["step"])
    for src in sources:  # weights are in place: e.g. an alignment stage's frozen reference from the parent
        if hasattr(src, "ready"):
            src.ready(raw, lineage)
    if fsdp:
        dist_mod.wrap(raw, d, fsdp=True)  # shards the parameters in place (DTensors)
    opts = build_optimizers(raw, cfg, precision)
    for src in sources:
        opts += src.optimizers()
    if opt_states is not None:
        if len(opt_states) != len(opts):  # e.g. vision.muon_lr switched on or off since the checkpoint
            raise CheckpointError(f"checkpoint holds {len(opt_states)} optimizer states, this config builds {len(opts)} "
                                  "(train.optimizer or vision.muon_lr changed?); use a new --out or the same config")
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            for opt, s in zip(opts, opt_states):
                set_optimizer_state_dict(raw, opt, s, options=StateDictOptions(full_state_dict=True))
        else:
            for opt, s in zip(opts, opt_states):
                opt.load_state_dict(s)

    model = raw if fsdp else dist_mod.wrap(raw, d, fsdp=False)
    counts = flops_mod.count(m)
    tokens_per_step = t.batch_size * m.seq_len * t.grad_accum * d.world
    total = cfg.align.stage_steps() or max(1, math.ceil(t.tokens / tokens_per_step))
    plain = (not cfg.align.stage and not cfg.long.doc_mask and len(cfg.long.schedule(m.seq_len)) == 1
             and all(src.fixed_shape for src in sources))
    fwd, compiled = compile_model(model, t.compile, d.device, (total - start) * tokens_per_step * counts.flops_per_token, plain)
    fast_newton_schulz(opts, precision, compiled)
    if lr_fn is None:
        def lr_fn(step, total):
            return lr_multiplier(step, total, t.schedule, t.warmup_frac, t.cooldown_frac)
    save_at = save_at or set()
    if d.is_main:
        log.info("model: %s params (%s non-embedding), %.3g FLOPs/token; %d steps × %s tokens on %d×%s, %s%s",
                 f"{counts.params:,}", f"{counts.params_non_embedding:,}", counts.flops_per_token, total,
                 f"{tokens_per_step:,}", d.world, d.device, precision, ", compiled" if compiled else "")

    def save(step):
        if fsdp:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)

            full = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_model_state_dict(raw, options=full)
            opt_states = [get_optimizer_state_dict(raw, o, options=full) for o in opts]
        else:
            state, opt_states = raw.state_dict(), [o.state_dict() for o in opts]
        if d.is_main:
            meta = {"config": cfg.to_dict(), "glassgpt": __version__, "tokens_seen": step * tokens_per_step}
            if lineage:
                meta["lineage"] = lineage
            checkpoint.save(out, step, state, opt_states, meta, keep=t.keep_checkpoints)
        d.barrier()

    # Under DDP/FSDP one forward must carry every row of a backward, so several sources share
    # one forward there; a single process runs one forward per source (no padding between them).
    shared_forward = d.world > 1 and sum(src.weight > 0 for src in sources) > 1

    def step_loss(index):
        """The step's loss; None when a source skips the step (e.g. an RL reward turned NaN)."""
        own = [src for src in sources if src.weight > 0 and hasattr(src, "loss")]  # objectives of their own
        loss = None
        for src in own:
            part = src.loss(fwd, raw, index)
            if part is None:
                return None
            loss = part if loss is None else loss + part
        active = [(src, src.rows(index)) for src in sources if src.weight > 0 and not hasattr(src, "loss")]
        if shared_forward:
            return _shared_loss(fwd, raw, active, d)
        for src, r in active:
            emb = raw.vision(r.pixels.to(d.device)).reshape(-1, m.d_model) if r.pixels is not None else None
            kw = {} if r.docs is None else {"docs": r.docs}  # document masking (long.doc_mask)
            part = fwd(r.x.to(d.device), r.y.to(d.device), image_embeds=emb, **kw)
            part = part if src.weight == 1.0 else src.weight * part
            loss = part if loss is None else loss + part
        return loss

    metrics = open(metrics_path, "a") if d.is_main else None
    t0 = time.time()
    last_log_t, last_log_step = t0, start
    evals = {src.name: None for src in sources}
    loss_val = float("nan")
    skipped = 0  # steps a source skipped (no update)
    first_step_s = None  # with compile: the compile's cost, reported
    fwd.train()
    try:
        for step in range(start, total):
            set_lr(opts, lr_fn(step, total))
            loss_sum = torch.zeros((), device=d.device)
            skip = False
            for micro in range(t.grad_accum):
                sync = micro == t.grad_accum - 1 or d.world == 1 or fsdp
                ctx = model.no_sync() if not sync else contextlib.nullcontext()
                with ctx, autocast:
                    try:
                        loss = step_loss(step * t.grad_accum + micro)
                    except Exception as e:  # torch.compile compiles at the first call: fail there, train eager
                        if not (compiled and step == start and micro == 0 and compile_failure(e)):
                            raise
                        log.warning("torch.compile failed at the first step (%s: %s); training eager",
                                    type(e).__name__, (str(e).strip().splitlines() or [""])[-1][:200])
                        fwd, compiled = model, False
                        fast_newton_schulz(opts, precision, False)
                        loss = step_loss(step * t.grad_accum + micro)
                if loss is None:
                    skip = True
                    break
                loss = loss / t.grad_accum
                loss.backward()
                loss_sum += loss.detach()
            loss_val = d.all_sum([float(loss_sum)])[0] / d.world if not skip else float("nan")
            if skip:  # the source counted it (and stops the run if it keeps happening)
                skipped += 1
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
            elif not math.isfinite(loss_val):
                prev = checkpoint.latest(out)
                raise TrainingError(f"loss became {loss_val} at step {step + 1}; stopped. Last good checkpoint: "
                                    f"{prev if prev else 'none'}. Lower the learning rate or resume from it.")
            gnorm = float("nan")
            if not skip:
                gnorm = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), t.grad_clip))
                for opt in opts:
                    opt.step()
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
            done = step + 1
            now = time.time()
            if step == start:
                first_step_s = now - t0
                if compiled and d.is_main:
                    log.info("first step %.1f s (torch.compile included)", first_step_s)
            extra = {}  # what sources measured this step (an RL stage: reward, KL, refusal rates)
            for src in sources:
                extra.update(getattr(src, "step_metrics", None) or {})
            if d.is_main:
                rec = {"step": done, "loss": round(loss_val, 6) if not skip else None,
                       "grad_norm": round(gnorm, 4) if not skip else None, "lr_mult": round(lr_fn(step, total), 6),
                       "tokens": done * tokens_per_step, "flops": done * tokens_per_step * counts.flops_per_token,
                       "time": round(now - t0, 3), **extra}
                if skip:
                    rec["skipped"] = True
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
            if d.is_main and (done % t.log_every == 0 or done == total):
                tps = (done - last_log_step) * tokens_per_step / max(now - last_log_t, 1e-9)
                eta = (total - done) * (now - t0) / max(done - start, 1)
                more = "".join(f" | {k} {v:.3g}" for k, v in extra.items() if isinstance(v, (int, float)))
                log.info("step %d/%d | loss %.4f | %s tok/s | %.2f GFLOP/s%s | ETA %s", done, total, loss_val,
                         f"{tps:,.0f}", tps * counts.flops_per_token / 1e9, more, fmt_time(eta))
                last_log_t, last_log_step = now, done
            if done % t.eval_every == 0 or done == total:
                for src in sources:
                    # the uncompiled model: eval's grad mode and last partial batches would each recompile
                    evals[src.name] = src.evaluate(model)
                    if d.is_main:
                        metrics.write(json.dumps({"step": done, src.eval_key: evals[src.name]}) + "\n")
                        log.info("%s @ %d: %s", src.eval_key.replace("_", " "), done, src.summary(evals[src.name]))
                if d.is_main:
                    metrics.flush()
            if done % t.checkpoint_every == 0 or done == total or done in save_at:
                save(done)
    finally:
        if metrics:
            metrics.close()
    seconds = time.time() - t0
    report = {
        "glassgpt": __version__,
        "params": counts.params,
        "params_non_embedding": counts.params_non_embedding,
        "params_blocks": counts.params_blocks,
        "flops_per_token": counts.flops_per_token,
        "tokens": total * tokens_per_step,
        "flops": float(total * tokens_per_step * counts.flops_per_token),
        "steps": total,
        "final_train_loss": loss_val,
        "skipped_steps": skipped,
        "lineage": lineage,
    }
    for src in sources:
        report.update(src.report(evals[src.name]))
    report.update({
        "hardware": {"device": d.device, "processes": d.world, "threads": torch.get_num_threads(),
                     "platform": platform.platform(), "torch": torch.__version__,
                     "cpu_capability": dist_mod.cpu_capability()},
        "precision": precision,
        "compile": compiled,
        "first_step_seconds": None if first_step_s is None else round(first_step_s, 2),
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "config": cfg.to_dict(),
    })
    if d.is_main:
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _shared_loss(fwd, raw, active, d):
    """Several sources' rows in one forward (DDP): right-padded to the widest (targets -1 in the
    padding; causal attention keeps it from touching real positions). Each source's loss is its
    summed token losses over its target tokens on ALL ranks, times the world size: DDP averages
    gradients over ranks, so the step is the one a single process takes with the whole batch
    (a per-rank mean would weight the ranks' answer tokens unequally)."""
    L = max(r.x.size(1) for _, r in active)
    xs, ys, px = [], [], []
    for _, r in active:
        pad = L - r.x.size(1)
        xs.append(F.pad(r.x, (0, pad), value=0))
        ys.append(F.pad(r.y, (0, pad), value=-1))
        if r.pixels is not None:
            px.append(r.pixels)
    x, y = torch.cat(xs).to(d.device), torch.cat(ys).to(d.device)
    emb = raw.vision(torch.cat(px).to(d.device)).reshape(-1, raw.cfg.d_model) if px else None
    kw = {}
    if any(r.docs is not None for _, r in active):  # long.doc_mask: a row without docs is one document,
        docs = [r.docs if r.docs is not None else torch.zeros_like(r.x) for _, r in active]  # padding joins its last
        kw["docs"] = torch.cat([torch.cat([t, t[:, -1:].expand(-1, L - t.size(1))], 1) for t in docs]).to(d.device)
    per = fwd(x, y, image_embeds=emb, reduction="none", **kw).view(x.size(0), -1)
    bounds, row = [], 0
    for _, r in active:
        bounds.append((row, row + r.x.size(0)))
        row += r.x.size(0)
    counts = d.all_sum([float((y[a:b] != -1).sum()) for a, b in bounds])
    loss = None
    for (src, _), (a, b), n in zip(active, bounds, counts):
        part = src.weight * per[a:b].sum() * (d.world / max(n, 1.0))
        loss = part if loss is None else loss + part
    return loss
