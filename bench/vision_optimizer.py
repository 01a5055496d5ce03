"""The encoder's optimizer: AdamW alone (vision.muon_lr=0) vs Muon for its matrices (the vision
preset's setting), same seed, same data, same steps, a shortened schedule of the vision preset.

Prints each run's held-out exact match per task (n per task), its wall time, and Muon's accuracy
and time as ratios to AdamW's, measured in the same run of this script. Run on an otherwise idle
machine for the times to mean anything. Usage: python bench/vision_optimizer.py [STEPS] [N]
(defaults 2000, 200; ~4 minutes a run on 2 cores).
"""

import sys
import tempfile
import time
from pathlib import Path

from glassgpt import config
from glassgpt.evals import vision as EV
from glassgpt.train.trainer import train


def run(steps: int, muon_lr: float, out: Path, n: int) -> tuple[dict, float]:
    cfg = config.load("vision", [f"train.tokens={steps * 256}", f"vision.muon_lr={muon_lr}",
                                 f"train.eval_every={steps}", f"train.checkpoint_every={steps}", "train.log_every=500"])
    t0 = time.perf_counter()
    train(cfg, out)
    seconds = time.perf_counter() - t0
    table = EV.heldout_table_for_run(out, n=n)
    return {task: row["accuracy"] for task, row in table.items()}, seconds


def main(steps: int = 2000, n: int = 200) -> None:
    with tempfile.TemporaryDirectory() as d:
        adam, t_adam = run(steps, 0.0, Path(d) / "adamw", n)
        muon, t_muon = run(steps, 0.02, Path(d) / "muon", n)
    print(f"vision preset, {steps} steps, held-out n={n} per task")
    for task in adam:
        print(f"{task:8s} AdamW {adam[task]:6.1%}  Muon {muon[task]:6.1%}  "
              f"({100 * (muon[task] - adam[task]):+.1f} points)")
    print(f"wall     AdamW {t_adam:6.0f} s  Muon {t_muon:6.0f} s  ({t_muon / t_adam:.2f}x AdamW's time)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
