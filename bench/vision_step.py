"""One vision training step (32 image-chat rows + 4 text rows, forward + backward) on 1 thread:
the LM head over every position vs only where there is a target, and the linear vs the conv stem.

Prints median ms per step and each variant's speed as a ratio to the reference (linear stem,
head everywhere), measured in the same run. The tokenizer is trained on the fly on a small
slice of the default corpus. Usage: python bench/vision_step.py [REPEATS]
"""

import dataclasses
import sys
import time

import torch
import torch.nn.functional as F

from glassgpt import config
from glassgpt.data import sources
from glassgpt.data.tokenizer import train_from_documents
from glassgpt.model import vision as V
from glassgpt.model.gpt import build


def main(repeats: int = 15) -> None:
    torch.set_num_threads(1)
    cfg = config.load("vision", [])
    docs = (d.text for d in sources.stdlib_documents(sources.SourceStats("stdlib")))
    tok = train_from_documents(docs, cfg.data.vocab_size, 300_000)
    mc = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, image_token_id=tok.image_id)
    steps = {}
    for stem in ("linear", "conv"):
        vc = dataclasses.replace(cfg.vision, stem=stem)
        m = build(mc, seed=0)
        V.attach(m, vc, seed=0)
        mix = V.Mix(vc.mix, 0)
        x, y, px = V.collate(tok, [mix.sample(k) for k in range(vc.batch_size)], vc.n_image_tokens, mc.seq_len, vc.image_size)
        L = int((x != tok.pad_id).sum(1).max())
        x, y = x[:, :L], y[:, :L]
        text = torch.randint(0, tok.vocab_size - 16, (cfg.train.batch_size, mc.seq_len + 1))
        for head in ("everywhere", "at targets"):
            def step(m=m, vc=vc, x=x, y=y, px=px, text=text, head=head):
                emb = m.vision(px).reshape(-1, mc.d_model)
                if head == "everywhere":  # what the model did before: full logits, ignore_index
                    img = F.cross_entropy(m(x, image_embeds=emb).float().flatten(0, 1), y.flatten(), ignore_index=-1)
                    txt = F.cross_entropy(m(text[:, :-1]).float().flatten(0, 1), text[:, 1:].flatten())
                else:
                    img, txt = m(x, y, image_embeds=emb), m(text[:, :-1], text[:, 1:])
                (img + vc.text_weight * txt).backward()

            steps[(stem, head)] = step
    times = {k: [] for k in steps}
    for r in range(repeats + 3):  # round robin, so a change in machine load hits every variant alike
        for k, step in steps.items():
            t0 = time.perf_counter()
            step()
            if r >= 3:  # warm-up
                times[k].append(time.perf_counter() - t0)
    res = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    ref = res[("linear", "everywhere")]
    for (stem, head), t in res.items():
        print(f"stem {stem:6s} head {head:10s}: {1000 * t:7.1f} ms/step  {ref / t:.2f}x the reference (linear, everywhere)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
