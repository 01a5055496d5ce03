"""Local-model completion function (fake model and a tiny real glassgpt model),
HumanEval in the sandbox, bits per byte."""

import json

import pytest

import torch

from glassgpt.evals import Registry
from glassgpt.evals.completion_fns import ScriptedCompletionFn
from glassgpt.evals.completion_fns.local import LocalModelFn
from glassgpt.evals.runner import run_eval
from glassgpt.evals.sandbox import run_program
from glassgpt.model import gpt

from conftest import check_arith_record


class ByteTok:
    bos_id = 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


class NextByte(torch.nn.Module):
    """Predicts byte+1 (a..z cycle): 'abc' -> 'def...'."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        nxt = torch.where(idx == 256, torch.full_like(idx, ord("a")), idx + 1)
        nxt = torch.where(nxt > ord("z"), torch.full_like(nxt, ord("a")), nxt)
        return torch.nn.functional.one_hot(nxt.clamp(max=256), 257).float() * 30.0


@pytest.fixture(scope="module")
def tiny_lm():
    from glassgpt.config import ModelConfig
    from glassgpt.data.tokenizer import Tokenizer

    tok = Tokenizer.train(["hello world, the quick brown fox. " * 20, "def f(x):\n    return x + 1\n" * 20], vocab_size=300)
    model = gpt.build(ModelConfig(depth=1, aspect=32, head_dim=16, seq_len=64, vocab_size=tok.vocab_size), seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights: varied greedy continuations
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval(), tok


def test_local_fn_batched_equals_alone_and_stops(tiny_lm):
    model, tok = tiny_lm
    fn = LocalModelFn(model, tok, max_tokens=6, batch_size=8, chat=False)
    import concurrent.futures as cf

    prompts = ["hello", "def f(x):", "the quick", "x + 1", "brown fox", "return"] * 2
    alone = [LocalModelFn(model, tok, chat=False)(p, max_tokens=6).get_completions()[0] for p in prompts]
    steps = fn.engine.steps
    with cf.ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda p: fn(p, max_tokens=6).get_completions()[0], prompts))
    assert outs == alone and len(set(alone)) > 2
    assert fn.engine.steps - steps < 2.5 * len(prompts)  # requests shared decode steps (alone: 5 per prompt)
    free = alone[0]
    stop = free[2:4]  # a string the greedy continuation certainly contains
    cut = fn(prompts[0], max_tokens=6, stop=[stop]).get_completions()[0]
    assert stop not in cut and free.startswith(cut)
    # n choices at temperature 1 (more than one engine request of batch_size choices)
    res = LocalModelFn(model, tok, batch_size=2, chat=False)("hello", max_tokens=4, temperature=1.0, n=3)
    assert len(res.get_completions()) == 3 and res.usage["completion_tokens"] > 0


def test_local_fn_loglikelihood_and_rolling():
    fn = LocalModelFn(NextByte(), ByteTok(), block_size=4, chat=False)
    (lp_good, greedy_good), (lp_bad, greedy_bad) = fn.loglikelihood([("ab", "cd"), ("ab", "xx")])
    assert greedy_good and not greedy_bad and lp_good > lp_bad
    assert lp_good == pytest.approx(0.0, abs=1e-3)
    # rolling windows over a text longer than the context cover every token
    assert fn.loglikelihood_rolling(["abcdefghij"])[0] == pytest.approx(0.0, abs=1e-3)
    assert fn.loglikelihood_rolling(["abcdeXghij"])[0] < -1.0


def test_bits_per_byte_eval_with_local_fn(tmp_path):
    fn = LocalModelFn(NextByte(), ByteTok(), block_size=16, chat=False)
    res = run_eval("glassgpt-bpb-sample", [fn], Registry(), record_path=tmp_path / "r.jsonl", show_progress=False)
    assert res.final_report["bpb"] > 0 and res.final_report["docs"] == 5
    with pytest.raises(Exception, match="log-probabilities"):
        run_eval("glassgpt-bpb-sample", [ScriptedCompletionFn()], Registry(), record_path=tmp_path / "s.jsonl",
                 show_progress=False)


def test_tiny_real_glassgpt_model(tmp_path):
    """Builds a tiny random glassgpt model in-process and runs it through the eval path,
    including load_model from a saved run directory."""
    from glassgpt import config as config_mod
    from glassgpt.data.tokenizer import Tokenizer
    from glassgpt.train import checkpoint

    tok = Tokenizer.train(["hello world, the quick brown fox. " * 20, "def f(x):\n    return x + 1\n" * 20], vocab_size=300)
    cfg = config_mod.load("tiny") if "tiny" in config_mod.preset_names() else config_mod.Config()
    cfg.model.vocab_size = tok.vocab_size
    cfg.model.depth, cfg.model.seq_len = 1, 64
    model = gpt.build(cfg.model, seed=0)
    fn = LocalModelFn(model, tok, cfg, max_tokens=5, chat=False)
    assert fn.block_size == 64
    out = fn("hello", max_tokens=5).get_completions()[0]
    assert isinstance(out, str)
    chat_fn = LocalModelFn(model, tok, cfg, max_tokens=3)
    assert isinstance(chat_fn([{"role": "user", "content": "hi"}]).get_completions()[0], str)
    (lp, _), = fn.loglikelihood([("hello", " world")])
    assert lp < 0
    res = run_eval("glassgpt-arith-2d", [fn], Registry(), record_path=tmp_path / "r.jsonl", show_progress=False,
                   max_samples=4, threads=2)
    assert res.final_report["errors"] == 0
    check_arith_record([json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines() if line.strip()],
                       res.final_report["accuracy"])
    # the same model through a saved run directory
    import dataclasses

    run = tmp_path / "run"
    run.mkdir()
    tok.save(run / "tokenizer.json")
    cfg_dict = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg.to_dict()
    checkpoint.save(run, 1, model.state_dict(), [], {"config": cfg_dict})
    from glassgpt.evals.completion_fns import make_completion_fn

    loaded = make_completion_fn(f"local:{run}", max_tokens=5, chat=False)
    assert loaded("hello", max_tokens=5).get_completions()[0] == out


def test_sandbox_pass_fail_timeout_memory():
    assert run_program("assert 1 + 1 == 2").status == "passed"
    r = run_program("assert 1 + 1 == 3")
    assert r.status == "failed" and "AssertionError" in r.detail
    assert run_program("while True: pass", timeout=1.0).status == "timeout"
    r = run_program("x = bytearray(2 * 1024 ** 3)", memory_mb=256)
    assert r.status == "failed" and "MemoryError" in r.detail
    assert run_program("import os; os.remove('x')").status == "failed"  # disabled in the sandbox


def test_humaneval_pass_at_k(tmp_path):
    probs = [
        {"task_id": "T/0", "prompt": "def add(a, b):\n", "entry_point": "add",
         "test": "def check(f):\n    assert f(2, 3) == 5\n"},
        {"task_id": "T/1", "prompt": "def neg(a):\n", "entry_point": "neg",
         "test": "def check(f):\n    assert f(2) == -2\n"},
    ]
    reg = tmp_path / "reg"
    (reg / "evals").mkdir(parents=True)
    (reg / "data").mkdir()
    (reg / "data" / "he.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probs))
    (reg / "evals" / "he.yaml").write_text(
        "he:\n  id: he.dev.v0\nhe.dev.v0:\n  class: glassgpt.evals.elsuite.builtin:HumanEval\n"
        "  args: {samples_jsonl: he.jsonl, n_samples: 2, k: [1, 2], timeout: 2}\n")
    answers = {"def add(a, b):\n": ["    return a + b\n\ndef unrelated():\n    pass\n",
                                    "```python\ndef add(a, b):\n    return a - b\n```"],
               "def neg(a):\n": ["    while True: pass\n", "    return 0\n"]}
    fn = ScriptedCompletionFn(fn=lambda p, **k: answers[p])
    res = run_eval("he", [fn], Registry([reg]), record_path=tmp_path / "r.jsonl", show_progress=False)
    rep = res.final_report
    assert rep["pass@1"] == pytest.approx(0.25)  # add: 1/2, neg: 0/2
    assert rep["pass@2"] == pytest.approx(0.5)
    assert rep["accuracy"] == pytest.approx(0.5)


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass(tmp_path):
    from glassgpt.evals.data import read_jsonl
    from glassgpt.evals.elsuite.builtin import humaneval_path

    probs = {p["prompt"]: p["canonical_solution"] for p in read_jsonl(humaneval_path())}
    fn = ScriptedCompletionFn(fn=lambda p, **k: probs[p])
    res = run_eval("glassgpt-humaneval", [fn], Registry(), record_path=tmp_path / "r.jsonl", show_progress=False,
                   threads=4)
    assert res.final_report["pass@1"] == 1.0


def test_heldout_sources_load_or_skip_with_notice():
    from glassgpt.evals.elsuite.builtin import heldout_documents

    docs, notice = heldout_documents("humaneval", max_docs=2)
    assert len(docs) == 2 and notice is None and docs[0]["text"]
    docs, notice = heldout_documents("stdlib_tests", max_docs=2)
    assert (len(docs) == 2 and notice is None) or (docs == [] and "skipped" in notice)
