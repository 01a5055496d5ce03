"""Held-out scoring: one teacher-forced forward per batch vs greedy decoding per sample.

Prints the speed ratio and checks the two give the same verdict on every sample (they
must: a greedy decode returns the answer iff each teacher-forced argmax is the answer's
token). Usage: python bench/vision_eval_speed.py RUN_DIR [N]
"""

import sys
import time

from glassgpt.data import images as I
from glassgpt.evals import vision as EV
from glassgpt.train.sources import EVAL_TASKS, token_scores


def main(run: str, n: int = 64) -> None:
    model, tok, cfg = EV.load(run)
    samples = [s for t in EVAL_TASKS for s in I.heldout_samples(t, n // 4, cfg.train.seed)]
    t0 = time.perf_counter()
    fast = []
    for i in range(0, len(samples), 64):
        fast += [r[0] for r in token_scores(model, tok, samples[i : i + 64], cfg.vision)]
    t1 = time.perf_counter()
    engine = EV.engine_for(model, tok).start()
    slow = [EV.ask(engine, [s.image], s.question) == s.answer for s in samples]
    engine.stop()
    t2 = time.perf_counter()
    agree = sum(a == b for a, b in zip(fast, slow))
    print(f"{len(samples)} samples: teacher-forced scoring is {(t2 - t1) / (t1 - t0):.1f}x faster than greedy decoding; "
          f"verdicts agree on {agree}/{len(samples)}; accuracy {sum(fast) / len(fast):.1%}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 64)
