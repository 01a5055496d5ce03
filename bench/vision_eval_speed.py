"""Held-out scoring: one teacher-forced forward per batch vs greedy decoding per sample.

Prints the speed ratio and checks the two give the same verdict on every sample (they
must: a greedy decode returns the answer iff each teacher-forced argmax is the answer's
token). Usage: python bench/vision_eval_speed.py RUN_DIR [N]
"""

import sys
import time

from glassgpt.data import images as I
from glassgpt.model import vision as V


def main(run: str, n: int = 64) -> None:
    model, tok, cfg = V.load(run)
    samples = [I.get_source(t)(cfg.train.seed, "heldout", i) for t in V.EVAL_TASKS for i in range(n // 4)]
    t0 = time.perf_counter()
    fast = []
    for i in range(0, len(samples), 64):
        fast += V.answer_correct(model, tok, samples[i : i + 64], cfg.vision)
    t1 = time.perf_counter()
    slow = [V.ask(model, tok, [s.image], s.question) == s.answer for s in samples]
    t2 = time.perf_counter()
    agree = sum(a == b for a, b in zip(fast, slow))
    print(f"{len(samples)} samples: teacher-forced scoring is {(t2 - t1) / (t1 - t0):.1f}x faster than greedy decoding; "
          f"verdicts agree on {agree}/{len(samples)}; accuracy {sum(fast) / len(fast):.1%}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 64)
