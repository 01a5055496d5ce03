"""The alignment table: the SFT model, DPO, RM-only RL (GRPO), RL + RBR (GRPO and PPO) on the held-out
sets (not-unsafe, not-overrefuse, their F1, disallowed responses, sensitive adherence, adversarial
factuality, fact QA, held-out bits per byte and the alignment tax), RL rows over several seeds, with
the issue's headline ratios against the SFT model and real answers before and after.

    python bench/align.py --sft runs/chat_sft --preset align --out runs/align --seeds 3
    python bench/align.py --quick --out /tmp/align_quick      # tiny: its own base + SFT on toy data

Stages already in --out are kept (a stopped one resumes), so a rerun only evaluates. Wall times are
the trainer's, beside the SFT stage's own (a ratio measured on the same machine)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glassgpt.align import pipeline  # noqa: E402
from glassgpt.errors import exit_code  # noqa: E402


def cpu() -> str:
    from glassgpt.train.dist import cpu_name

    name = cpu_name()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{name}, {os.cpu_count()} cores, load {load:.1f} (shared machine: timings are noisy)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the tiny preset on the toy conversations (a mechanics check)")
    p.add_argument("--sft", default=None, help="the chat SFT run (not with --quick)")
    p.add_argument("--preset", default="align")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=3, help="seeds per RL row (default 3)")
    p.add_argument("--samples", type=int, default=32, help="held-out prompts per eval set")
    p.add_argument("--rows", default="dpo,grpo_rm,grpo,ppo")
    args, extra = p.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from glassgpt.config import parse_overrides

    res = pipeline.run(Path(args.out), "tiny" if args.quick else args.preset, Path(args.sft) if args.sft else None,
                       rows=[r for r in args.rows.split(",") if r], seeds=args.seeds, samples=args.samples,
                       extra=parse_overrides(extra))
    print(f"cpu: {cpu()}")
    print(pipeline.table(res))
    sft_s = res["sft"][0].get("seconds")
    rl = [x["seconds"] for r in pipeline.RL_ROWS for x in res.get(r, []) if x.get("seconds")]
    if sft_s and rl:
        print(f"RL stage wall time: {max(rl) / 60:.1f} min at most (goal ≤ 15 min on 2 cores); "
              f"{max(rl) / sft_s:.2f}× the SFT stage's {sft_s / 60:.1f} min")
    print("answers (held-out), before and after:")
    print(pipeline.samples(res))
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
