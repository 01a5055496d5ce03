"""Registry, data, records, resume, cache, threads, bad input, CLI."""

import json
import threading
import time

import pytest

from glassgpt.evals import Registry
from glassgpt.evals.completion_fns import ScriptedCompletionFn, make_completion_fn, parse_kv
from glassgpt.evals.completion_fns.ratelimit import RateLimiter
from glassgpt.evals.errors import EvalError
from glassgpt.evals.metrics import bootstrap_std, pass_at_k
from glassgpt.evals.record import read_record
from glassgpt.evals.runner import run_eval, run_target
from glassgpt.errors import GlassError


def make_registry(tmp_path, n=10, extra_yaml="", lines=None):
    reg = tmp_path / "reg"
    for d in ("evals", "data", "eval_sets"):
        (reg / d).mkdir(parents=True, exist_ok=True)
    (reg / "evals" / "t.yaml").write_text(
        "capitals:\n  id: capitals.dev.v0\n  description: capitals\n  metrics: [accuracy]\n"
        "capitals.dev.v0:\n  class: evals.elsuite.basic.match:Match\n  args:\n    samples_jsonl: caps/s.jsonl\n"
        "weird:\n  id: weird.dev.v0\nweird.dev.v0:\n  class: evals.elsuite.mmmu.eval:MMMU\n  args: {}\n"
        "incl:\n  id: incl.dev.v0\nincl.dev.v0:\n  class: evals.elsuite.basic.includes:Includes\n"
        "  args: {samples_jsonl: caps/s.jsonl, ignore_case: true}\n" + extra_yaml)
    (reg / "eval_sets" / "s.yaml").write_text("mixed:\n  evals: [capitals, weird, incl]\n")
    (reg / "data" / "caps").mkdir(exist_ok=True)
    if lines is None:
        lines = [json.dumps({"input": [{"role": "user", "content": f"q{i}"}], "ideal": f"a{i}"}) for i in range(n)]
    (reg / "data" / "caps" / "s.jsonl").write_text("\n".join(lines) + "\n")
    return Registry([reg])


def answer_even(prompt, **kw):  # right for even-numbered questions
    i = int(prompt[-1]["content"][1:])
    return f"a{i} yes" if i % 2 == 0 else "no idea"


def test_registry_alias_listing_and_builtin(tmp_path):
    reg = make_registry(tmp_path)
    spec = reg.get_eval("capitals")
    assert spec.key == "capitals.dev.v0" and spec.args["samples_jsonl"] == "caps/s.jsonl"
    rows = {r["name"]: r for r in reg.listing()}
    assert rows["capitals"]["supported"] and not rows["weird"]["supported"]
    assert "glassgpt-humaneval" in rows and rows["glassgpt-humaneval"]["supported"]  # built-in registry
    assert reg.resolve("mixed") == ("set", ["capitals", "weird", "incl"])


def test_unknown_eval_suggests_closest(tmp_path):
    reg = make_registry(tmp_path)
    with pytest.raises(EvalError, match="did you mean 'capitals'"):
        reg.resolve("capitols")
    assert issubclass(EvalError, GlassError)


def test_malformed_yaml_names_file_and_line(tmp_path):
    reg = make_registry(tmp_path)
    bad = reg.paths[-1] / "evals" / "bad.yaml"
    bad.write_text("ok:\n  id: ok.dev.v0\nbroken: [unclosed\n  x: 1\n")
    with pytest.raises(EvalError, match=r"bad\.yaml:\d+: malformed YAML"):
        Registry([reg.paths[-1]]).names()


def test_malformed_jsonl_line_and_skip_bad_samples(tmp_path):
    lines = [json.dumps({"input": [{"role": "user", "content": f"q{i}"}], "ideal": f"a{i}"}) for i in range(4)]
    lines.insert(2, '{"input": oops')
    reg = make_registry(tmp_path, lines=lines)
    fn = ScriptedCompletionFn(fn=answer_even)
    with pytest.raises(EvalError, match=r"s\.jsonl:3: malformed JSON"):
        run_eval("capitals", [fn], reg, record_path=tmp_path / "r.jsonl", show_progress=False)
    res = run_eval("capitals", [fn], reg, record_path=tmp_path / "r2.jsonl", show_progress=False, skip_bad_samples=True)
    assert res.final_report["bad_samples"] == 1 and res.final_report["accuracy"] == 0.5


def test_missing_data_file(tmp_path):
    reg = make_registry(tmp_path)
    (reg.paths[-1] / "data" / "caps" / "s.jsonl").unlink()
    with pytest.raises(EvalError, match="data file not found"):
        run_eval("capitals", [ScriptedCompletionFn()], reg, record_path=tmp_path / "r.jsonl", show_progress=False)


def test_record_format_matches_reference_layout(tmp_path):
    reg = make_registry(tmp_path, n=8)
    res = run_eval("capitals", [ScriptedCompletionFn(fn=answer_even)], reg, record_path=tmp_path / "r.jsonl",
                   show_progress=False, threads=4)
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    spec = lines[0]["spec"]
    assert set(spec) >= {"completion_fns", "eval_name", "base_eval", "split", "run_config", "created_by", "run_id", "created_at"}
    assert spec["run_config"]["seed"] == 20220722
    events = lines[1:-1]
    for e in events:
        assert set(e) == {"run_id", "event_id", "sample_id", "type", "data", "created_by", "created_at"}
    assert [e["event_id"] for e in events] == list(range(len(events)))
    assert lines[-1]["final_report"]["accuracy"] == 0.5 and lines[-1]["run_id"] == spec["run_id"]
    assert {e["type"] for e in events} == {"sampling", "match"}
    assert res.final_report["boostrap_std"] == res.final_report["bootstrap_std"] > 0


def test_max_samples_uses_reference_shuffle(tmp_path):
    reg = make_registry(tmp_path, n=10)
    run_eval("capitals", [ScriptedCompletionFn()], reg, record_path=tmp_path / "r.jsonl", max_samples=3,
             show_progress=False)
    ids = {e.sample_id for e in read_record(tmp_path / "r.jsonl").events}
    # random.Random(123).shuffle(range(10))[:3], as in openai/evals
    import random
    idx = list(range(10))
    random.Random(123).shuffle(idx)
    assert ids == {f"capitals.dev.{i}" for i in idx[:3]}


class Boom(Exception):
    pass


def test_resume_after_kill_reasks_nothing_finished(tmp_path):
    reg = make_registry(tmp_path, n=20)
    calls = []

    def dies_at_half(prompt, **kw):
        if len(calls) == 10:
            raise KeyboardInterrupt  # like Ctrl-C / a kill in the middle of the run
        calls.append(prompt[-1]["content"])
        return answer_even(prompt)

    path = tmp_path / "r.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_eval("capitals", [ScriptedCompletionFn(fn=dies_at_half)], reg, record_path=path, threads=1,
                 show_progress=False, completion_fn_names=["m"])
    with open(path, "a") as f:
        f.write('{"run_id": "half-written')  # a torn last line
    first = read_record(path)
    done = {e.sample_id for e in first.events}
    assert len(done) == 10 and first.final_report is None

    again = []
    fn2 = ScriptedCompletionFn(fn=lambda p, **k: (again.append(p[-1]["content"]), answer_even(p))[1])
    res = run_eval("capitals", [fn2], reg, record_path=path, resume=True, threads=4, show_progress=False,
                   completion_fn_names=["m"])
    assert len(again) == 10 and not set(again) & set(calls)  # finished samples were not asked again
    assert res.resumed == 10 and res.final_report["accuracy"] == 0.5
    rec = read_record(path)
    assert rec.spec["run_id"] == first.spec["run_id"] and len(rec.get_events("match")) == 20
    # resuming with another model is refused
    with pytest.raises(EvalError, match="cannot resume"):
        run_eval("capitals", [fn2], reg, record_path=path, resume=True, show_progress=False, completion_fn_names=["other"])


def test_resume_retries_failed_samples(tmp_path):
    reg = make_registry(tmp_path, n=6)
    path = tmp_path / "r.jsonl"

    def flaky(prompt, **kw):
        if prompt[-1]["content"] == "q3":
            raise RuntimeError("endpoint hiccup")
        return answer_even(prompt)

    res = run_eval("capitals", [ScriptedCompletionFn(fn=flaky)], reg, record_path=path, show_progress=False,
                   completion_fn_names=["m"])
    assert res.errors == 1 and res.final_report["errors"] == 1
    asked = []
    fn = ScriptedCompletionFn(fn=lambda p, **k: (asked.append(p[-1]["content"]), answer_even(p))[1])
    res = run_eval("capitals", [fn], reg, record_path=path, resume=True, show_progress=False, completion_fn_names=["m"])
    assert asked == ["q3"] and res.final_report["errors"] == 0
    assert len(read_record(path).get_events("match")) == 6


def test_response_cache_hits_on_second_run(tmp_path):
    reg = make_registry(tmp_path, n=6)
    inner = ScriptedCompletionFn(fn=answer_even, name="m")
    inner.cache_id = "m"
    from glassgpt.evals.completion_fns import CachedCompletionFn, ResponseCache

    fn = CachedCompletionFn(inner, ResponseCache(tmp_path / "cache"))
    a = run_eval("capitals", [fn], reg, record_path=tmp_path / "a.jsonl", show_progress=False)
    assert inner.calls == 6
    b = run_eval("capitals", [fn], reg, record_path=tmp_path / "b.jsonl", show_progress=False)
    assert inner.calls == 6 and fn.cache.hits == 6  # nothing asked twice
    assert a.final_report["accuracy"] == b.final_report["accuracy"]
    # a different sampling argument is a different key
    fn([{"role": "user", "content": "q1"}], temperature=0.0)  # cached by the run above
    fn([{"role": "user", "content": "q1"}], temperature=1.0)  # a new key
    assert inner.calls == 7


def test_threads_run_concurrently(tmp_path):
    reg = make_registry(tmp_path, n=16)
    active, peak = [0], [0]
    lock = threading.Lock()

    def slow(prompt, **kw):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return "x"

    run_eval("capitals", [ScriptedCompletionFn(fn=slow)], reg, record_path=tmp_path / "r.jsonl", threads=8,
             show_progress=False)
    assert peak[0] > 1


def test_rate_limiter_spaces_requests():
    lim = RateLimiter(rpm=1200)  # one every 50 ms
    t0 = time.monotonic()
    for _ in range(5):
        lim.acquire()
    assert time.monotonic() - t0 >= 0.19  # 4 gaps of 50 ms at least


def test_eval_set_skips_and_counts_unsupported(tmp_path):
    reg = make_registry(tmp_path, n=4)
    res = run_target("mixed", "scripted:echo", reg, record_path=tmp_path / "out", show_progress=False)
    assert [r.eval_name for r in res.results] == ["capitals.dev.v0", "incl.dev.v0"]
    assert len(res.skipped) == 1 and res.skipped[0][0] == "weird"
    assert (tmp_path / "out" / "capitals.jsonl").exists()


def test_multiple_choice_loglikelihood_and_hf_error(tmp_path):
    reg_dir = tmp_path / "reg"
    (reg_dir / "evals").mkdir(parents=True)
    (reg_dir / "data").mkdir()
    rows = [{"question": f"Q{i}", "answers": ["red", "green", "blue"], "label": i % 3} for i in range(6)]
    (reg_dir / "data" / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (reg_dir / "evals" / "mc.yaml").write_text(
        "mc:\n  id: mc.dev.v0\nmc.dev.v0:\n  class: evals.elsuite.multiple_choice:MultipleChoice\n"
        "  args: {dataset: mc.jsonl}\n"
        "hs:\n  id: hs.dev.v0\nhs.dev.v0:\n  class: evals.elsuite.multiple_choice:MultipleChoice\n"
        "  args: {dataset: 'hf://hellaswag?split=validation'}\n")
    reg = Registry([reg_dir])

    def ll(context, continuation):  # likes "green" except for Q5
        good = "blue" if context.endswith("Q5") else "green"
        return (0.0 if continuation.strip() == good else -5.0, True)

    fn = ScriptedCompletionFn(loglikelihood_fn=ll)
    res = run_eval("mc", [fn], reg, record_path=tmp_path / "r.jsonl", show_progress=False)
    assert res.final_report["accuracy"] == pytest.approx(3 / 6)  # Q1, Q4 (green) and Q5 (blue)
    assert len(read_record(tmp_path / "r.jsonl").get_events("cond_logp")) == 18
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(EvalError, match="hellaswag"):
            run_eval("hs", [ScriptedCompletionFn()], reg, record_path=tmp_path / "h.jsonl", show_progress=False)


def test_metrics_helpers():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert bootstrap_std([1, 0] * 50) == bootstrap_std([1, 0] * 50)  # seeded: reproducible
    assert parse_kv("a=1,b=x,c=0.5,d=true") == {"a": 1, "b": "x", "c": 0.5, "d": True}
    with pytest.raises(EvalError):
        parse_kv("novalue")
    with pytest.raises(EvalError, match="scripted"):
        make_completion_fn("scripted:bogus")


def test_cli_list_run_report_and_errors(tmp_path, capsys):
    from glassgpt.cli_evals import main

    make_registry(tmp_path, n=4)
    reg = str(tmp_path / "reg")
    assert main(["list", "--registry_path", reg, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runnable"] == out["total"] - 1 and "mixed" in out["eval_sets"]
    rec = tmp_path / "r.jsonl"
    assert main(["scripted:const:a0", "capitals", "--registry_path", reg, "--record_path", str(rec), "--no-progress",
                 "--no-cache", "--threads", "2"]) == 0
    assert read_record(rec).final_report["accuracy"] == 0.25
    assert main(["report", str(rec), str(tmp_path / "reg" / "../r.jsonl")]) == 0
    assert "capitals" in capsys.readouterr().out
    assert main(["scripted", "capitalz", "--registry_path", reg]) == 2
    assert "did you mean 'capitals'" in capsys.readouterr().err


def test_main_cli_dispatches_eval(tmp_path, capsys):
    from glassgpt import cli

    make_registry(tmp_path, n=2)
    rc = cli.main(["eval", "scripted:echo", "capitals", "--registry_path", str(tmp_path / "reg"),
                   "--record_path", str(tmp_path / "r.jsonl"), "--no-progress", "--no-cache"])
    assert rc == 0 and read_record(tmp_path / "r.jsonl").final_report is not None


def test_scripted_fn_handles_image_content_parts():
    """Vision eval prompts carry content parts; text-only completion fns must not crash on them."""
    from glassgpt.evals.completion_fns.base import ScriptedCompletionFn
    from glassgpt.evals.prompt import chat_to_text

    prompt = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                           {"type": "text", "text": "Which digit is this?"}]}]
    assert chat_to_text(prompt) == "<image>Which digit is this?"
    fn = ScriptedCompletionFn(echo=True)
    assert fn(prompt).get_completions() == ["<image>Which digit is this?"]
