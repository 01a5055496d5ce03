"""Retrieval across a long window: pass-key, needle in a haystack, several needles, a fact given
early in a long conversation, and held-out loss by position (docs/long_context.md).

Prompts are sized in the model's own tokens (a `count(text) -> int` function, the tokenizer's),
with the item at a chosen depth: 0.0 puts it at the start of the haystack, 1.0 at the end. The
haystack is varied synthetic prose from a seeded generator (no download; no two sentences in a
row alike, unlike the pass-key's repeated filler). Each sample is {"input", "ideal", ...} in the
registry's format, so the same samples run through the registry evals (elsuite.builtin.Haystack)
and the bench's grid (`grid`, through the serving engine); `heatmap` and `plot_loss_by_position`
draw the results.
"""

from __future__ import annotations

import math
import random
import re
from typing import Callable

LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
DEPTHS = tuple(i / 9 for i in range(10))  # 0%, 11%, ..., 100%: 10 depths
KINDS = ("passkey", "needle", "multi_needle", "conversation")

_SUBJECTS = ["The old harbour", "A quiet library", "The river town", "Our small garden", "The mountain road",
             "A busy market", "The winter festival", "The night train", "A village school", "The lighthouse keeper",
             "The copper mill", "A travelling musician", "The northern forest", "The city museum", "A patient farmer"]
_VERBS = ["was known for", "slowly changed", "often welcomed", "carefully kept", "rarely forgot", "quietly shaped",
          "proudly showed", "once described", "never ignored", "gently improved"]
_OBJECTS = ["its long history of trade", "the stories of its visitors", "a collection of maps", "the first snow",
            "the sound of distant bells", "the patterns of the tides", "an old wooden bridge", "the evening light",
            "the habits of migrating birds", "a recipe for bread", "the letters of the founders", "the autumn harvest"]
_TAILS = ["", " for many years", " in every season", " without much notice", " as the town grew",
          " long after the war", " each spring"]
_CITIES = ["Lisbon", "Nairobi", "Oslo", "Kyoto", "Lima", "Tbilisi", "Hanoi", "Dakar", "Quebec", "Perth", "Bergen", "Cusco"]
_WORDS = ["saffron", "juniper", "tamarind", "cardamom", "sorrel", "fennel", "nutmeg", "sumac", "galangal", "anise"]
_THINGS = ["the red door", "the blue kite", "the green lamp", "the silver key", "the yellow boat", "the white tower"]
_NAMES = ["Amara", "Tobias", "Ingrid", "Mateo", "Yuki", "Leontine", "Oskar", "Priya", "Soren", "Maren"]


def sentences(rng: random.Random):
    """An endless stream of varied filler sentences."""
    while True:
        yield f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}. "


def _fill(count: Callable[[str], int], budget: int, rng: random.Random) -> list[str]:
    """Filler sentences whose token count is about `budget` (counted in blocks, then exactly)."""
    out, n, gen = [], 0, sentences(rng)
    while n < budget:  # estimate a block at a time: one tokenizer call per ~64 sentences
        block = [next(gen) for _ in range(64)]
        n += count("".join(block))
        out += block
    while out and count("".join(out)) > budget:  # trim to the budget exactly
        over = count("".join(out)) - budget
        del out[-max(1, over // 12):]
    return out


def _insert(filler: list[str], items: list[tuple[float, str]]) -> str:
    """The filler with each (depth, text) inserted at that fraction of its sentences."""
    parts = list(filler)
    for depth, text in sorted(items, key=lambda x: -x[0]):  # deepest first: earlier indices stay valid
        parts.insert(round(depth * len(filler)), text)
    return "".join(parts)


def make_sample(kind: str, n_tokens: int, depth: float, seed, count: Callable[[str], int],
                answer_tokens: int = 16) -> dict:
    """One prompt of about n_tokens tokens (never more than n_tokens - answer_tokens) with the
    item at `depth`. input: text (or chat messages for 'conversation'); ideal: the answer, or a
    list of answers for 'multi_needle' (one question each: `questions`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown long-context task '{kind}'; choose one of: {', '.join(KINDS)}")
    rng = random.Random(f"{kind}:{n_tokens}:{depth:.4f}:{seed}")
    if kind == "passkey":
        key = str(rng.randint(10000, 99999))
        head = "There is important info hidden inside a lot of irrelevant text. Find it and memorize it.\n"
        tail = "\nWhat is the pass key? The pass key is"
        items = [(depth, f"The pass key is {key}. Remember it. {key} is the pass key. ")]
        ideal, questions = key, None
    elif kind == "needle":
        city, word = rng.choice(_CITIES), rng.choice(_WORDS)
        head = "Read the following notes carefully.\n"
        tail = f"\nAccording to the notes, the secret ingredient of {city}'s famous soup is"
        items = [(depth, f"The secret ingredient of {city}'s famous soup is {word}. ")]
        ideal, questions = word, None
    elif kind == "multi_needle":
        things = rng.sample(_THINGS, 3)
        nums = [str(rng.randint(100, 999)) for _ in things]
        spread = [depth, (depth + 1 / 3) % 1.0, (depth + 2 / 3) % 1.0]  # three needles a third apart
        head = "Read the following notes carefully.\n"
        items = [(d, f"The magic number of {t} is {n}. ") for d, t, n in zip(spread, things, nums)]
        tail = ""
        questions = [f"\nAccording to the notes, the magic number of {t} is" for t in things]
        ideal = nums
    else:  # a fact in the first turn of a long conversation, asked for in the last
        name, pet = rng.choice(_NAMES), rng.choice(["cat", "dog", "parrot", "tortoise"])
        fact = f"By the way, my {pet} is called {name}."
        ask = f"What is the name of my {pet}? Answer with the name only."
        head, tail, items, questions, ideal = "", "", [], None, name
    budget = n_tokens - answer_tokens - count(head + tail) - sum(count(t) for _, t in items) - 8
    if kind == "conversation":
        filler = _fill(count, max(0, budget - count(fact + ask) - 48), rng)  # 48: the turns' markup
        msgs = [{"role": "user", "content": f"Hello! {fact} Could you tell me about old towns?"},
                {"role": "assistant", "content": "Gladly. " + "".join(filler[: len(filler) // 2])},
                {"role": "user", "content": "Please go on."},
                {"role": "assistant", "content": "".join(filler[len(filler) // 2:])},
                {"role": "user", "content": ask}]
        return {"input": msgs, "ideal": ideal, "kind": kind, "n_tokens": n_tokens, "depth": 0.0}
    text = head + _insert(_fill(count, max(0, budget), rng), items)
    out = {"input": text + tail, "ideal": ideal, "kind": kind, "n_tokens": n_tokens, "depth": depth}
    if questions:
        out["inputs"] = [text + q for q in questions]
    return out


def correct(sampled: str, ideal: str) -> bool:
    """The answer appears as a whole word ('123' is not found in '12345')."""
    return re.search(rf"(?<!\w){re.escape(ideal)}(?!\w)", sampled, re.I) is not None


# --- the grid, through the serving engine ------------------------------------------------------------
def grid(engine, kind: str = "passkey", lengths=LENGTHS, depths=DEPTHS, seed: int = 0,
         max_tokens: int = 12) -> dict:
    """Accuracy per (length, depth): {"kind", "lengths", "depths", "acc": [[...] per length]}.
    Lengths past the engine's window are skipped (None). Greedy decoding."""
    from glassgpt.serve.engine import SamplingParams

    tok = engine.tokenizer
    count = lambda s: len(tok.encode(s))  # noqa: E731
    limit = min(engine.context_window, engine.slot_len)
    acc = []
    for n in lengths:
        row = []
        for d in depths:
            if n > limit:
                row.append(None)
                continue
            s = make_sample(kind, n, d, seed, count, answer_tokens=max_tokens + 4)
            prompts = [tok.encode(t) for t in s.get("inputs", [s["input"]])] if kind != "conversation" else \
                [tok.render_chat(s["input"])]
            ideals = s["ideal"] if isinstance(s["ideal"], list) else [s["ideal"]]
            hits = 0
            for ids, ideal in zip(prompts, ideals):
                ids = ids[-(limit - max_tokens):]
                r = engine.generate(ids, SamplingParams(max_tokens=max_tokens, temperature=0.0))
                hits += correct(r["choices"][0]["text"], ideal)
            row.append(hits / len(ideals))
        acc.append(row)
    return {"kind": kind, "lengths": list(lengths), "depths": list(depths), "acc": acc}


def format_grid(g: dict) -> str:
    head = f"{g['kind']:>12} | " + " ".join(f"{d:>5.0%}" for d in g["depths"]) + " |  mean"
    lines = [head, "-" * len(head)]
    for n, row in zip(g["lengths"], g["acc"]):
        vals = [v for v in row if v is not None]
        cells = " ".join("    -" if v is None else f"{v:>5.0%}" for v in row)
        lines.append(f"{n:>12,} | {cells} | {sum(vals) / len(vals):>5.0%}" if vals else f"{n:>12,} | {cells} |     -")
    return "\n".join(lines)


def heatmap(grids: list[dict], path) -> None:
    """One panel per grid: depth across, length down, accuracy as colour (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(grids), figsize=(5 * len(grids), 3.6), squeeze=False)
    for ax, g in zip(axes[0], grids):
        data = [[math.nan if v is None else v for v in row] for row in g["acc"]]
        im = ax.imshow(data, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(g["depths"])), [f"{d:.0%}" for d in g["depths"]], fontsize=7)
        ax.set_yticks(range(len(g["lengths"])), [f"{n // 1024}K" if n >= 1024 else str(n) for n in g["lengths"]])
        ax.set_xlabel("depth of the item in the prompt")
        ax.set_ylabel("prompt tokens")
        ax.set_title(g["kind"])
    fig.colorbar(im, ax=axes[0].tolist(), label="accuracy")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# --- held-out loss by position -------------------------------------------------------------------------
def buckets_for(T: int) -> list[tuple[int, int]]:
    """[0, 1K), [1K, 2K), [2K, 4K), ... up to T (powers of two past 1K; finer below for short windows)."""
    edges = [0]
    e = min(1024, max(1, T // 8))
    while e < T:
        edges.append(e)
        e *= 2
    edges.append(T)
    return list(zip(edges, edges[1:]))


def loss_by_position(model, rows, buckets=None, autocast=None) -> list[dict]:
    """Mean next-token loss (nats) of held-out rows [N, T+1] per position bucket:
    [{"lo", "hi", "loss", "tokens"}]. One row a forward (a 32K row is one flash-attention pass)."""
    import contextlib

    import torch

    rows = torch.as_tensor(rows)
    T = rows.size(1) - 1
    buckets = buckets or buckets_for(T)
    total = torch.zeros(T, dtype=torch.float64)
    dev = next(model.parameters()).device
    with torch.no_grad():
        for r in rows:
            with autocast or contextlib.nullcontext():
                loss = model(r[None, :-1].to(dev), r[None, 1:].to(dev), reduction="none")
            total += loss[0].double().cpu()
    per = total / rows.size(0)
    return [{"lo": a, "hi": b, "loss": float(per[a:b].mean()), "tokens": (b - a) * rows.size(0)} for a, b in buckets]


def plot_loss_by_position(series: dict[str, list[dict]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, bs in series.items():
        ax.plot([math.sqrt(max(b["lo"], 1) * b["hi"]) for b in bs], [b["loss"] for b in bs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in the document (tokens, bucket centre)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
