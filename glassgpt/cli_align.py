"""`glassgpt align pipeline | rubric | eval`: argument parsing only; the work is in glassgpt.align.

Single stages are ordinary runs of the trainer: `glassgpt train --preset align --align.stage=dpo
--init-from runs/chat_sft --out runs/dpo` (docs/alignment.md).
"""

from __future__ import annotations

import json
from pathlib import Path


def cmd_pipeline(args):
    from glassgpt.align import pipeline

    res = pipeline.run(Path(args.out), args.preset, Path(args.sft) if args.sft else None,
                       rows=[r for r in args.rows.split(",") if r], seeds=args.seeds, samples=args.samples,
                       extra=args.overrides)
    print(pipeline.table(res))
    print(pipeline.samples(res))


def cmd_rubric(args):
    from glassgpt.align import rbr, sources

    rubric = rbr.load_rubric(args.rubric)
    grader = rbr.make_grader(args.grader, rubric, args.grader_base_url)
    if args.conversations:
        from glassgpt.data import sft

        convs = sft.load_jsonl(args.conversations, "train") + sft.load_jsonl(args.conversations, "heldout")
        extra, pyrit = {}, []
    else:
        from glassgpt.data import sft

        convs = sft.build("train")[0] + sft.build("heldout")[0]
        extra, pyrit = sources.uncensored(), rbr.pyrit_rows()
    data = rbr.labelled(rubric, convs, per_category=args.per_category, extra=extra)
    weights, fit = rbr.fit_weights(rubric, grader, data)
    rep = rbr.grader_report(grader, data, pyrit)
    print(f"rubric {rubric.path}: {len(rubric.names)} propositions, {len(rubric.classes)} classes, "
          f"categories {', '.join(rubric.categories)}; grader {grader.name}; {len(data)} labelled completions")
    print(f"{'proposition':<20}{'held-out P':>11}{'R':>7}{'n+':>5}{'pyrit P':>9}{'R':>7}{'n':>6}")

    def f(x):
        return "—" if x is None else f"{x:.2f}"

    for n in rubric.names:
        h, p = rep["heldout"].get(n, {}), rep["pyrit"].get(n)
        print(f"{n:<20}{f(h.get('precision')):>11}{f(h.get('recall')):>7}{h.get('positives', 0):>5}"
              + (f"{f(p['precision']):>9}{f(p['recall']):>7}{p['n']:>6}" if p else ""))
    for cat, r in fit.items():
        print(f"weights {cat}: ideal > acceptable > unacceptable on {r['train_ordered']:.1%} of {r['train_pairs']} train "
              f"pairs, {f(r['heldout_ordered'])} of {r['heldout_pairs']} held-out pairs")
    if args.weights_out:
        Path(args.weights_out).write_text(json.dumps(weights, indent=1))
        print(f"weights: {args.weights_out} (align.rbr_weights)")


def cmd_eval(args):
    from glassgpt.align import evals, pipeline

    sets = pipeline.eval_sets(args.conversations, args.samples)
    if args.base_url:
        answer = evals.remote_answerer(args.target, args.base_url, args.max_tokens)
    else:
        from glassgpt.train.checkpoint import load_model

        model, tok, _ = load_model(args.target)
        answer = evals.local_answerer(model, tok, args.max_tokens)
    res = evals.run(answer, sets)
    for k, v in res["headline"].items():
        print(f"{k:<24}{'—' if v is None else f'{v:.1%}'}")
    print("n: " + ", ".join(f"{k} {v}" for k, v in res["n"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, ensure_ascii=False))


def add_align(sub, name):
    a = sub.add_parser(name, help="Alignment after chat SFT: reward model, RBR, DPO, GRPO, PPO, and their evals.")
    asub = a.add_subparsers(dest="align_command", required=True)
    p = asub.add_parser("pipeline", help="train the missing alignment stages from an SFT run, evaluate them all, "
                        "print one table (extra --section.key=value arguments go to every stage)")
    p.add_argument("--preset", default="tiny", help="tiny (builds its own tiny base and SFT: seconds) or align "
                   "(the chat preset's shape; needs --sft)")
    p.add_argument("--sft", default=None, help="the chat SFT run to start from")
    p.add_argument("--out", required=True, help="directory of the stages' runs")
    p.add_argument("--rows", default="dpo,grpo_rm,grpo,ppo", help="which rows (default all: dpo,grpo_rm,grpo,ppo)")
    p.add_argument("--seeds", type=int, default=1, help="seeds of each RL row")
    p.add_argument("--samples", type=int, default=16, help="held-out prompts per eval set")
    p.set_defaults(fn=cmd_pipeline, takes_overrides=True)
    r = asub.add_parser("rubric", help="check a rubric, fit the RBR weights on labelled completions and print each "
                        "proposition's precision and recall (held-out labels, pyrit's human rows)")
    r.add_argument("--rubric", default=None, help="a rubric YAML (default: the shipped one)")
    r.add_argument("--grader", default="rules", help="rules | model:NAME | classifier:RUN (default rules)")
    r.add_argument("--grader-base-url", default=None, help="OpenAI-compatible endpoint of a model:NAME grader")
    r.add_argument("--conversations", default="", help="a conversations JSONL instead of the packaged sources")
    r.add_argument("--per-category", type=int, default=80, help="prompts per category (default 80)")
    r.add_argument("--weights-out", default=None, help="write the fitted weights here (JSON, for align.rbr_weights)")
    r.set_defaults(fn=cmd_rubric)
    e = asub.add_parser("eval", help="the alignment evals of a run (in-process) or of a model at --base-url "
                        "(e.g. `glassgpt serve`)")
    e.add_argument("target", help="a run directory, or a model name at --base-url")
    e.add_argument("--base-url", default=None, help="an OpenAI-compatible endpoint (…/v1)")
    e.add_argument("--samples", type=int, default=16, help="held-out prompts per eval set")
    e.add_argument("--max-tokens", type=int, default=48)
    e.add_argument("--conversations", default="", help="a conversations JSONL instead of the packaged sources")
    e.add_argument("--json", default=None, help="write the full result (with answers) here")
    e.set_defaults(fn=cmd_eval)
