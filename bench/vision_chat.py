"""The assistant's vision stage against its goals: the chat model before the stage and after it.

    python bench/vision_chat.py runs/chat_sft runs/vision_chat [--n 100] [--record DIR]

Prints the stage (wall time, steps, parameters, encoder FLOPs per image, data), then the registry
evals of the `glassgpt-vision-chat` set run in-process (`local:RUN`, greedy, the serving engine):
per task and language, held-out images asked in the training phrasings and in the hand-written
held-out phrasings, the held-out / training ratio and the goals; the image questions with no image
attached; and the assistant's held-out text tables of the model before the stage and after it (the
chat eval of `bench/chat_stages.py` and the alignment evals of `glassgpt align`, same questions), with
`val` nats/token of both. One run, one seed; n = 100 images per cell.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chat_stages import HEAD, eval_base, fmt  # noqa: E402  (the chat eval, same config as the SFT run's)

TASKS = ("digits", "shapes", "text", "charts", "emoji", "flags", "words", "hanzi")
# held-out phrasing goals per task (issue: "the assistant sees"); emoji's are per kind of question
GOALS = {"digits": 0.97, "shapes": 0.90, "text": 0.85, "charts": 0.90, "flags": 0.90, "words": 0.90, "hanzi": 0.80,
         "emoji/category": 0.85, "emoji/name": 0.50}
PROCEDURAL = ("digits", "shapes", "text", "charts")  # held-out phrasing >= 95% of the training phrasing's


def goal_table(c: dict) -> list[str]:
    lines = ["image chat (held-out images)      en train  en held-out  zh train  zh held-out  held/train  goal (held-out)"]
    met = missed = 0
    for task in [*TASKS[:4], "emoji", "emoji/category", "emoji/name", *TASKS[5:], "noimage"]:
        row, ratios = [], []
        for lang in ("en", "zh"):
            tr, ho = c.get((task, lang, "train")), c.get((task, lang, "heldout"))
            row += [fmt(tr), fmt(ho)]
            if tr and ho is not None:
                ratios.append(ho / tr)
        goal = 0.95 if task == "noimage" else GOALS.get(task)
        ok = [c.get((task, lg, "heldout"), 0) >= goal for lg in ("en", "zh")] if goal else []
        if task in PROCEDURAL:
            ok += [r >= 0.95 for r in ratios]
        met, missed = met + sum(ok), missed + len(ok) - sum(ok)
        gtext = (f"≥ {goal:.0%}" + (", ≥ 95% of train" if task in PROCEDURAL else "")) if goal else ""
        name = "no image attached" if task == "noimage" else task
        lines.append(f"{name:32}  {row[0]:>8}  {row[1]:>11}  {row[2]:>8}  {row[3]:>11}  "
                     f"{min(ratios) if ratios else float('nan'):10.2f}  {gtext}{'' if not ok else ('  met' if all(ok) else '  MISSED')}")
    lines.append(f"goal checks met: {met} of {met + missed} (held/train: the lower of en and zh)")
    return lines


def sft_ancestor(run: Path) -> Path:
    """The chat SFT run in a run's lineage (itself, or the run an RL or vision stage started from):
    its config sets the chat eval's questions and sizes."""
    seen = Path(run)
    while seen:
        c = json.loads((seen / "report.json").read_text())
        cfg = c["config"]  # sections left at their defaults are not written
        if (cfg.get("sft") or {}).get("enabled") and not (cfg.get("align") or {}).get("stage") \
                and not (cfg.get("vision") or {}).get("enabled"):
            return seen
        parent = (c.get("lineage") or {}).get("parent")
        seen = Path(parent) if parent else None
    sys.exit(f"error: no chat SFT run in the lineage of {run}")


def text_tables(before: Path, after: Path, sft_cfg_run: Path) -> list[str]:
    from glassgpt.align import pipeline

    chat = {name: eval_base(run, sft_cfg_run)["headline"] for name, run in (("before", before), ("after", after))}
    lines = ["chat eval (held-out text)   before   after   change (goal: within 2 points)"]
    for k in HEAD:
        b, a = chat["before"].get(k), chat["after"].get(k)
        d = "" if b is None or a is None else f"{(a - b) * 100:+6.1f}"
        lines.append(f"{k:26}  {fmt(b):>6}  {fmt(a):>6}   {d}")
    sets = pipeline.eval_sets(samples=16)
    al = {name: pipeline.evaluate(run, sets)["headline"] for name, run in (("before", before), ("after", after))}
    lines.append("alignment evals            before   after   change")
    for k, label in pipeline.COLUMNS:
        b, a = al["before"].get(k), al["after"].get(k)
        d = "" if b is None or a is None else f"{(a - b) * 100:+6.1f}"
        lines.append(f"{label:26}  {fmt(b):>6}  {fmt(a):>6}   {d}")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path, help="the chat run the vision stage started from")
    ap.add_argument("after", type=Path, help="the vision stage's run")
    ap.add_argument("--n", type=int, default=100, help="images (questions) per eval")
    ap.add_argument("--record", type=Path, default=None, help="a directory for the evals' record files")
    ap.add_argument("--skip-text", action="store_true", help="leave out the text tables")
    ap.add_argument("--skip-images", action="store_true", help="leave out the image-chat registry evals")
    a = ap.parse_args(argv)
    reps = {}
    for name, run in (("before", a.before), ("after", a.after)):
        if not (run / "report.json").exists():
            sys.exit(f"error: {run}/report.json not found; train the {name} stage first")
        reps[name] = json.loads((run / "report.json").read_text())
    import torch

    from glassgpt.train.dist import cpu_name

    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    r, v = reps["after"], reps["after"].get("vision") or {}
    if not v.get("chat"):
        sys.exit(f"error: {a.after} is not a vision chat run (vision.chat is off in its report)")
    print(f"stage: {r['seconds'] / 60:.1f} min, {r['steps']} steps, {r['params']:,} params "
          f"(encoder {v['encoder_params']:,}), encoder {v['encoder_flops_per_image'] / 1e6:.1f} MFLOPs per image "
          f"(training), {v['images_per_step']} images a step, mix {v['mix']}, from {r.get('lineage', {}).get('parent')}")
    enc = (r.get("lineage") or {}).get("encoder")
    if enc:  # vision.encoder_from: the encoder's own run (its wall time is not in the stage's)
        er = Path(enc["run"]) / "report.json"
        took = f", {json.loads(er.read_text())['seconds'] / 60:.1f} min" if er.exists() else ""
        print(f"encoder from {enc['run']} (step {enc['step']}{took}), {'frozen' if v.get('freeze_encoder') else 'trained on'} "
              f"in the stage")
    from glassgpt.evals.runner import vision_chat_table

    if not a.skip_images:
        t0 = time.time()
        cells = vision_chat_table(a.after, a.n, a.record)
        print(f"(the glassgpt-vision-chat registry set, n = {a.n} an eval, in {time.time() - t0:.0f} s)\n")
        print("\n".join(goal_table(cells)))
    vb, va = (reps[k]["heldout"]["val"]["loss"] for k in ("before", "after"))
    print(f"\nval nats/token: before {vb:.4f}, after {va:.4f} ({(va / vb - 1):+.2%}; goal ≤ +2%)")
    if not a.skip_text:
        sft_run = sft_ancestor(a.before)
        print(f"\nthe chat eval as {sft_run}'s config sets it; the alignment evals as `glassgpt align` asks them")
        print("\n".join(text_tables(a.before, a.after, sft_run)))


if __name__ == "__main__":
    main()
