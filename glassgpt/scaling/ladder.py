"""The ladder: small runs in the target's own shape family, planned under compute budgets.

Transfer rule (written once; `rung_config` is the only place it lives):
- **shape**: a rung of width w keeps the target's aspect ratio (width / depth):
  depth = clamp(round(w / aspect), min_depth, target depth), with min_depth = 2 (1 only when
  the target itself has one block); min(the target's heads, w / 8) heads (head_dim = w / heads;
  a width they do not split into even head widths is skipped). Tokenizer, data, sequence length, optimizer, MLP
  kind and seed are the target's.
- **learning rate**: the trainer's own rule (`train.optim.lr_scale`: AdamW rates ∝ d^-1/2,
  Muon's rate fixed) — the rung and the target go through the same code path. `bench/lr_transfer.py`
  checks it size by size (docs/scaling.md: Muon's rate is the best of ×½/×1/×2 from w8 to w768; the AdamW
  rates' small rungs prefer ×2).
- **batch**: the target's batch in sequences, halved until the shortest token budget of the
  rung gets at least `min_steps` optimizer steps; or (`batch="steps"`) proportional to the rung's
  tokens on the line, so that every point on the line takes the target's number of steps.
- **token budgets**: each size trains on the target's tokens-per-parameter ratio R times
  `ratios` (default ¼, ½, 1, 2), as ONE warmup-stable-decay run: a stable run to the last
  decay start, and a linear cooldown over the last `cooldown_frac` of each budget branched
  from the stable run's checkpoint (warmup in absolute steps, so all branches share it).
  N counts non-embedding parameters (the LM head included: it is a matmul), FLOPs are exact
  (`model.flops.count`, attention and head included).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

from glassgpt import config as config_mod
from glassgpt.config import Config, ModelConfig, ScalingConfig
from glassgpt.errors import ScalingError, TrainingError
from glassgpt.model import flops as flops_mod

log = logging.getLogger(__name__)

PLAN_VERSION = 1


def target_sha256(cfg_dict: dict) -> str:
    """sha256 of a config, ignoring the two fields the trainer fills in from the tokenizer."""
    import hashlib

    d = copy.deepcopy(cfg_dict)
    d["model"].pop("vocab_size", None)
    d["model"].pop("image_token_id", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _vocab(cfg: Config) -> int:
    return cfg.model.vocab_size or cfg.data.vocab_size


def counts(cfg: Config) -> flops_mod.Counts:
    m = dataclasses.replace(cfg.model, vocab_size=_vocab(cfg))
    return flops_mod.count(m)


def target_summary(cfg: Config) -> dict:
    c = counts(cfg)
    tps = cfg.train.batch_size * cfg.model.seq_len * cfg.train.grad_accum
    steps = max(1, math.ceil(cfg.train.tokens / tps))
    tokens = steps * tps
    return {"params": c.params, "params_non_embedding": c.params_non_embedding, "tokens": tokens,
            "flops": float(tokens * c.flops_per_token), "flops_per_token": c.flops_per_token}


def rung_shape(target: ModelConfig, width: int) -> ModelConfig:
    """The transfer rule's shape: same aspect ratio, and min(the target's heads, width / 8) heads, so
    attention keeps one structure across the ladder and the head count never falls as width grows.
    A width those heads do not split into even widths (RoPE needs pairs) is no rung: the planner skips
    it. (Taking the largest head count that divides each width instead gave a 12-head target 10 heads
    of 8 at w80 and 4 of 26 at w104, and its loss line a kink there: docs/devlog.md, 2026-11-30.)"""
    aspect = target.d_model / target.depth
    min_depth = 1 if target.depth == 1 else 2
    depth = int(min(target.depth, max(min_depth, round(width / aspect))))
    heads = max(1, min(target.n_heads, width // 8))
    if width % heads or (width // heads) % 2:
        raise ScalingError(f"rung width {width} cannot be split into {heads} even-width heads (the target's "
                           f"{target.n_heads}, at most one per 8 of width); use a width that is a multiple of {2 * heads}")
    m = dataclasses.replace(target, width=width, depth=depth, head_dim=width // heads)
    if m.n_heads % m.kv_groups:
        m.kv_groups = 1
    return m


@dataclasses.dataclass
class Size:
    name: str
    width: int
    depth: int
    head_dim: int
    batch_size: int
    params: int
    params_non_embedding: int
    flops_per_token: int
    tokens_per_step: int
    budgets: list[int]  # total steps of each branch (ascending)
    decay_starts: list[int]  # step at which each branch's cooldown starts
    warmup_steps: int

    @property
    def tokens(self) -> list[int]:
        return [s * self.tokens_per_step for s in self.budgets]

    @property
    def flops(self) -> list[float]:  # compute of each point as if it were its own run
        return [float(t * self.flops_per_token) for t in self.tokens]

    @property
    def spent_flops(self) -> float:  # what the branching actually costs: stable + the cooldowns
        steps = self.decay_starts[-1] + sum(b - s for b, s in zip(self.budgets, self.decay_starts))
        return float(steps * self.tokens_per_step * self.flops_per_token)


def _size(target_cfg: Config, width: int, tgt: dict, ratios: list[float], cooldown_frac: float,
          warmup_frac: float, min_steps: int, line: str = "ratio", batch: str = "halve") -> Size:
    m = rung_shape(target_cfg.model, width)
    c = flops_mod.count(dataclasses.replace(m, vocab_size=_vocab(target_cfg)))
    R = tgt["tokens"] / tgt["params_non_embedding"]
    T = m.seq_len
    b = target_cfg.train.batch_size * target_cfg.train.grad_accum
    if line == "tokens":  # iso-token: the target's own schedule, only the width differs
        want = [tgt["tokens"] * r for r in ratios]
    else:
        want = [R * r * c.params_non_embedding for r in ratios]
        if batch == "steps":  # the point on the line takes the target's number of steps: batch ∝ its tokens
            on = min(range(len(ratios)), key=lambda i: abs(math.log(ratios[i])))
            b = max(1, round(b * want[on] / tgt["tokens"]))
        else:
            while b > 1 and want[0] / (b * T) < min_steps:
                b //= 2
    tps = b * T
    budgets = [max(1, round(w / tps)) for w in want]
    starts = [max(1, round((1 - cooldown_frac) * s)) for s in budgets]
    warm = max(1, round(warmup_frac * budgets[0]))
    return Size(f"w{width}_L{m.depth}", width, m.depth, m.head_dim, b, c.params, c.params_non_embedding,
                c.flops_per_token, tps, budgets, starts, warm)


_D = ScalingConfig()  # plan()'s defaults are the one table of them, config.ScalingConfig


def plan(target_cfg: Config, max_fraction: float = _D.max_fraction, budget_fraction: float = _D.budget_fraction,
         n_sizes: int = _D.n_sizes, min_sizes: int = _D.min_sizes, span_decades: float = _D.span_decades,
         ratios: tuple[float, ...] = _D.ratios, min_steps: int = _D.min_steps, width_step: int = _D.width_step,
         flops_per_second: float | None = None, line: str = _D.line, batch: str = _D.batch) -> dict:
    """Choose the rungs; raise ScalingError naming the smallest feasible budget when none fit.

    The options are explicit (a target's own `scaling` section is not read here): the speedrun,
    `glassgpt ladder plan` and the benches pass `**target_cfg.scaling.plan_kwargs()`.

    line="ratio": each size trains on the target's tokens per parameter × `ratios`;
    line="tokens": each size trains on the target's tokens × `ratios` (ratios ≤ 1) with the target's
    batch, so the rung on the line runs the target's exact schedule and differs only in width.
    The ratio line's batch: "halve" (the target's, halved until the shortest budget gets `min_steps`
    steps) or "steps" (∝ the size's tokens on the line, so that point takes the target's number of
    steps, as on the iso-token line; rounded to whole sequences, at least one)."""
    if line not in ("ratio", "tokens"):
        raise ScalingError(f"--line must be 'ratio' or 'tokens', not {line!r}")
    if batch not in ("halve", "steps"):
        raise ScalingError(f"--batch must be 'halve' or 'steps', not {batch!r}")
    if line == "tokens" and max(ratios) > 1:
        raise ScalingError(f"an iso-token ladder trains each size on at most the target's tokens; ratios {tuple(ratios)} exceed 1")
    if not (0 < max_fraction <= budget_fraction):
        raise ScalingError(f"need 0 < --max-fraction ({max_fraction}) ≤ --budget-fraction ({budget_fraction})")
    if n_sizes < min_sizes:
        raise ScalingError(f"n_sizes={n_sizes} is below the {min_sizes} sizes a fit needs")
    tgt = target_summary(target_cfg)
    t = target_cfg.train
    cool = t.cooldown_frac if t.schedule == "wsd" and t.cooldown_frac > 0 else 0.2
    ratios = sorted(ratios)

    def make(w):
        return _size(target_cfg, w, tgt, list(ratios), cool, t.warmup_frac, min_steps, line, batch)

    # every candidate width in the family, below the target's width
    cands = []
    for w in range(width_step, target_cfg.model.d_model + 1, width_step):
        try:
            s = make(w)
        except ScalingError:  # its heads do not split this width (rung_shape)
            continue
        if len(set(s.budgets)) == len(s.budgets) and s.budgets[0] >= min_steps:
            cands.append(s)
    cap = max_fraction * tgt["flops"]
    fits = [s for s in cands if s.flops[-1] <= cap]
    if not cands:
        raise ScalingError("no rung of the target's shape family gets enough steps; train the target on more tokens "
                           f"(train.tokens) or lower min_steps ({min_steps})")
    # the smallest max-fraction that can hold min_sizes sizes spanning span_decades
    need = None
    for i, top in enumerate(cands):
        lo = [s for s in cands[: i + 1] if s.flops[-1] <= top.flops[-1] / 10 ** span_decades]
        if lo and i + 1 >= min_sizes:
            need = top.flops[-1] / tgt["flops"]
            break
    if len(fits) < min_sizes or fits[0].flops[-1] > fits[-1].flops[-1] / 10 ** span_decades:
        hint = (f"the smallest feasible --max-fraction is {need:.3g}" if need else
                "no max-fraction is feasible: the target is too small for this ladder; use a larger target")
        raise ScalingError(f"only {len(fits)} rung sizes fit under --max-fraction {max_fraction:g} of the target's "
                           f"{tgt['flops']:.3g} FLOPs, need {min_sizes} spanning {span_decades} decades; {hint}")
    top = fits[-1]
    lo_c = top.flops[-1] / 10 ** span_decades
    # n_sizes sizes (fewer if fewer fit, never under min_sizes) geometric in compute from the top down
    # to ≥ span_decades below it
    n = min(n_sizes, len(fits))
    targets = [math.exp(math.log(top.flops[-1]) - k * (math.log(top.flops[-1]) - math.log(lo_c)) / (n - 1))
               for k in range(n)]
    chosen: list[Size] = []
    for c in targets:
        pool = [s for s in fits if s not in chosen]
        if c == targets[-1]:
            pool = [s for s in pool if s.flops[-1] <= lo_c] or pool
        best = min(pool, key=lambda s: abs(math.log(s.flops[-1] / c)))
        chosen.append(best)
    chosen = sorted(chosen, key=lambda s: s.flops[-1])
    total = sum(s.spent_flops for s in chosen)
    if total > budget_fraction * tgt["flops"]:
        raise ScalingError(f"this ladder needs {total:.3g} FLOPs = {total / tgt['flops']:.3g} of the target; "
                           f"the smallest feasible --budget-fraction is {total / tgt['flops']:.3g} "
                           f"(or lower --max-fraction, now {max_fraction:g})")
    fps = flops_per_second or default_flops_per_second()
    rungs = []
    for s in chosen:
        rungs.append({**dataclasses.asdict(s), "tokens": s.tokens, "flops": s.flops, "spent_flops": s.spent_flops,
                      "config": rung_config(target_cfg, s, s.budgets[-1]).to_dict()})
    return {
        "version": PLAN_VERSION,
        "target": {**tgt, "config": target_cfg.to_dict(), "config_sha256": target_sha256(target_cfg.to_dict())},
        "max_fraction": max_fraction, "budget_fraction": budget_fraction, "ratios": ratios, "line": line, "batch": batch, "cooldown_frac": cool,
        "sizes": rungs,
        "max_run_flops": max(s.flops[-1] for s in chosen),
        "total_flops": total,
        "flops_per_second": fps,
        "estimated_seconds": total / fps,
    }


def default_flops_per_second() -> float:
    import torch

    return 2e14 if torch.cuda.is_available() else 2e10


def rung_config(target_cfg: Config, s: Size, steps: int) -> Config:
    cfg = copy.deepcopy(target_cfg)
    cfg.model.width, cfg.model.depth, cfg.model.head_dim = s.width, s.depth, s.head_dim
    m = rung_shape(target_cfg.model, s.width)
    cfg.model.kv_groups = m.kv_groups
    cfg.train.batch_size, cfg.train.grad_accum = s.batch_size, 1
    cfg.train.tokens = steps * s.tokens_per_step
    cfg.train.eval_every = 10 ** 9  # evaluate at the end only
    cfg.train.checkpoint_every = 10 ** 9
    cfg.train.keep_checkpoints = len(s.budgets) + 2
    cfg.train.log_every = max(1, steps // 5)
    cfg.train.compile = "off"  # short runs: compiling would cost more than it saves
    return cfg


def format_plan(p: dict) -> str:
    from glassgpt.train.trainer import fmt_time

    tgt = p["target"]
    rows = [f"target: {tgt['params']:,} params ({tgt['params_non_embedding']:,} non-embedding), "
            f"{tgt['tokens']:,} tokens, {tgt['flops']:.3g} FLOPs",
            f"{'rung':>12} {'params':>10} {'N':>10} {'batch':>5} {'tokens':>12} {'FLOPs':>10} {'fraction':>10} {'est. time':>9}"]
    fps = p["flops_per_second"]
    for s in p["sizes"]:
        for tok, fl, steps in zip(s["tokens"], s["flops"], s["budgets"]):
            rows.append(f"{s['name']:>12} {s['params']:>10,} {s['params_non_embedding']:>10,} {s['batch_size']:>5} "
                        f"{tok:>12,} {fl:>10.3g} {'1/%.0f' % (tgt['flops'] / fl):>10} {fmt_time(fl / fps):>9}")
    rows.append(f"largest rung {p['max_run_flops']:.3g} FLOPs (1/{tgt['flops'] / p['max_run_flops']:.0f} of the target); "
                f"ladder total {p['total_flops']:.3g} FLOPs (1/{tgt['flops'] / p['total_flops']:.0f}) "
                f"with WSD branching; estimated {fmt_time(p['estimated_seconds'])} at {fps:.2g} FLOP/s")
    return "\n".join(rows)


def save_plan(p: dict, ladder_dir: Path) -> Path:
    ladder_dir = Path(ladder_dir)
    ladder_dir.mkdir(parents=True, exist_ok=True)
    path = ladder_dir / "plan.json"
    if path.exists():
        old = json.loads(path.read_text())
        same = json.loads(json.dumps(p["sizes"])) == old["sizes"]  # through JSON: tuples become lists
        if old["target"]["config_sha256"] != p["target"]["config_sha256"] or not same:
            raise ScalingError(f"{path} holds another plan; use a new ladder directory or delete it")
        return path
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(p, indent=1))
    os.replace(tmp, path)
    return path


def load_plan(ladder_dir: Path) -> dict:
    path = Path(ladder_dir) / "plan.json"
    if not path.exists():
        raise ScalingError(f"no plan in {ladder_dir}; run `glassgpt ladder plan --target T --ladder {ladder_dir}` first")
    return json.loads(path.read_text())


# --- running ----------------------------------------------------------------------------


def branch_dir(ladder_dir: Path, size: dict, steps: int) -> Path:
    return Path(ladder_dir) / "rungs" / size["name"] / f"s{steps:07d}"


def _status(run: Path) -> str | None:
    if (run / "report.json").exists():
        return "done"
    if (run / "diverged.json").exists():
        return "diverged"
    return None


def _mark_diverged(run: Path, reason: str) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "diverged.json").write_text(json.dumps({"reason": reason}))
    log.warning("rung %s diverged: %s (excluded from fits)", run, reason)


def _first_loss(run: Path) -> float | None:
    p = run / "metrics.jsonl"
    if not p.exists():
        return None
    for line in p.read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            return r["loss"]
    return None


def line_budgets(p: dict) -> dict[str, int]:
    """{size name: the budget (steps) of its point on the target's line}: the only points the
    capability fit reads, so the only ones worth scoring."""
    from glassgpt.scaling import fit

    pts = [{"params_non_embedding": s["params_non_embedding"], "tokens": t, "flops": f, "size": s["name"], "steps": b}
           for s in p["sizes"] for b, t, f in zip(s["budgets"], s["tokens"], s["flops"])]
    return {q["size"]: q["steps"] for q in fit.on_line(pts, **fit.line_of(p["target"], p.get("line")))}


def run_size(ladder_dir: str, size: dict, threads: int = 0, capability_steps: int | None = None) -> dict:
    """Train one size (`train_size`), then score the branch of `capability_steps` (its point on the
    target's line) for capability if it is done and unscored: just trained, or finished unscored by
    an earlier run (a crash, an older task version). Returns {steps: status}."""
    status = train_size(ladder_dir, size, threads)
    if capability_steps is not None and status.get(capability_steps) == "done":
        from glassgpt.scaling import capability as cap

        run = branch_dir(Path(ladder_dir), size, capability_steps)
        if cap.load(run) is None:
            cap.evaluate_run(run)
    return status


def train_size(ladder_dir: str, size: dict, threads: int = 0) -> dict:
    """Train one size: the stable run, then each cooldown branched from it. Finished branches are
    skipped; a diverged run is recorded and excluded. Returns {steps: status}."""
    from glassgpt.train.trainer import train

    ladder_dir = Path(ladder_dir)
    if threads:
        import torch

        torch.set_num_threads(threads)
    budgets, starts, warm = size["budgets"], size["decay_starts"], size["warmup_steps"]
    status = {b: _status(branch_dir(ladder_dir, size, b)) for b in budgets}
    todo = [(b, s) for b, s in zip(budgets, starts) if status[b] is None]
    if not todo:
        return status
    base = config_mod.from_dict(size["config"])
    if threads:
        base.train.threads = threads
    stable = ladder_dir / "rungs" / size["name"] / "stable"
    stable_steps = starts[-1]

    def stable_lr(step, total):
        return (step + 1) / warm if step < warm else 1.0

    if _status(stable) == "diverged":
        for b, _ in todo:
            _mark_diverged(branch_dir(ladder_dir, size, b), "the stable run diverged")
            status[b] = "diverged"
        return status
    if not (stable / "report.json").exists():
        cfg = copy.deepcopy(base)
        cfg.train.tokens = stable_steps * size["tokens_per_step"]
        cfg.train.log_every = max(1, stable_steps // 4)
        try:
            from glassgpt.train import checkpoint

            train(cfg, stable, resume=checkpoint.latest(stable) is not None, lr_fn=stable_lr, save_at=set(starts))
        except TrainingError as e:
            _mark_diverged(stable, str(e))
            for b, _ in todo:
                _mark_diverged(branch_dir(ladder_dir, size, b), "the stable run diverged")
                status[b] = "diverged"
            return status
    for b, s in todo:
        run = branch_dir(ladder_dir, size, b)
        cfg = copy.deepcopy(base)
        cfg.train.tokens = b * size["tokens_per_step"]

        def lr(step, total, s=s):
            if step < warm:
                return (step + 1) / warm
            return 1.0 if step < s else max(0.0, (total - step) / max(1, total - s))

        from glassgpt.train import checkpoint

        ck = stable / "checkpoints" / f"step_{s:07d}"
        try:
            rep = train(cfg, run, resume=checkpoint.latest(run) is not None, branch_from=ck, lr_fn=lr)
        except TrainingError as e:
            _mark_diverged(run, str(e))
            status[b] = "diverged"
            continue
        start = _first_loss(stable)
        finals = [v["loss"] for v in rep["heldout"].values()]
        if start is not None and any(not math.isfinite(x) or x > start for x in finals):
            (run / "report.json").rename(run / "report.diverged.json")
            _mark_diverged(run, f"final held-out loss {max(finals):.3f} above the starting loss {start:.3f}")
            status[b] = "diverged"
            continue
        status[b] = "done"
        log.info("rung %s %s tokens: %s", size["name"], f"{b * size['tokens_per_step']:,}",
                 ", ".join(f"{k} {v['loss']:.4f}" for k, v in rep["heldout"].items()))
    return status


def parse_shard(shard: str | None) -> tuple[int, int]:
    if not shard:
        return 0, 1
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ScalingError(f"--shard must look like i/n (e.g. 0/4), not {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ScalingError(f"--shard {shard}: need 0 ≤ i < n")
    return i, n


def run(ladder_dir: Path, workers: int = 1, shard: str | None = None, capability: bool = True) -> dict:
    """Train every rung of the plan this shard owns (sizes dealt round-robin, largest first)."""
    from glassgpt.data.shards import prepare

    ladder_dir = Path(ladder_dir)
    p = load_plan(ladder_dir)
    i, n = parse_shard(shard)
    sizes = sorted(p["sizes"], key=lambda s: -s["spent_flops"])[i::n]
    prepare(config_mod.from_dict(p["target"]["config"]).data)  # once, before the workers
    t0 = time.time()
    results = {}
    cap_steps = line_budgets(p) if capability else {}
    if workers <= 1:
        for k, s in enumerate(sizes):
            log.info("ladder: size %d/%d %s (%s params)", k + 1, len(sizes), s["name"], f"{s['params']:,}")
            results[s["name"]] = run_size(str(ladder_dir), s, 0, cap_steps.get(s["name"]))
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 1) // workers)
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(run_size, str(ladder_dir), s, threads, cap_steps.get(s["name"])): s["name"] for s in sizes}
            for k, f in enumerate(cf.as_completed(futs)):
                results[futs[f]] = f.result()
                log.info("ladder: %d/%d sizes done (%s), %.0fs", k + 1, len(sizes), futs[f], time.time() - t0)
    return results


def collect(ladder_dir: Path) -> dict:
    """Every planned point with its final held-out losses (diverged and missing ones marked)."""
    ladder_dir = Path(ladder_dir)
    p = load_plan(ladder_dir)
    # the fits' N (fit.compute), counted from the configs, so plans written before it existed still fit
    p["target"]["params_blocks"] = counts(config_mod.from_dict(p["target"]["config"])).params_blocks
    points = []
    for s in p["sizes"]:
        blocks = counts(config_mod.from_dict(s["config"])).params_blocks
        for steps, tok, fl in zip(s["budgets"], s["tokens"], s["flops"]):
            run_dir = branch_dir(ladder_dir, s, steps)
            st = _status(run_dir)
            pt = {"size": s["name"], "params": s["params"], "params_non_embedding": s["params_non_embedding"],
                  "params_blocks": blocks, "tokens": tok, "flops": fl, "status": st or "missing", "dir": str(run_dir)}
            if st == "done":
                rep = json.loads((run_dir / "report.json").read_text())
                pt["final_loss"] = {k: v["loss"] for k, v in rep["heldout"].items()}
                pt["bpb_per_nat"] = {k: v["bpb"] / v["loss"] for k, v in rep["heldout"].items() if v["loss"] > 0}
                pt["seconds"] = rep["seconds"]
                from glassgpt.scaling import capability as cap_mod

                scored = cap_mod.load(run_dir)
                if scored:
                    pt["capability"] = scored
            elif st == "diverged":
                pt["reason"] = json.loads((run_dir / "diverged.json").read_text())["reason"]
            points.append(pt)
    spent = sum(s["spent_flops"] for s in p["sizes"])
    return {"plan": p, "points": points, "max_run_flops": p["max_run_flops"], "total_flops": spent}
