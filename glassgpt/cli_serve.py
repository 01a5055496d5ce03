"""`glassgpt serve | chat | keys | usage`: argument parsing only; the work is in glassgpt.serve."""

from __future__ import annotations

import datetime
import os

DEFAULT_DB = "runs/serve/serve.db"


def cmd_serve(args):
    from glassgpt.serve.api import serve

    serve(args.checkpoint, host=args.host, port=args.port, no_auth=args.no_auth, db=args.db, names=args.model_name,
          prices=args.price, max_batch=args.max_batch, max_queue=args.max_queue, device=args.device,
          precision=args.precision,
          rpm=args.rpm, tpm=args.tpm, max_body=args.max_body_mb * 1024 * 1024,
          read_timeout=args.read_timeout, header_timeout=args.header_timeout, threads=args.threads,
          refusal_delay=args.refusal_delay, max_token_rate=args.max_token_rate)


def cmd_chat(args):
    from glassgpt.serve.chat import chat

    chat(checkpoint=args.checkpoint, base_url=args.base_url, api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
         model=args.model, temperature=args.temperature, max_tokens=args.max_tokens, system=args.system,
         device=args.device, images=args.image)


def cmd_keys(args):
    from glassgpt.serve.store import Store

    store = Store(args.db)
    if args.keys_command == "create":
        key, rec = store.create_key(args.name, rpm=args.rpm, tpm=args.tpm)
        print(key)
        print(f"(key id {rec.id}, name {rec.name!r}; shown once — only its hash is stored in {args.db})")
    elif args.keys_command == "list":
        keys = store.list_keys()
        if not keys:
            print(f"no keys in {args.db}; create one with `glassgpt keys create`")
        for k in keys:
            when = datetime.datetime.fromtimestamp(k.created).strftime("%Y-%m-%d %H:%M")
            state = "revoked " + datetime.datetime.fromtimestamp(k.revoked).strftime("%Y-%m-%d %H:%M") if k.revoked else "active"
            limits = f"rpm={k.rpm or '-'} tpm={k.tpm or '-'}"
            print(f"{k.id}  {k.name:<20} created {when}  {limits}  {state}")
    elif args.keys_command == "revoke":
        k = store.revoke(args.key_id)
        print(f"revoked key {k.id} ({k.name})")


def cmd_usage(args):
    from glassgpt.serve.store import Store

    rows = Store(args.db).usage(by=args.by)
    cols = [c for c in args.by.split(",") if c]
    if not rows:
        print(f"no usage recorded in {args.db}")
        return
    head = [c for c in cols] + ["requests", "prompt", "completion", "total", "cost $"]
    table = [[str(r[c]) for c in cols] + [str(r["requests"]), str(r["prompt_tokens"]), str(r["completion_tokens"]),
                                         str(r["total_tokens"]), f"{r['cost']:.6f}"] for r in rows]
    tot = [sum(r[k] for r in rows) for k in ("requests", "prompt_tokens", "completion_tokens", "total_tokens")]
    table.append(["total"] + [""] * (len(cols) - 1) + [str(t) for t in tot] + [f"{sum(r['cost'] for r in rows):.6f}"])
    widths = [max(len(x) for x in col) for col in zip(head, *table)]
    for row in [head] + table:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths)))


def add_serve(sub, name):
    s = sub.add_parser(name, help="Serve checkpoints through an OpenAI-compatible API and a web chat page.")
    s.add_argument("--checkpoint", action="append", required=True, metavar="DIR", help="run or checkpoint directory (repeatable)")
    s.add_argument("--model-name", action="append", metavar="NAME", help="model id for each --checkpoint (default: the run directory's name)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--no-auth", action="store_true", help="no API keys (local use; refused with a non-loopback --host)")
    s.add_argument("--db", default=DEFAULT_DB, help="SQLite file for keys and the usage ledger")
    s.add_argument("--price", action="append", metavar="MODEL=PROMPT,COMPLETION",
                   help="$ per 1K prompt,completion tokens for a model (MODEL * for all); default 0.002,0.002")
    s.add_argument("--rpm", type=int, default=None, help="default requests per minute per key (keys may set their own)")
    s.add_argument("--tpm", type=int, default=None, help="default tokens per minute per key")
    s.add_argument("--max-batch", type=int, default=16, help="sequences decoded together")
    s.add_argument("--max-queue", type=int, default=64, help="waiting requests per key before 503s (4x that in all)")
    s.add_argument("--max-body-mb", type=int, default=32)
    s.add_argument("--read-timeout", type=float, default=30.0, help="seconds a client has to send its request body (408 after)")
    s.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a client has to send a request's headers (the connection is closed after)")
    s.add_argument("--refusal-delay", type=float, default=1.0,
                   help="the most seconds a key's refused requests are held back once it keeps sending requests "
                        "that are refused (grows with its recent refusals; 0: off)")
    s.add_argument("--max-token-rate", type=float, default=50.0,
                   help="decode steps a second at most, so tokens a second per stream (default 50, faster than "
                        "anyone reads): the time left over answers new requests at once; 0: as fast as the model goes")
    s.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for the engines (default: the machine's cores minus one, at least 1)")
    s.add_argument("--device", default=None, help="cuda, mps or cpu (default: detect)")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                   help="weights (and on CUDA the KV cache): bf16 (auto: where the hardware has native bf16) or "
                        "fp32 (default: fp32, bf16 autocast on CUDA)")
    s.set_defaults(fn=cmd_serve, engine_threads=True)


def add_chat(sub, name):
    c = sub.add_parser(name, help="Chat in the terminal with a checkpoint or a running server.")
    c.add_argument("--checkpoint", metavar="DIR")
    c.add_argument("--base-url", metavar="URL", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    c.add_argument("--api-key", default=None, help="key for --base-url (default $OPENAI_API_KEY)")
    c.add_argument("--model", default=None)
    c.add_argument("--temperature", type=float, default=0.8)
    c.add_argument("--max-tokens", type=int, default=None)
    c.add_argument("--system", default=None, help="a system message (default: the one chat models are tuned under; "
                   "--system '' sends none)")
    c.add_argument("--device", default=None)
    c.add_argument("--image", action="append", metavar="PATH",
                   help="attach an image (PNG, JPEG, WebP, GIF) to the first message (repeatable; a vision model)")
    c.set_defaults(fn=cmd_chat)


def add_keys(sub, name):
    k = sub.add_parser(name, help="Create, list and revoke API keys.")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key (printed once)")
    kc.add_argument("--name", default="default")
    kc.add_argument("--rpm", type=int, default=None, help="requests per minute for this key")
    kc.add_argument("--tpm", type=int, default=None, help="tokens per minute for this key")
    ksub.add_parser("list", help="list keys (ids, never the keys)")
    kr = ksub.add_parser("revoke", help="revoke a key by id")
    kr.add_argument("key_id")
    for p in (kc, ksub.choices["list"], kr):
        p.add_argument("--db", default=DEFAULT_DB, help="SQLite file for keys and usage")
        p.set_defaults(fn=cmd_keys, uses_torch=False)  # a key is made in milliseconds: no torch import


def add_usage(sub, name):
    u = sub.add_parser(name, help="Print token and cost totals by key and day.")
    u.add_argument("--db", default=DEFAULT_DB)
    u.add_argument("--by", default="key,day", help="grouping: any of key, day, model, comma-separated")
    u.set_defaults(fn=cmd_usage, uses_torch=False)
