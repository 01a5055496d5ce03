"""The OpenAI-compatible completion function against a local stub server."""

import json
import socket

import pytest

from glassgpt.evals import Registry
from glassgpt.evals.completion_fns import make_completion_fn
from glassgpt.evals.completion_fns.openai_compat import OpenAICompatFn
from glassgpt.evals.errors import CompletionError, EvalError
from glassgpt.evals.record import read_record
from glassgpt.evals.runner import run_target

from evals_stub_server import Stub


def _registry(tmp_path, n=6):
    reg = tmp_path / "reg"
    (reg / "evals").mkdir(parents=True)
    (reg / "data").mkdir()
    (reg / "evals" / "t.yaml").write_text(
        "shout:\n  id: shout.dev.v0\n  metrics: [accuracy]\n"
        "shout.dev.v0:\n  class: evals.elsuite.basic.match:Match\n  args:\n    samples_jsonl: s.jsonl\n")
    with open(reg / "data" / "s.jsonl", "w") as f:
        for i in range(n):
            ideal = f"WORD{i}" if i % 2 == 0 else f"word{i}"
            f.write(json.dumps({"input": [{"role": "user", "content": f"word{i}"}], "ideal": ideal}) + "\n")
    return Registry([reg])


def test_chat_endpoint_match_usage_and_cost(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with Stub() as s:
        reg = _registry(tmp_path)
        res = run_target("shout", "stub-model", reg, base_url=s.url, record_path=tmp_path / "r.jsonl",
                         completion_args={"price_per_1k": 0.002}, threads=3, show_progress=False)
    rep = res.results[0].final_report
    assert rep["accuracy"] == pytest.approx(0.5)  # upper-cased echo matches the even ideals only
    assert rep["usage_total_tokens"] == 6 * 15
    assert rep["cost_usd"] == pytest.approx(6 * 15 / 1000 * 0.002)
    assert "boostrap_std" in rep and "bootstrap_std" in rep
    ev = read_record(tmp_path / "r.jsonl").get_events("sampling")
    assert len(ev) == 6 and ev[0].data["usage"]["prompt_tokens"] == 10


def test_completions_endpoint_text_prompt(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with Stub() as s:
        fn = make_completion_fn("completions:base", base_url=s.url)
        assert fn([{"role": "user", "content": "hi"}]).get_completions() == ["HI"]


def test_retries_429_then_succeeds():
    with Stub(mode="429", fail_first=2) as s:
        fn = OpenAICompatFn("m", base_url=s.url, backoff_base=0.01)
        assert fn("abc").get_completions() == ["ABC"]
        assert fn.retries == 2 and s.calls == 3


def test_persistent_5xx_becomes_error_events_and_run_continues(tmp_path):
    with Stub(mode="500!") as s:
        reg = _registry(tmp_path, n=4)
        res = run_target("shout", "m", reg, base_url=s.url, record_path=tmp_path / "r.jsonl", threads=2,
                         show_progress=False, completion_args={"max_retries": 1, "backoff_base": 0.01})
    r = res.results[0]
    assert r.errors == 4 and r.final_report["errors"] == 4
    errs = read_record(tmp_path / "r.jsonl").get_events("error")
    assert len(errs) == 4 and "gave up" in errs[0].data["message"]


def test_garbage_response_is_an_error_event(tmp_path):
    with Stub(mode="garbage") as s:
        fn = OpenAICompatFn("m", base_url=s.url, max_retries=0)
        with pytest.raises(CompletionError):
            fn("x")
        res = run_target("shout", "m", _registry(tmp_path, n=3), base_url=s.url, record_path=tmp_path / "r.jsonl",
                         threads=1, show_progress=False, completion_args={"max_retries": 0})
    assert res.results[0].errors == 3


def test_endpoint_down(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    res = run_target("shout", "m", _registry(tmp_path, n=2), base_url=f"http://127.0.0.1:{port}/v1",
                     record_path=tmp_path / "r.jsonl", threads=1, show_progress=False,
                     completion_args={"max_retries": 1, "backoff_base": 0.01})
    assert res.results[0].errors == 2
    assert read_record(tmp_path / "r.jsonl").get_events("error")[0].data["type"] == "CompletionError"


def test_no_key_and_no_base_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(EvalError, match="OPENAI_API_KEY"):
        make_completion_fn("gpt-4o-mini")


def test_modelgraded_with_endpoint_grader(tmp_path):
    reg = tmp_path / "reg"
    for d in ("evals", "data", "modelgraded"):
        (reg / d).mkdir(parents=True)
    (reg / "modelgraded" / "g.yaml").write_text(
        "yn:\n  prompt: 'Is this upper case? {completion}'\n  choice_strings: ['Yes', 'No']\n"
        "  choice_scores: {'Yes': 1.0, 'No': 0.0}\n  input_outputs: {input: completion}\n")
    (reg / "evals" / "g.yaml").write_text(
        "g:\n  id: g.dev.v0\ng.dev.v0:\n  class: evals.elsuite.modelgraded.classify:ModelBasedClassify\n"
        "  args: {samples_jsonl: s.jsonl, modelgraded_spec: yn, eval_type: classify}\n")
    (reg / "data" / "s.jsonl").write_text("".join(json.dumps({"input": f"say {w}"}) + "\n" for w in ("a", "b", "c")))

    def grade(text):  # the grader: "Yes" for b, off-list answer for c
        return "Yes" if "say b" in text.lower() else ("No" if "say a" in text.lower() else "Perhaps")

    with Stub(reply=grade) as s:
        res = run_target("g", "scripted:echo,grader", Registry([reg]), base_url=s.url,
                         record_path=tmp_path / "r.jsonl", threads=1, show_progress=False)
    rep = res.results[0].final_report
    assert rep["counts/Yes"] == 1 and rep["counts/No"] == 1 and rep["counts/__invalid__"] == 1
    assert rep["score"] == pytest.approx(1 / 3)  # __invalid__ scores the lowest choice score
