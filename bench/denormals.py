"""Denormal floats on the CPU: one vision training step (forward, backward, optimizers) with the
flush-to-zero flag off and on (`glassgpt.train.dist.flush_denormals`), each in its own process,
since the flag must be set before torch starts its threads.

From a trained vision run's checkpoint (`--run RUN`, e.g. a finished `glassgpt train --preset
vision`), the steps are the ones that run late in training, where the model is confident and its
gradients tiny. Without `--run`, a fresh model of the vision preset with its loss scaled by 1e-36
stands in (gradients pushed into the denormal range, as a confident model's fall there).

Prints median ms per step of each, alternating off/on twice, and the ratio off/on measured in the
same run. Usage: python bench/denormals.py [--run RUN] [--steps N] [--threads T]
"""

import argparse
import subprocess
import sys
import time


def child(args) -> None:
    import torch

    if args.flush == "on":
        from glassgpt.train.dist import flush_denormals

        assert flush_denormals(), "this CPU cannot flush denormals"
    torch.set_num_threads(args.threads)
    from glassgpt.model.gpt import build
    from glassgpt.train.sources import ImageChatSource
    from glassgpt.train.optim import build_optimizers

    if args.run:
        from pathlib import Path

        from glassgpt import config
        from glassgpt.data.tokenizer import Tokenizer
        from glassgpt.train import checkpoint

        ck = checkpoint.resolve(Path(args.run))
        meta, state = checkpoint.read_weights(ck)
        payload = checkpoint.read_optimizer(ck)
        cfg = config.from_dict(meta["config"])
        tok = Tokenizer.load(ck.parent.parent / "tokenizer.json")
        start, scale = meta["step"], 1.0
    else:
        import dataclasses

        from glassgpt import config
        from glassgpt.data import images, sources
        from glassgpt.data.tokenizer import train_from_documents

        cfg = config.load("vision", [])
        docs = (d.text for d in sources.stdlib_documents(sources.SourceStats("stdlib")))
        tok = train_from_documents(docs, cfg.data.vocab_size, 300_000,
                                   extra=images.task_texts(cfg.data.tokenizer_extra, per_source=1000))
        cfg.model = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
        state = payload = None
        start, scale = 0, 1e-36
    model = build(cfg.model, seed=0)
    vt = ImageChatSource(cfg, tok)
    vt.attach(model)
    opts = build_optimizers(model, cfg) + vt.optimizers()
    if state is not None:
        model.load_state_dict(state)
        for o, s in zip(opts, payload["optimizers"]):
            o.load_state_dict(s)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(args.steps + 3):  # 3 warm-up steps
        text = torch.randint(0, tok.vocab_size - 16, (cfg.train.batch_size, cfg.model.seq_len + 1), generator=gen)
        t0 = time.perf_counter()
        r = vt.rows(start + i)  # micro-batch index, as the trainer passes
        emb = model.vision(r.pixels).reshape(-1, cfg.model.d_model)
        loss = model(r.x, r.y, image_embeds=emb) + cfg.vision.text_weight * model(text[:, :-1], text[:, 1:])
        (scale * loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        for o in opts:
            o.step()
        for o in opts:
            o.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    t = sorted(times[3:])
    print(1000 * t[len(t) // 2])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a vision run directory or checkpoint (default: synthetic tiny gradients)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--flush", choices=["on", "off"], help=argparse.SUPPRESS)  # the child processes
    args = p.parse_args()
    if args.flush:
        return child(args)
    res = {"off": [], "on": []}
    for flush in ("off", "on", "off", "on"):  # alternating, so a change in machine load hits both
        cmd = [sys.executable, __file__, "--flush", flush, "--steps", str(args.steps), "--threads", str(args.threads)]
        out = subprocess.run(cmd + (["--run", args.run] if args.run else []), capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr.strip().splitlines()[-1])
        res[flush].append(float(out.stdout.split()[-1]))
    src = f"checkpoint {args.run}" if args.run else "fresh vision preset, loss x 1e-36"
    print(f"vision preset step ({src}), {args.threads} threads, median of {args.steps} steps per process")
    for k, v in res.items():
        print(f"flush-to-zero {k:3s}: " + "  ".join(f"{x:6.1f} ms" for x in v))
    off, on = min(res["off"]), min(res["on"])
    print(f"off / on: {off / on:.2f}x (best process of each)")


if __name__ == "__main__":
    main()
