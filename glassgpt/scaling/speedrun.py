"""`glassgpt speedrun`: data → tokenizer → ladder → registered prediction → target → verify.

The ladder's options are the preset's `scaling:` section (config.ScalingConfig; the presets say
why each is what it is). Resumable by design: a rerun with the same arguments skips finished
rungs, keeps the registered prediction (refusing an edited one) and resumes the target from its
latest checkpoint; a plan that changed is refused (ladder.save_plan).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from glassgpt import config as config_mod
from glassgpt.scaling import ladder as ladder_mod
from glassgpt.scaling import predict as predict_mod

log = logging.getLogger(__name__)


def speedrun(preset: str, overrides: list[str], out: Path, workers: int = 1) -> dict:
    from glassgpt.data.shards import prepare
    from glassgpt.scaling import capability as cap_mod
    from glassgpt.train import checkpoint
    from glassgpt.train.trainer import train

    out = Path(out)
    cfg = config_mod.load(preset, overrides)  # before any work: a bad preset or override is one line
    log.info("speedrun 1/5: data and tokenizer")
    prepare(cfg.data)
    log.info("speedrun 2/5: ladder plan and runs")
    ladder_dir = out / "ladder"
    plan = ladder_mod.plan(cfg, **cfg.scaling.plan_kwargs())
    ladder_mod.save_plan(plan, ladder_dir)
    log.info("\n%s", ladder_mod.format_plan(plan))
    ladder_mod.run(ladder_dir, workers=workers)
    log.info("speedrun 3/5: registered prediction (before the target starts)")
    pred_path = out / "prediction.json"
    target_dir = out / "target"
    if pred_path.exists():
        predict_mod.load_registered(pred_path)  # refuses an edited file
    else:
        predict_mod.register(cfg, ladder_dir, pred_path, target_dir=target_dir, n_boot=cfg.scaling.n_boot,
                             allow_unconfident=True)
    log.info("speedrun 4/5: target training")
    if not (target_dir / "report.json").exists():
        train(cfg, target_dir, resume=checkpoint.latest(target_dir) is not None)
    if not (target_dir / "capability.json").exists():
        cap_mod.evaluate_run(target_dir)
    log.info("speedrun 5/5: verification")
    report = predict_mod.verify(pred_path, target_dir, out)
    (out / "speedrun.json").write_text(json.dumps({"preset": preset, "overrides": overrides,
                                                   "ladder_options": dataclasses.asdict(cfg.scaling)}, indent=1))
    return report
