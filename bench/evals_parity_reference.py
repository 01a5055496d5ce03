"""Record the reference (openai/evals) verdicts that tests/test_evals_parity.py checks.

Run once, by hand, with the reference importable; the test needs neither this script nor
the `evals` package:

    pip download --no-deps evals==3.0.1.post1 -d /tmp/x && (cd /tmp/x && unzip -q evals-*.whl)
    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install blobfile requests lz4 zstandard \
        pydantic tqdm numpy pyyaml openai filelock backoff tiktoken termcolor dacite beartype aiolimiter mock
    OPENAI_API_KEY=x PYTHONPATH=/tmp/x /tmp/refvenv/bin/python bench/evals_parity_reference.py \
        --evals-root /tmp/x --out tests/evals_data/parity

What it does:
1. builds a mini registry from real registry entries (their YAML entries and the first
   lines of their data files) plus one multiple-choice set written here;
2. runs the *reference* eval classes on it with a deterministic completion function that
   answers by rule (ideal, ideal with a prefix/suffix/space/case change, garbage; grader
   answers inside and outside choice_strings), and records every prompt -> answer it gave;
3. writes registry/, responses.jsonl (prompt -> answer) and expected.json (per-sample
   match/metrics event data and the final report of every eval).
The glassgpt side replays responses.jsonl with its scripted completion function; a
prompt it builds differently finds no answer, so prompt construction is checked too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

N_LINES = 16
# (eval name in the real registry, kind)
PICKS = ["test-match", "anagrams", "game-theory", "test-includes", "test-includes-ignore-case", "test-fuzzy-match",
         "icelandic-inflection-easy", "logic-fact", "joke-fruits-likert", "joke-fruits-expl-meta", "diversity",
         "korean_romanization"]
MC_ROWS = [
    {"question": f"Question {i}: which option is number {i % 4}?", "answers": [f"option {j} for q{i}" for j in range(4)],
     "label": i % 4} for i in range(12)
]


def key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def h(x: str) -> int:
    return int(hashlib.sha256(x.encode()).hexdigest()[:8], 16)


def build_registry(src: Path, out: Path) -> list[str]:
    reg = out / "registry"
    if reg.exists():
        shutil.rmtree(reg)
    (reg / "evals").mkdir(parents=True)
    raw = {}
    for f in sorted((src / "evals").glob("*.yaml")):
        raw.update(yaml.safe_load(open(f)) or {})
    mg_raw = {}
    for f in sorted((src / "modelgraded").glob("*.yaml")):
        mg_raw.update(yaml.safe_load(open(f)) or {})
    entries, mg_needed, names = {}, set(), []
    for base in PICKS:
        vname = raw[base]["id"]
        spec = json.loads(json.dumps(raw[vname]))
        args = spec.get("args") or {}
        for k in ("samples_jsonl", "few_shot_jsonl"):
            if k in args:
                rel = args[k]
                lines = open(src / "data" / rel, encoding="utf-8").read().splitlines()[:N_LINES]
                dst = reg / "data" / "parity" / base / Path(rel).name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
                args[k] = f"parity/{base}/{Path(rel).name}"
        if "modelgraded_spec" in args:
            mg_needed.add(args["modelgraded_spec"])
        entries[base] = {"id": vname, "metrics": raw[base].get("metrics", ["accuracy"])}
        entries[vname] = spec
        names.append(base)
    mc = reg / "data" / "parity" / "mc" / "samples.jsonl"
    mc.parent.mkdir(parents=True, exist_ok=True)
    mc.write_text("".join(json.dumps(r) + "\n" for r in MC_ROWS), encoding="utf-8")
    entries["parity-mc"] = {"id": "parity-mc.dev.v0", "metrics": ["accuracy"]}
    entries["parity-mc.dev.v0"] = {"class": "evals.elsuite.multiple_choice:MultipleChoice",
                                   "args": {"dataset": "parity/mc/samples.jsonl", "instructions": "Pick one."}}
    names.append("parity-mc")
    (reg / "evals" / "parity.yaml").write_text(yaml.safe_dump(entries, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (reg / "modelgraded").mkdir()
    (reg / "modelgraded" / "parity.yaml").write_text(
        yaml.safe_dump({k: mg_raw[k] for k in sorted(mg_needed)}, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return names


def make_responder(reg: Path):
    """Rule-based answers; knows every sample's ideal by its last message."""
    ideals = {}
    for f in (reg / "data").rglob("*.jsonl"):
        for line in open(f, encoding="utf-8"):
            d = json.loads(line)
            inp = d.get("input")
            last = inp[-1]["content"] if isinstance(inp, list) and inp else inp
            if isinstance(last, str) and "ideal" in d:
                ideals[last] = d["ideal"]
    test_ideals = {"Once upon a ": "time", "The first US president was ": "George Washington", "OpenAI was founded in 20": "15"}
    ideals.update(test_ideals)
    grades = ["A", "B", "Yes", "No", "(C)", "Unsure", "I cannot tell.", "Let me think.\nThe answer is clear.\nD",
              "Yes\nBecause it is a pun.", "maybe", "E", "No.", "1", "Reasoning first.\nYes", "", "3", "Thinking.\n5", "4 stars"]
    table = {}

    def respond(prompt, **kw):
        k = key(prompt)
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        hv = h(k)
        if "Please answer with the letter of the correct answer." in text:
            out = ["A", "B", "C", "D", " B", "b"][hv % 6]
        elif "[BEGIN DATA]" in text or "Is the following funny" in text or "diverse?" in text or "On a scale" in text \
                or "funny" in text.lower() and isinstance(prompt, list) and len(prompt) == 1 and "Answer the question" in text:
            out = grades[hv % len(grades)]
        elif text in ideals:
            ideal = ideals[text]
            first = ideal[0] if isinstance(ideal, list) else ideal
            v = hv % 7
            if first.startswith("{") or first.startswith("["):
                out = [first, json.dumps(json.loads(first), indent=1), "not json", first[:-1], first + " ", first, "{}"][v]
            else:
                out = [first, first + " and more", " " + first, first.upper(), "I think " + first + ".", "nonsense",
                       first.lower()][v]
        else:
            out = f"completion {hv % 1000}: apple banana"
        table[k] = out
        return out

    return respond, table


def run_reference(reg: Path, names: list[str], respond, table):
    os.environ["EVALS_SEQUENTIAL"] = "1"
    os.environ["EVALS_SHOW_EVAL_PROGRESS"] = ""
    import types

    sys.modules.setdefault("datasets", types.SimpleNamespace(load_dataset=None))  # hf:// is not used here
    import evals.base
    import evals.elsuite.multiple_choice as mcmod
    import evals.record
    from evals.registry import Registry

    class Result:
        def __init__(self, c):
            self.c = c

        def get_completions(self):
            return [self.c]

    class Fn:
        def __call__(self, prompt, **kw):
            return Result(respond(prompt, **kw))

    def local_dataset(url):  # the reference only reads hf://; same rows, same order
        rows = [json.loads(x) for x in open(reg / "data" / url, encoding="utf-8")]
        return [mcmod.Sample(question=r["question"], answers=r["answers"], label=r["label"]) for r in rows]

    mcmod.get_dataset = local_dataset
    registry = Registry([reg])
    expected = {}
    for base in names:
        spec = registry.get_eval(base)
        n_fns = 2 if "modelgraded" in spec.cls else 1
        cls = registry.get_class(spec)
        ev = cls(completion_fns=[Fn() for _ in range(n_fns)], seed=20220722, name=spec.key,
                 eval_registry_path=spec.registry_path, registry=registry)
        d = tempfile.mkdtemp()
        if True:
            run_spec = evals.base.RunSpec(completion_fns=["parity"] * n_fns, eval_name=spec.key,
                                          base_eval=spec.key.split(".")[0], split=spec.key.split(".")[1],
                                          run_config={}, created_by="")
            rec = evals.record.LocalRecorder(os.path.join(d, "r.jsonl"), run_spec)
            report = ev.run(rec)
            rec.record_final_report(report)
            rec.flush_events()
            if base == "test-includes":  # one reference-written record, for the reader test
                shutil.copy(os.path.join(d, "r.jsonl"), reg.parent / "reference_record.jsonl")
            per = {}
            for e in rec._events:
                if e.type in ("match", "metrics"):
                    per.setdefault(e.sample_id, []).append({"type": e.type, "data": e.data})
        report = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, bool) else v) for k, v in report.items()}
        expected[base] = {"key": spec.key, "n_fns": n_fns, "report": report, "samples": per}
        print(f"{base:28s} {spec.cls.split(':')[-1]:20s} {len(per):3d} samples  {report}")
    return expected


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--evals-root", required=True, help="directory holding the unpacked evals package")
    ap.add_argument("--out", default="tests/evals_data/parity")
    a = ap.parse_args()
    sys.path.insert(0, a.evals_root)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    names = build_registry(Path(a.evals_root) / "evals" / "registry", out)
    respond, table = make_responder(out / "registry")
    expected = run_reference(out / "registry", names, respond, table)
    with open(out / "responses.jsonl", "w", encoding="utf-8") as f:
        for k, v in table.items():
            f.write(json.dumps({"prompt": json.loads(k), "completion": v}, ensure_ascii=False) + "\n")
    (out / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    print(f"wrote {out}/registry, responses.jsonl ({len(table)} prompts), expected.json ({len(expected)} evals)")


if __name__ == "__main__":
    main()
