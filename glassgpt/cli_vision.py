"""`glassgpt vision eval | grid | ask`: argument parsing only; the work is in glassgpt.evals.vision."""

from __future__ import annotations

import json


def cmd_eval(args):
    from glassgpt.evals import vision

    table = vision.heldout_table_for_run(args.run, n=args.n, greedy=args.greedy)
    for t, r in table.items():
        print(f"{t:8s} {r['accuracy'] * 100:6.1f}%  (n={r['n']})")
    print(json.dumps(table))
    if args.by_type:
        for k, r in vision.by_type_for_run(args.run, n=args.n).items():
            print(f"  {k:22s} {r['accuracy'] * 100:6.1f}%  tokens {r['token_accuracy'] * 100:5.1f}%  "
                  f"loss {r['answer_loss']:.3f}  (n={r['n']})")


def cmd_grid(args):
    from glassgpt.evals import vision

    print(vision.render_grid(args.run, args.out, per_task=args.per_task))


def cmd_ask(args):
    from glassgpt.evals import vision

    print(vision.ask_run(args.run, args.image, args.question, max_new_tokens=args.max_new_tokens))


def add_vision(sub, name):
    v = sub.add_parser(name, help="Image input: held-out accuracy per task, an answer grid, one question.")
    vsub = v.add_subparsers(dest="vision_command", required=True)
    e = vsub.add_parser("eval", help="held-out exact-match accuracy per task (then the table as JSON)")
    e.add_argument("run", help="a vision run directory")
    e.add_argument("--n", type=int, default=300, help="held-out samples per task")
    e.add_argument("--greedy", action="store_true", help="score real greedy chat answers (the registry evals' rule; slower)")
    e.add_argument("--by-type", action="store_true", help="also break accuracy down by question type (with token accuracy)")
    e.set_defaults(fn=cmd_eval)
    g = vsub.add_parser("grid", help="PNG grid of held-out images with the model's answers")
    g.add_argument("run")
    g.add_argument("--out", default="docs/vision_grid.png")
    g.add_argument("--per-task", type=int, default=6)
    g.set_defaults(fn=cmd_grid)
    a = vsub.add_parser("ask", help="ask one question about one or more images")
    a.add_argument("run")
    a.add_argument("--image", action="append", required=True, metavar="PATH", help="an image (repeatable)")
    a.add_argument("--max-new-tokens", type=int, default=16)
    a.add_argument("question")
    a.set_defaults(fn=cmd_ask)
