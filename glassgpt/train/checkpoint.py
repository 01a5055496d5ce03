"""Checkpoints: safetensors weights + JSON metadata + optimizer and loader state.

Inference reads weights only (`read_weights`, `load_model`); only resuming and branching
read the optimizer state (`read_optimizer`).

A checkpoint is a directory `checkpoints/step_NNNNNNN/` written under a temporary name
and renamed when complete, then `checkpoints/latest` is replaced atomically. A crash or
a full disk at any moment leaves the previous checkpoint intact and `latest` pointing at it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from glassgpt import config as config_mod
from glassgpt.errors import CheckpointError


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(run_dir: Path, step: int, model_state: dict, optim_states: list, meta: dict, keep: int = 2) -> Path:
    ckdir = Path(run_dir) / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final, tmp = ckdir / name, ckdir / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
        torch.save({"optimizers": optim_states, "rng": torch.get_rng_state()}, tmp / "optim.pt")
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        _atomic_write_text(ckdir / "latest", name)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = latest(run_dir)
        raise CheckpointError(f"could not write checkpoint {name}: {e.strerror or e}; "
                              f"{'the previous checkpoint ' + prev.name + ' is intact' if prev else 'no earlier checkpoint exists'}") from None
    older = sorted(p for p in ckdir.glob("step_*") if p.name != name)
    for old in older[: max(0, len(older) - (keep - 1))] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    ckdir = Path(run_dir) / "checkpoints"
    pointer = ckdir / "latest"
    if pointer.exists():
        p = ckdir / pointer.read_text().strip()
        if (p / "meta.json").exists():
            return p
    done = sorted(p for p in ckdir.glob("step_*") if (p / "meta.json").exists()) if ckdir.exists() else []
    return done[-1] if done else None


def resolve(path: Path) -> Path:
    """A run directory, a checkpoint directory, or a speedrun's directory (its last model: the aligned
    assistant of a chat speedrun, else the target) → the checkpoint directory."""
    path = Path(path)
    if (path / "meta.json").exists() and (path / "model.safetensors").exists():
        return path
    if (path / "speedrun.json").exists():
        path = Path(json.loads((path / "speedrun.json").read_text()).get("final") or path / "target")
    ck = latest(path)
    if ck is None:
        raise CheckpointError(f"no checkpoint found in {path}")
    return ck


def read_weights(ck: Path) -> tuple[dict, dict]:
    """(meta, model_state): all that inference needs. Never opens optim.pt."""
    try:
        meta = json.loads((ck / "meta.json").read_text())
        state = load_file(str(ck / "model.safetensors"))
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {ck} is incomplete: {Path(e.filename).name} is missing") from None
    except Exception as e:  # corrupt JSON or safetensors header
        raise CheckpointError(f"checkpoint {ck} is corrupt: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return meta, state


def read_optimizer(ck: Path) -> dict | None:
    """The optimizer and RNG payload for resuming, or None when the checkpoint has none.
    weights_only: state dicts are tensors, numbers and lists, so nothing is unpickled as code."""
    if not (ck / "optim.pt").exists():
        return None
    try:
        return torch.load(ck / "optim.pt", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"optimizer state {ck / 'optim.pt'} is unreadable: {str(e).splitlines()[0][:200]}") from None


def weights_sha256(ck: Path) -> str:
    h = hashlib.sha256()
    with open(ck / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_compatible(meta: dict, cfg_dict: dict) -> None:
    """A checkpoint from another model config cannot be resumed into this one."""
    theirs, ours = meta.get("config", {}).get("model", {}), cfg_dict["model"]
    diff = [f"model.{k}: checkpoint {theirs.get(k)!r} vs config {ours[k]!r}" for k in ours if theirs.get(k) != ours[k]]
    if diff:
        raise CheckpointError("checkpoint was written by another model config (" + "; ".join(diff) + "); use a new --out or the same config")


def load_model(path, device: str = "cpu"):
    """(model, tokenizer, config) from a run or checkpoint directory, for eval and serving."""
    from glassgpt.data.tokenizer import Tokenizer
    from glassgpt.model.gpt import build

    ck = resolve(Path(path))
    meta, state = read_weights(ck)
    cfg = config_mod.from_dict(meta["config"])
    tok_path = ck.parent.parent / "tokenizer.json"
    if not tok_path.exists():
        raise CheckpointError(f"tokenizer.json missing from run directory {ck.parent.parent}")
    tokenizer = Tokenizer.load(tok_path)
    model = build(cfg.model, device=device, seed=None)
    if cfg.vision.enabled:  # the encoder is `model.vision`; its weights are in the same file
        from glassgpt.model.vision import attach

        attach(model, cfg.vision, seed=None)
    # an alignment head (a PPO policy's value head) is not part of generation
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {ck} does not match its config: {str(e).splitlines()[0]}") from None
    model.eval()
    return model, tokenizer, cfg
