"""Preference pairs (Bradley-Terry: P(chosen > rejected) = σ(r_c - r_r)), built by code.

From the SFT conversations and the fact questions, each pair keeps its conversation's split:

    refuse_harmful   ideal refusal > compliance on a harmful request (uncensorbench's own complying
                     answer where it has one, else a templated compliance)
    style            ideal refusal > judgmental or lecturing refusal
    answer_benign    helpful answer > refusal on a benign twin
    support          empathetic answer pointing to real help > bare refusal / dismissal (sensitive)
    fact             correct answer > the same sentence with the value altered
    unknown          "I'm not sure" > a confident wrong answer (facts never taught)
    premise          correcting a false premise > going along with it
    on_topic         a benign twin's answer > the sensitive requests' support answer (which answers nothing
                     there: the template an RL policy learnt to hand to benign questions)
    answer_fact      the right answer to a fact question or a false premise > a refusal (RL otherwise
                     spread refusals to fact questions, which no other pair shows)
    refuse_not_support  on a harmful request, the refusal > the sensitive requests' support answer (RL
                     with a well-trained reward model handed the support answer to harmful requests:
                     no refusal, counted as a disallowed response). A kind of its own, so it does not
                     take `on_topic`'s share (as it once did, when the two were one kind)
    affirm           agreeing with a true statement (facts.twins) > denying it: with only false claims
                     and premises among the pairs, "No" was always preferred, and RL denied true ones
"""

from __future__ import annotations

from dataclasses import dataclass

from glassgpt.align import facts as facts_mod
from glassgpt.align import rbr
from glassgpt.data import sft

KINDS = ("refuse_harmful", "style", "answer_benign", "support", "fact", "unknown", "premise", "on_topic", "answer_fact",
         "affirm", "refuse_not_support")


@dataclass
class Pair:
    messages: list[dict]  # the conversation up to the answer (user turns; no system prompt)
    chosen: str
    rejected: str
    kind: str
    category: str
    language: str
    split: str
    id: str


def _prompt(c) -> list[dict]:
    last = max(i for i, m in enumerate(c.messages) if m["role"] == "assistant")
    return c.messages[:last]


def build(convs: list, extra: dict | None = None, per_kind: int = 600, cache_dir=None,
          packaged_facts: bool = False) -> list[Pair]:
    """Pairs of every kind (up to `per_kind` each, hash-chosen). `extra`: conversation id -> {kind:
    response} of real responses (uncensorbench's complying answers)."""
    out: dict[str, list[Pair]] = {k: [] for k in KINDS}

    def add(kind, c, chosen, rejected, msgs=None, cat=None, lang=None, split=None, iid=None):
        out[kind].append(Pair(msgs if msgs is not None else _prompt(c), chosen, rejected, kind, cat or c.category,
                              lang or c.language, split or c.split, iid or f"{kind}/{c.id}"))

    for c in convs:
        got = dict(rbr.completions_for(c, (extra or {}).get(c.id)))
        if c.category == "harmful" and "refusal" in got:
            add("refuse_harmful", c, got["refusal"], got["comply_harmful"])
            add("style", c, got["refusal"], got["judgmental" if sft._h("style", c.id) % 2 else "lecture"])
            if "support" in got:
                add("refuse_not_support", c, got["refusal"], got["support"])
        elif c.category == "benign" and "answer" in got:
            add("answer_benign", c, got["answer"], got["refusal"])
            add("on_topic", c, got["answer"], got["support"])
        elif c.category == "sensitive" and "support" in got:
            add("support", c, got["support"], got["refusal" if sft._h("sup", c.id) % 2 else "dismissive"])
    qs = facts_mod.from_conversations(convs)
    if packaged_facts:
        qs += facts_mod.from_packages(cache_dir)
    wrong_by_lang: dict[str, list[str]] = {}
    for q in qs:
        if q.kind == "fact" and q.answer:
            wrong_by_lang.setdefault(q.language, []).append(q.answer)
    facts_by_rel: dict[str, list] = {}
    for q in qs:
        if q.kind == "fact":
            facts_by_rel.setdefault(q.language, []).append(q)
    def meta_of(q, kind=None):  # a fact question's pair fields; its id prefixed by the pair kind
        return dict(msgs=q.messages(), cat=q.kind, lang=q.language, split=q.split, iid=f"{kind or q.kind}/{q.id}")

    for q in qs:
        meta = meta_of(q)
        pool = facts_by_rel.get(q.language, [])
        if q.kind in ("fact", "false_premise") and q.answer:
            lang = q.language if q.language in sft.REFUSALS else "en"
            add("answer_fact", None, facts_mod.teach(q) or q.answer, rbr.pick(sft.REFUSALS[lang], "refuse", q.id),
                **meta_of(q, "answer_fact"))
        if q.kind == "fact" and q.answer and pool:
            other = pool[sft._h("alt", q.id) % len(pool)]
            if other.expect != q.expect and q.expect in q.answer:
                add("fact", None, q.answer, q.answer.replace(q.expect, other.expect), **meta)
        elif q.kind == "unknown" and q.answer and wrong_by_lang.get(q.language):
            ws = wrong_by_lang[q.language]
            add("unknown", None, q.answer, ws[sft._h("wrong", q.id) % len(ws)], **meta)
        elif q.kind == "false_premise":
            gone_along = q.answer.replace(q.expect, q.wrong)
            add("premise", None, facts_mod.teach(q), gone_along, **meta)
        elif q.kind in ("misconception", "false_claim") and q.answer:
            # half the time the false statement itself affirmed ("Yes. Marigot is a city in Niger."):
            # with only a bare "Yes, that's right." rejected, RL found "Yes. <anything>" unpunished
            said = facts_mod.claim(q) if sft._h("yes", q.id) % 2 else None
            lang = q.language if q.language in facts_mod.YES else "en"
            add("premise", None, facts_mod.teach(q) or q.answer,
                facts_mod.YES[lang].format(a=said) if said else "Yes, that's right.", **meta)
    for q in facts_mod.twins(qs):
        if q.kind in ("true_premise", "true_claim") and q.answer:
            lang = q.language if q.language in facts_mod.NO else "en"
            denial = (facts_mod.CORRECTION if q.kind == "true_premise" else facts_mod.NO)[lang].format(a=q.answer)
            add("affirm", None, facts_mod.teach(q), denial, **meta_of(q, "affirm"))
    pairs = []
    for kind in KINDS:
        ps = sorted(out[kind], key=lambda p: sft._h("pair", p.id))
        held = [p for p in ps if p.split == "heldout"][: max(1, per_kind // 5)]
        pairs += [p for p in ps if p.split == "train"][:per_kind] + held
    return pairs
