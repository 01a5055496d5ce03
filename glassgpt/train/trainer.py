"""One trainer for every run: single process or torchrun (DDP / FSDP2), CPU or GPU.

A ladder rung and a target run are the same call with different configs. The run
directory gets: config.yaml (resolved), tokenizer.json, manifest.json, metrics.jsonl,
checkpoints/ and report.json (parameters, data, compute, hardware, method, results).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import resource
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from glassgpt import __version__
from glassgpt.config import Config
from glassgpt.data.shards import Corpus, Loader, prepare
from glassgpt.errors import CheckpointError, ConfigError, TrainingError
from glassgpt.model import flops as flops_mod
from glassgpt.model.gpt import build
from glassgpt.train import checkpoint, dist as dist_mod
from glassgpt.train.optim import build_optimizers, lr_multiplier, set_lr

log = logging.getLogger(__name__)


def fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def eval_indices(n_rows: int, n_wanted: int) -> np.ndarray:
    """Evenly spaced rows over a held-out split (fixed, so every eval sees the same text)."""
    n = min(n_rows, max(1, n_wanted))
    return np.linspace(0, n_rows - 1, n).round().astype(np.int64)


@torch.no_grad()
def evaluate(model, corpus: Corpus, cfg: Config, d: dist_mod.Dist, autocast) -> dict:
    """Loss (nats/token) and bits per byte on every held-out split, shared over ranks."""
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
            with autocast:
                loss = model(x, y.to(d.device), reduction="none")
            nats += weight * float(loss.double().sum())
            toks += weight * y.numel()
            nbytes += weight * float(token_bytes[y].sum())
        nats, toks, nbytes = d.all_sum([nats, toks, nbytes])
        results[name] = {"loss": nats / toks, "bpb": nats / (nbytes * math.log(2)), "tokens": int(toks)}
    model.train(was_training)
    return results


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records of steps after the checkpoint (they will be redone)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


def train(cfg: Config, out: Path, resume: bool = False, *, init_from: Path | None = None,
          lr_fn: Callable[[int, int], float] | None = None, save_at: Iterable[int] = ()) -> dict:
    """Train cfg into the run directory `out`; returns the report.

    For the scaling ladder's warmup-stable-decay branching (all optional, additive):
    `init_from` starts a new run from another run's checkpoint (weights, optimizer state and
    step; the loader continues from that step); `lr_fn(step, total)` replaces the config's
    schedule; `save_at` adds checkpoints at these step counts.
    """
    out = Path(out)
    d = dist_mod.setup()
    try:
        return _train(cfg, out, resume, d, init_from=init_from, lr_fn=lr_fn, save_at=set(save_at))
    finally:
        dist_mod.teardown()


def _train(cfg: Config, out: Path, resume: bool, d: dist_mod.Dist, init_from: Path | None = None,
           lr_fn: Callable[[int, int], float] | None = None, save_at: set | None = None) -> dict:
    t, m = cfg.train, cfg.model
    if t.threads:
        torch.set_num_threads(t.threads)
    fsdp = t.fsdp and d.world > 1
    if t.fsdp and d.world == 1:
        log.warning("train.fsdp ignored: FSDP needs torchrun with more than one process")
    if fsdp and t.optimizer == "muon":
        raise ConfigError("train.optimizer=muon needs whole matrices; with train.fsdp=true use train.optimizer=adamw")
    existing = checkpoint.latest(out)
    if existing and not resume:
        raise CheckpointError(f"{out} already holds checkpoints; pass --resume to continue it or choose another --out")

    # Data: rank 0 tokenizes once; the others then find it in the cache.
    if d.is_main:
        prepare(cfg.data)
    d.barrier()
    corpus = Corpus(prepare(cfg.data))
    m.vocab_size = corpus.tokenizer.vocab_size
    m.image_token_id = corpus.tokenizer.image_id
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
        shutil.copy(corpus.root / "tokenizer.json", out / "tokenizer.json")
        shutil.copy(corpus.root / "manifest.json", out / "manifest.json")

    torch.manual_seed(t.seed)
    raw = build(m, device=d.device, seed=t.seed)  # identical on every rank: same seed
    vis = vis_evals = None
    if cfg.vision.enabled:  # image input: the encoder joins the model as raw.vision (glassgpt.model.vision)
        from glassgpt.model.vision import VisionTraining

        vis = VisionTraining(raw, cfg, corpus.tokenizer, d.rank, d.world)
    start, opt_states = 0, None
    metrics_path = out / "metrics.jsonl"
    if existing and resume:
        meta, state, opt_payload = checkpoint.read(existing)
        checkpoint.check_compatible(meta, cfg.to_dict())
        raw.load_state_dict(state)
        opt_states = opt_payload["optimizers"]
        start = meta["step"]
        if d.is_main:
            _truncate_metrics(metrics_path, start)
        log.info("resumed from %s (step %d)", existing.name, start)
    elif init_from is not None:  # a branch: another run's weights, optimizer state and step
        meta, state, opt_payload = checkpoint.read(checkpoint.resolve(Path(init_from)))
        checkpoint.check_compatible(meta, cfg.to_dict())
        raw.load_state_dict(state)
        opt_states = opt_payload["optimizers"] if opt_payload else None
        start = meta["step"]
        if d.is_main and metrics_path.exists():
            metrics_path.unlink()
        log.info("branched from %s (step %d)", init_from, start)
    if fsdp:
        dist_mod.wrap(raw, d, fsdp=True)  # shards the parameters in place (DTensors)
    opts = build_optimizers(raw, cfg)
    if vis is not None:
        opts += vis.optimizers()
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
    fwd = torch.compile(model) if t.compile else model
    autocast = dist_mod.autocast(d.device)

    counts = flops_mod.count(m)
    tokens_per_step = t.batch_size * m.seq_len * t.grad_accum * d.world
    total = max(1, math.ceil(t.tokens / tokens_per_step))
    loader = Loader(corpus.split("train", m.seq_len), t.batch_size, t.seed, d.rank, d.world)
    if lr_fn is None:
        def lr_fn(step, total):
            return lr_multiplier(step, total, t.schedule, t.warmup_frac, t.cooldown_frac)
    save_at = save_at or set()
    if d.is_main:
        log.info("model: %s params (%s non-embedding), %.3g FLOPs/token; %d steps × %s tokens on %d×%s",
                 f"{counts.params:,}", f"{counts.params_non_embedding:,}", counts.flops_per_token, total,
                 f"{tokens_per_step:,}", d.world, d.device)

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
            checkpoint.save(out, step, state, opt_states,
                            {"config": cfg.to_dict(), "glassgpt": __version__, "tokens_seen": step * tokens_per_step},
                            keep=t.keep_checkpoints)
        d.barrier()

    metrics = open(metrics_path, "a") if d.is_main else None
    t0 = time.time()
    last_log_t, last_log_step = t0, start
    evals = {}
    loss_val = float("nan")
    fwd.train()
    try:
        for step in range(start, total):
            set_lr(opts, lr_fn(step, total))
            loss_sum = torch.zeros((), device=d.device)
            for micro in range(t.grad_accum):
                batch = torch.from_numpy(loader.batch(step * t.grad_accum + micro)).to(d.device)
                sync = micro == t.grad_accum - 1 or d.world == 1 or fsdp
                ctx = model.no_sync() if not sync else contextlib.nullcontext()
                with ctx, autocast:
                    if vis is None:
                        loss = fwd(batch[:, :-1], batch[:, 1:]) / t.grad_accum
                    else:  # text rows + image-chat rows, one forward (loss on answers)
                        loss = vis.loss(fwd, batch, step * t.grad_accum + micro) / t.grad_accum
                loss.backward()
                loss_sum += loss.detach()
            loss_val = d.all_sum([float(loss_sum)])[0] / d.world
            if not math.isfinite(loss_val):
                prev = checkpoint.latest(out)
                raise TrainingError(f"loss became {loss_val} at step {step + 1}; stopped. Last good checkpoint: "
                                    f"{prev if prev else 'none'}. Lower the learning rate or resume from it.")
            gnorm = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), t.grad_clip))
            for opt in opts:
                opt.step()
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            done = step + 1
            now = time.time()
            if d.is_main:
                metrics.write(json.dumps({"step": done, "loss": round(loss_val, 6), "grad_norm": round(gnorm, 4),
                                          "lr_mult": round(lr_fn(step, total), 6),
                                          "tokens": done * tokens_per_step, "flops": done * tokens_per_step * counts.flops_per_token,
                                          "time": round(now - t0, 3)}) + "\n")
                metrics.flush()
            if d.is_main and (done % t.log_every == 0 or done == total):
                tps = (done - last_log_step) * tokens_per_step / max(now - last_log_t, 1e-9)
                eta = (total - done) * (now - t0) / max(done - start, 1)
                log.info("step %d/%d | loss %.4f | %s tok/s | %.2f GFLOP/s | ETA %s", done, total, loss_val,
                         f"{tps:,.0f}", tps * counts.flops_per_token / 1e9, fmt_time(eta))
                last_log_t, last_log_step = now, done
            if done % t.eval_every == 0 or done == total:
                # the uncompiled model: eval's grad mode and last partial batches would each recompile
                evals = evaluate(model, corpus, cfg, d, autocast)
                if vis is not None:
                    vis_evals = vis.evaluate()
                    if d.is_main:
                        metrics.write(json.dumps({"step": done, "vision_eval": vis_evals}) + "\n")
                        log.info("vision eval @ %d: %s", done, ", ".join(f"{k} {v:.1%}" for k, v in vis_evals.items()))
                if d.is_main:
                    metrics.write(json.dumps({"step": done, "eval": evals}) + "\n")
                    metrics.flush()
                    log.info("eval @ %d: %s", done, ", ".join(f"{k} {v['loss']:.4f} nats/tok {v['bpb']:.4f} bpb" for k, v in evals.items()))
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
        "heldout": evals,
        "data": {"manifest_sha256": corpus.manifest["shards_sha256"], "train_tokens": corpus.manifest["splits"]["train"]["tokens"]},
        "hardware": {"device": d.device, "processes": d.world, "threads": torch.get_num_threads(),
                     "platform": platform.platform(), "torch": torch.__version__},
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "config": cfg.to_dict(),
    }
    if vis is not None:
        report["vision"] = {**vis.report(), "heldout_accuracy": vis_evals}
    if d.is_main:
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
