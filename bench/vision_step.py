"""One vision training step (32 image-chat rows + 4 text rows, forward + backward) on 1 thread:
the LM head over every position vs only where there is a target, the linear vs the conv stem, and
the pixel-shuffle (linear) vs the overlapping projector. BENCH_THREADS=2 for two threads (the
vision preset's setting). Then the encoder's optimizer step: AdamW alone vs Muon for its matrices
(`vision.muon_lr`), Newton-Schulz one matrix at a time vs same-shaped matrices stacked, against the
whole step measured in the same run.

Prints median ms per step and each variant's speed as a ratio to the reference (linear stem, linear
projector, head everywhere), measured in the same run. The tokenizer is trained on the fly on a small
slice of the default corpus. Usage: python bench/vision_step.py [REPEATS]
"""

import dataclasses
import os
import sys
import time

import torch
import torch.nn.functional as F

from glassgpt import config
from glassgpt.data import images, sources
from glassgpt.data.tokenizer import train_from_documents
from glassgpt.model import vision as V
from glassgpt.model.gpt import build
from glassgpt.train import sources as S


THREADS = int(os.environ.get("BENCH_THREADS", "1"))
BATCHES = 4  # rows differ from batch to batch: every variant steps through the same 4


def main(repeats: int = 16) -> None:
    torch.set_num_threads(THREADS)
    cfg = config.load("vision", [])
    docs = (d.text for d in sources.stdlib_documents(sources.SourceStats("stdlib")))
    extra = images.task_texts(cfg.data.tokenizer_extra, per_source=1000)  # the task words, as in a run
    tok = train_from_documents(docs, cfg.data.vocab_size, 300_000, extra=extra)
    mc = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
    steps = {}
    for stem, projector in (("linear", "linear"), ("conv", "linear"), ("conv", "overlap")):
        vc = dataclasses.replace(cfg.vision, stem=stem, projector=projector)
        m = build(mc, seed=0)
        V.attach(m, vc, seed=0)
        mix = S.Mix(vc.mix, 0)
        batches = [S.collate(tok, [mix.sample(b * vc.batch_size + k) for k in range(vc.batch_size)],
                             vc.n_image_tokens, mc.seq_len, vc.image_size) for b in range(BATCHES)]
        text = torch.randint(0, tok.vocab_size - 16, (cfg.train.batch_size, mc.seq_len + 1))
        for head in ("everywhere", "at targets"):
            def step(r, m=m, vc=vc, text=text, head=head, batches=batches):
                x0, y0, px = batches[r % BATCHES]
                L = int((x0 != tok.pad_id).sum(1).max())
                x, y = x0[:, :L], y0[:, :L]
                emb = m.vision(px).reshape(-1, mc.d_model)
                if head == "everywhere":  # what the model did before: full logits, ignore_index
                    img = F.cross_entropy(m(x, image_embeds=emb).float().flatten(0, 1), y.flatten(), ignore_index=-1)
                    txt = F.cross_entropy(m(text[:, :-1]).float().flatten(0, 1), text[:, 1:].flatten())
                else:
                    img, txt = m(x, y, image_embeds=emb), m(text[:, :-1], text[:, 1:])
                (img + vc.text_weight * txt).backward()

            steps[(stem, projector, head)] = step
    times = {k: [] for k in steps}
    for r in range(repeats + BATCHES):  # round robin, so a change in machine load hits every variant alike
        for k, step in steps.items():
            t0 = time.perf_counter()
            step(r)
            if r >= BATCHES:  # warm-up: one pass over the batches
                times[k].append(time.perf_counter() - t0)
    # median over the repeats of each batch (noise), then the mean over the batches (each counts the same)
    res = {k: sum(sorted(v[b::BATCHES])[len(v[b::BATCHES]) // 2] for b in range(BATCHES)) / BATCHES for k, v in times.items()}
    ref = res[("linear", "linear", "everywhere")]
    for (stem, projector, head), t in res.items():
        print(f"stem {stem:6s} projector {projector:7s} head {head:10s}: {1000 * t:7.1f} ms/step  "
              f"{ref / t:.2f}x the reference (linear, linear, everywhere)")
    step_ms = 1000 * res[("conv", "overlap", "at targets")]
    from glassgpt.train.optim import Muon

    # the encoder's optimizer step, with the preset's model (conv, overlap): AdamW alone, Muon + AdamW
    # with one Newton-Schulz per matrix (each matrix its own param group: nothing to stack), Muon + AdamW
    for variant in ("AdamW", "Muon, one by one", "Muon, stacked"):
        c = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, muon_lr=0.0 if variant == "AdamW" else 0.02))
        m = build(mc, seed=0)
        vt = S.ImageChatSource(c, tok)
        vt.attach(m)
        opts = vt.optimizers()
        if variant == "Muon, one by one":
            opts = [o if not isinstance(o, Muon) else Muon([{"params": [p]} for g in o.param_groups for p in g["params"]],
                                                           lr=0.02) for o in opts]
        for p in vt.enc.parameters():
            p.grad = torch.randn_like(p)
        ts = []
        for r in range(repeats + 2):
            t0 = time.perf_counter()
            for o in opts:
                o.step()
            ts.append(time.perf_counter() - t0)
        ms = 1000 * sorted(ts[2:])[len(ts[2:]) // 2]
        print(f"encoder optimizer step, {variant:16s}: {ms:6.2f} ms  "
              f"= {ms / step_ms:.1%} of the forward + backward above (conv, overlap, at targets)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
