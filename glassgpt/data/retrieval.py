"""Retrieval documents for the long-context stage (docs/long_context.md): stretches of the long
packaged texts with facts stated at random depths and asked for later in the same document, so the
model learns to find and copy what it read thousands of tokens before.

A base model trained on 256-token rows does not do this even inside its own window (pass-key 0%
at 64 tokens), and natural text seldom asks for a fact stated 20K tokens earlier, so the stage
needs rows that do. The evals (glassgpt.evals.longctx) stay out of distribution: their filler is
synthetic prose, these use the long sources' *training* documents; their items ("the pass key",
"the secret ingredient of a city's soup", "the magic number of the red door", a pet's name) are
phrasings and entities that never appear here.
"""

from __future__ import annotations

import math
import random
from typing import Iterator

from glassgpt.data.packaged import Document

NAME = "retrieval"
VERSION = 5  # part of the corpus hash: a change to the generator is a new corpus
NEEDS = ("jargon", "debian-reference", "perl-long", "python-long")  # the English long texts: the filler
DOCS = 600  # ~10 MB of text at the mean window; data.packaged's cap ("retrieval:BYTES") takes what a stage needs
MIN_BYTES, MAX_BYTES = 2_000, 120_000  # windows of ~500 to ~30K tokens, log-uniform
BYTES_PER_FACT = 400  # one fact per ~100 tokens of filler: copying is learnt from many examples

_ADJ = ["amber", "northern", "wooden", "quiet", "hollow", "eastern", "painted", "crooked", "narrow", "golden",
        "sunken", "upper", "marble", "iron", "distant", "hidden"]
_NOUN = ["warehouse", "archive", "bakery", "observatory", "greenhouse", "workshop", "chapel", "pier", "tavern",
         "laboratory", "orchard", "stable", "mill", "gallery", "cellar", "station"]
_PEOPLE = ["Dr. Okafor", "Mrs. Lindqvist", "Captain Reyes", "Professor Haldane", "Mr. Abernathy", "Ms. Takahashi",
           "Aunt Rosalind", "Brother Anselm", "Judge Moreau", "Nurse Kowalski", "Uncle Teodor", "Chef Baptiste"]
_WORDS = ["lantern", "pebble", "thistle", "cobalt", "meadow", "falcon", "walnut", "harbor", "velvet", "glacier",
          "orchid", "copper", "willow", "quartz", "biscuit", "comet", "ember", "puzzle", "saddle", "violet"]
# attribute -> value kind; 'digits' values are 3 to 6 digits
_ATTRS = {"access code": "digits", "room number": "digits", "locker code": "digits", "ticket number": "digits",
          "serial number": "digits", "account number": "digits", "lucky number": "digits", "password": "word",
          "codeword": "word", "favourite word": "word", "watchword": "word", "reference code": "code"}

# (statement, question) templates: the question ends with the answer re-stated, so the answer's
# tokens follow the same words as in the statement (what the model must learn to look up)
_TEMPLATES = [
    ("The {attr} of {ent} is {val}. ", "What is the {attr} of {ent}? The {attr} of {ent} is {val}."),
    ("Note: the {attr} for {ent} is {val}. ", "Question: what is the {attr} for {ent}? Answer: {val}."),
    ("Remember this: {ent} has the {attr} {val}. {val} is the {attr} of {ent}. ",
     "Which {attr} does {ent} have? {ent} has the {attr} {val}."),
    ("For the record, {ent}'s {attr} is {val}. ", "Recall {ent}'s {attr}. {ent}'s {attr} is {val}."),
]


# lists: a run of words from the window itself, recited back later: every word of the recital is a
# copy, far denser supervision than one value per fact (how small models learn to copy at all)
_LIST = ("The inventory of {ent} reads: {val}. ", "Recite the inventory of {ent}. The inventory of {ent} reads: {val}.")
LIST_FRACTION = 0.5
DRILL_EVERY = 3  # one document in three is a copy drill (`drill`)


def _value(kind: str, rng: random.Random, words: list[str] | None = None) -> str:
    if kind == "list":
        return " ".join(rng.sample(words, min(len(words), rng.randint(8, 32))))
    if kind == "digits":
        n = rng.randint(3, 6)
        return str(rng.randint(10 ** (n - 1), 10 ** n - 1))
    if kind == "word":
        return rng.choice(_WORDS)
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(2)) + "-" + str(rng.randint(10, 99))


def _entity(rng: random.Random) -> str:
    return rng.choice(_PEOPLE) if rng.random() < 0.3 else f"the {rng.choice(_ADJ)} {rng.choice(_NOUN)}"


def _window(text: str, n_bytes: int, rng: random.Random) -> list[str]:
    """A stretch of about n_bytes of `text` as lines (whole lines: a fact never splits a word)."""
    lines = text.splitlines(keepends=True)
    start = rng.randrange(len(lines))
    out, size = [], 0
    for line in lines[start:] + lines[:start]:
        if size >= n_bytes:
            break
        out.append(line)
        size += len(line)
    return out


def document(text: str, seed) -> str:
    """One retrieval document: a window of `text` with facts inserted at random lines and each one
    asked for at a later line (half of them at the end, as the evals ask)."""
    rng = random.Random(f"{NAME}:{seed}")
    n_bytes = int(math.exp(rng.uniform(math.log(MIN_BYTES), math.log(MAX_BYTES))))
    lines = _window(text, n_bytes, rng)
    n = len(lines)
    inserts: list[tuple[float, int, str]] = []  # (position in lines, order, text): sorted, then inserted
    k = max(1, n_bytes // BYTES_PER_FACT)
    used = set()
    words = sorted({w for w in "".join(lines).split() if w.isalpha()}) or _WORDS  # distinct: unguessable
    for i in range(k):
        listed = rng.random() < LIST_FRACTION
        attr, ent = "inventory" if listed else rng.choice(list(_ATTRS)), _entity(rng)
        if (attr, ent) in used:  # one value per (attribute, entity) in a document
            continue
        used.add((attr, ent))
        val = _value("list" if listed else _ATTRS[attr], rng, words)
        state, ask = _LIST if listed else rng.choice(_TEMPLATES)
        at = rng.uniform(0, n * 0.9)
        asked = n if rng.random() < 0.5 else rng.uniform(at, n)
        fmt = {"attr": attr, "ent": ent, "val": val}
        inserts.append((at, 2 * i, state.format(**fmt)))
        inserts.append((asked, 2 * i + 1, "\n" + ask.format(**fmt) + "\n"))
    out = list(lines)
    for at, _, piece in sorted(inserts, key=lambda e: (-math.ceil(e[0]), -e[1])):  # deepest first
        out.insert(math.ceil(at), piece)
    return "".join(out)


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def drill(text: str, seed, prefix: str = NAME) -> str:
    """Copy drills: lists drawn from `text` (distinct words; for Chinese text, distinct characters),
    or numbers, each recited right after. Half of a drill's tokens can only be predicted by copying:
    with token smearing (model.smear) this is what teaches a small base to copy at all (pure retrieval
    documents, one value per ~100 tokens, did not within 600 steps)."""
    rng = random.Random(f"{prefix}-drill:{seed}")
    window = "".join(_window(text, 20_000, rng))
    chars = sorted({c for c in window if _is_cjk(c)})
    zh = len(chars) > 50
    words = chars if zh else sorted({w for w in window.split() if w.isalpha()}) or _WORDS
    out = []
    for i in range(rng.randint(20, 60)):
        if rng.random() < 0.2:  # numbers: what pass keys and codes are made of
            items, sep = [str(rng.randint(0, 10 ** rng.randint(1, 6))) for _ in range(rng.randint(3, 16))], " "
        else:
            items, sep = rng.sample(words, min(len(words), rng.randint(8, 40))), "" if zh else " "
        val = sep.join(items)
        out.append(f"字表 {i + 1}：{val}。\n再写一遍字表 {i + 1}：{val}。\n" if zh and sep == "" else
                   f"Word list {i + 1}: {val}.\nWord list {i + 1} again: {val}.\n")
    return "".join(out)


# Copy drills alone, as a pretraining source (`drills` in data.packaged): from the training documents
# of prose sources in both languages, so the base model learns to copy from the start.
DRILLS = "drills"
DRILL_NEEDS = ("brown", "chinese-poetry")
DRILL_DOCS = 400  # ~12 KB each, ~5 MB in all; the preset's byte cap takes its share


def drill_documents(groups: list[list[str]], n_docs: int = DRILL_DOCS) -> Iterator[Document]:
    """`n_docs` drills, drawn in turn from each group of texts (one group per language source, so a
    byte cap keeps both languages)."""
    groups = [g for g in ([t for t in g if t.strip()] for g in groups) if g]
    for i in range(n_docs if groups else 0):
        texts = groups[i % len(groups)]
        text = texts[(i // len(groups)) % len(texts)]
        yield Document(name=f"{DRILLS}/{i}", text=drill(text, i, DRILLS), source=DRILLS,
                       language="zh" if any(_is_cjk(c) for c in text[:2000]) else "en")


def fingerprint() -> list:
    """What the generated documents depend on besides their filler: part of the corpus hash."""
    return [VERSION, DOCS, MIN_BYTES, MAX_BYTES, BYTES_PER_FACT, LIST_FRACTION, DRILL_EVERY]


def drill_fingerprint() -> list:
    """The same for the `drills` source."""
    return [VERSION, DRILL_DOCS]


def documents(texts: list[str], n_docs: int = DOCS) -> Iterator[Document]:
    """`n_docs` retrieval documents from these filler texts (the long sources' training documents),
    every DRILL_EVERY-th a copy drill."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        return
    for i in range(n_docs):
        make = drill if i % DRILL_EVERY == 0 else document
        yield Document(name=f"{NAME}/{i}", text=make(texts[i % len(texts)], i), source=NAME, language="en")
