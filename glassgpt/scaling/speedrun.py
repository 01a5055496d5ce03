"""`glassgpt speedrun`: data → tokenizer → ladder → registered prediction → target → verify.

Ladder budgets per preset (the YAML presets hold only model/data/train):
- tiny: the tests' preset; the target is too small for a ladder at 1/1,000, so the rungs go to
  0.8 of it — a mechanics check, not a prediction to trust (the regime check says so).
- cpu: 2 CPU cores, ≤ 30 minutes: an iso-token ladder (every rung runs the target's own
  schedule, 1.2M tokens; only the width differs, so the early-training transient that all of
  them share cancels); 7 sizes from width 8, the largest at ~1/3 of the target — on this corpus
  the smallest fraction at which 5 sizes span 1.5 decades (README: what smaller fractions give).
- gpu: one H100-class GPU: rungs ≤ 1/1,000, the ladder ≤ 1/100 of the target.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from glassgpt import config as config_mod
from glassgpt.scaling import ladder as ladder_mod
from glassgpt.scaling import predict as predict_mod

log = logging.getLogger(__name__)

DEFAULTS = {
    "tiny": {"max_fraction": 0.8, "budget_fraction": 2.0, "n_sizes": 5, "min_steps": 10, "width_step": 8, "n_boot": 50},
    "cpu": {"max_fraction": 0.34, "budget_fraction": 1.0, "n_sizes": 7, "min_steps": 20, "width_step": 8, "n_boot": 200,
            "line": "tokens", "ratios": (0.125, 0.25, 0.5, 1.0)},
    "gpu": {"max_fraction": 1e-3, "budget_fraction": 1e-2, "n_sizes": 5, "min_steps": 50, "width_step": 16, "n_boot": 200},
    "gpu_large": {"max_fraction": 1e-3, "budget_fraction": 1e-2, "n_sizes": 6, "min_steps": 100, "width_step": 32, "n_boot": 200},
}


def defaults_for(preset: str) -> dict:
    name = Path(preset).stem if preset else "cpu"
    return dict(DEFAULTS.get(name, DEFAULTS["cpu"]))


PLAN_OPTIONS = ("max_fraction", "budget_fraction", "n_sizes", "min_steps", "width_step", "ratios", "line", "batch")


def plan_kwargs(opts: dict) -> dict:
    """`ladder.plan`'s arguments from a preset's ladder options (a DEFAULTS entry, perhaps overridden);
    an option the preset leaves out takes `ladder.plan`'s default."""
    kw = {k: opts[k] for k in PLAN_OPTIONS if k in opts}
    if "ratios" in kw:
        kw["ratios"] = tuple(kw["ratios"])
    return kw


def speedrun(preset: str, overrides: list[str], out: Path, workers: int = 1, **kw) -> dict:
    from glassgpt.data.shards import prepare
    from glassgpt.scaling import capability as cap_mod
    from glassgpt.train import checkpoint
    from glassgpt.train.trainer import train

    out = Path(out)
    opts = defaults_for(preset)
    opts.update({k: v for k, v in kw.items() if v is not None})
    cfg = config_mod.load(preset, overrides)
    log.info("speedrun 1/5: data and tokenizer")
    prepare(cfg.data)
    log.info("speedrun 2/5: ladder plan and runs")
    ladder_dir = out / "ladder"
    plan = ladder_mod.plan(cfg, **plan_kwargs(opts))
    ladder_mod.save_plan(plan, ladder_dir)
    log.info("\n%s", ladder_mod.format_plan(plan))
    ladder_mod.run(ladder_dir, workers=workers)
    log.info("speedrun 3/5: registered prediction (before the target starts)")
    pred_path = out / "prediction.json"
    target_dir = out / "target"
    if pred_path.exists():
        predict_mod.load_registered(pred_path)  # refuses an edited file
    else:
        predict_mod.register(cfg, ladder_dir, pred_path, target_dir=target_dir, n_boot=opts["n_boot"],
                             allow_unconfident=True)
    log.info("speedrun 4/5: target training")
    if not (target_dir / "report.json").exists():
        train(cfg, target_dir, resume=checkpoint.latest(target_dir) is not None)
    if not (target_dir / "capability.json").exists():
        cap_mod.evaluate_run(target_dir)
    log.info("speedrun 5/5: verification")
    report = predict_mod.verify(pred_path, target_dir, out)
    (out / "speedrun.json").write_text(json.dumps({"preset": preset, "overrides": overrides, "ladder_options": opts}, indent=1))
    return report
