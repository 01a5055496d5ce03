"""Heads on the model: a reward model (one scalar), a proposition classifier (one logit per RBR
proposition) and PPO's value head are all `model.head`, a linear map of the final hidden state
(GPT.forward(..., hidden=True)), branched from the SFT model's weights.

A (conversation, response) is scored at the response's last token, its <|assistant_end|>: the
model has read the whole exchange there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from glassgpt.data import chat


def attach_head(raw, n_out: int, seed: int = 0) -> nn.Linear:
    """`raw.head` = Linear(d_model, n_out), small random weights (a zero head would pass no gradient
    to the trunk at the first step), zero bias."""
    dev = raw.wte.weight.device
    head = nn.Linear(raw.cfg.d_model, n_out, bias=True).to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        head.weight.normal_(0.0, raw.cfg.d_model ** -0.5, generator=gen)
        head.bias.zero_()
    raw.head = head
    return head


def encode(tok, messages: list[dict], response: str, T: int) -> tuple[list[int], int]:
    """(ids, n_prompt): the conversation under the default system prompt, then the response and its
    end token; at most T tokens (the response is cut first, then the prompt loses its oldest tokens)."""
    prompt = chat.render(tok, chat.with_system(messages))
    end = tok.special["<|assistant_end|>"]
    resp = tok.encode(response) + [end]
    if T - len(prompt) < min(len(resp), T // 2):  # keep the prompt's newest tokens, room for the response
        prompt = prompt[-(T - min(len(resp), T // 2)):]
    room = T - len(prompt)
    if len(resp) > room:
        resp = resp[: room - 1] + [end]
    return prompt + resp, len(prompt)


def batch(tok, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, L] and each row's last index [B]."""
    L = max(len(s) for s in seqs)
    x = torch.full((len(seqs), L), tok.pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
    return x, torch.tensor([len(s) - 1 for s in seqs])


def head_at_last(fwd, raw, x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """model.head of the hidden state at each row's last token: [B, n_out]."""
    h = fwd(x, hidden=True)
    return raw.head(h[torch.arange(x.size(0), device=h.device), last.to(h.device)].float())


def load_with_head(path, device: str = "cpu"):
    """(model with its head, tokenizer, config) from an alignment run with a head (rm, classifier)."""
    from glassgpt import config as config_mod
    from glassgpt.data.tokenizer import Tokenizer
    from glassgpt.errors import CheckpointError
    from glassgpt.model.gpt import build
    from glassgpt.train import checkpoint

    ck = checkpoint.resolve(Path(path))
    meta, state = checkpoint.read_weights(ck)
    if "head.weight" not in state:
        raise CheckpointError(f"{path}: no head in this checkpoint (train one with align.stage=rm or classifier)")
    cfg = config_mod.from_dict(meta["config"])
    model = build(cfg.model, device=device, seed=None)
    attach_head(model, state["head.weight"].shape[0])
    model.load_state_dict(state)
    model.eval()
    return model, Tokenizer.load(ck.parent.parent / "tokenizer.json"), cfg


class Scorer:
    """A model with a head, scoring (messages, response) pairs in batches: [N, n_out]."""

    def __init__(self, model, tok, batch_size: int = 16):
        self.model, self.tok, self.batch_size = model, tok, batch_size

    @classmethod
    def load(cls, path, device: str = "cpu") -> "Scorer":
        model, tok, _ = load_with_head(path, device)
        return cls(model, tok)

    @torch.no_grad()
    def __call__(self, pairs: list[tuple[list[dict], str]]) -> np.ndarray:
        out = []
        T = self.model.cfg.seq_len
        for i in range(0, len(pairs), self.batch_size):
            seqs = [encode(self.tok, m, r, T)[0] for m, r in pairs[i : i + self.batch_size]]
            x, last = batch(self.tok, seqs)
            out.append(head_at_last(self.model, self.model, x.to(self.model.wte.weight.device), last).float().cpu().numpy())
        n = self.model.head.out_features
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, n))


def trained_propositions(path) -> list[str]:
    """The propositions a classifier run was trained on, in head order (its report.json)."""
    import json

    from glassgpt.errors import CheckpointError
    from glassgpt.train import checkpoint

    run = checkpoint.resolve(Path(path)).parent.parent
    try:
        return list(json.loads((run / "report.json").read_text())["classifier"]["propositions"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{run}: not a finished proposition classifier run (report.json has no "
                              "classifier.propositions)") from None
