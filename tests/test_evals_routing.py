"""Model routing as the reference `oaieval` does it, and the fetched registry found by default.

tests/evals_data/reference_routing/reference.json was written by bench/evals_routing_reference.py,
which ran the reference's own code (evals 3.0.1.post1 from PyPI: `Registry.make_completion_fn`
and `oaieval` itself) against the stub endpoint below, listing MODELS at /v1/models: the
endpoint each name goes to, and every request `oaieval gpt-3.5-turbo-instruct` sent for two
evals of its registry (copied under registry/ there). glassgpt must send the same.
"""

import json
import zipfile
from pathlib import Path

import pytest

from evals_stub_server import Stub
from glassgpt.cli_evals import main as eval_main
from glassgpt.evals import completion_fns
from glassgpt.evals.completion_fns import is_chat_model, make_completion_fn

DATA = Path(__file__).parent / "evals_data" / "reference_routing"
REF = json.loads((DATA / "reference.json").read_text())


def reply(prompt):
    """The recorder's stub answer (bench/evals_routing_reference.py), a function of the prompt."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    return "ABCDE"[len(text) % 5]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no fetched registry unless a test makes one
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    monkeypatch.delenv("GLASSGPT_EVALS_REGISTRY", raising=False)
    completion_fns._MODEL_IDS.clear()


def test_routing_of_each_name_as_the_reference():
    with Stub(models=REF["models_listed"]) as stub:
        for name, where in REF["routing"].items():
            fn = make_completion_fn(name, base_url=stub.url)
            if where == "error":  # the reference stops; glassgpt goes on by the name's kind
                where = "chat" if is_chat_model(name) or not (name == "gpt-4-base" or "-instruct" in name) else \
                    "completions"
            assert fn.chat == (where == "chat"), name
        assert sum(1 for m, p, _ in stub.requests if p.endswith("/models")) == 1  # asked once per endpoint


def test_unreachable_model_list_falls_back_to_the_names():
    with Stub() as stub:
        stub.models = []
        assert make_completion_fn("gpt-3.5-turbo-instruct", base_url=stub.url).chat is False
        assert make_completion_fn("some-chat-model", base_url=stub.url).chat is True
        assert make_completion_fn("completions:some-chat-model", base_url=stub.url).chat is False
        assert make_completion_fn("chat:gpt-3.5-turbo-instruct", base_url=stub.url).chat is True


@pytest.mark.parametrize("ev", sorted(REF["runs"]))
def test_instruct_model_sends_what_the_reference_sends(ev, tmp_path):
    ref = REF["runs"][ev]
    with Stub(reply=reply, models=REF["models_listed"]) as stub:
        rec = tmp_path / "rec.jsonl"
        rc = eval_main(["gpt-3.5-turbo-instruct", ev, "--base-url", stub.url, "--registry_path", str(DATA / "registry"),
                        "--max_samples", "8", "--record_path", str(rec), "--no-cache", "--no-progress"])
        assert rc == 0
        sent = sorted((p, b.get("prompt") if "prompt" in b else b.get("messages")) for m, p, b in stub.requests
                      if m == "POST")
    assert [{"path": p, "prompt": q} for p, q in sent] == ref["requests"]
    final = next(json.loads(x)["final_report"] for x in rec.read_text().splitlines() if "final_report" in x)
    for k, v in ref["final_report"].items():
        if k.startswith(("accuracy", "counts/")):
            assert final[k] == pytest.approx(v), k


def make_wheel(path: Path) -> Path:
    """A stand-in for the evals wheel: the fixture registry under evals/registry/."""
    with zipfile.ZipFile(path, "w") as z:
        for f in (DATA / "registry").rglob("*"):
            if f.is_file():
                z.write(f, "evals/registry/" + f.relative_to(DATA / "registry").as_posix())
    return path


def test_fetched_registry_is_found_without_registry_path(tmp_path, capsys):
    assert eval_main(["dummy", "test-match", "--no-cache", "--no-progress"]) == 2
    assert "glassgpt eval fetch-registry" in capsys.readouterr().err
    assert eval_main(["fetch-registry", "--wheel", str(make_wheel(tmp_path / "evals-0-py3-none-any.whl"))]) == 0
    assert "found by default" in capsys.readouterr().out
    for ev in ("test-match", "logic-fact"):
        assert eval_main(["dummy", ev, "--no-cache", "--no-progress", "--max_samples", "2",
                          "--record_path", str(tmp_path / f"{ev}.jsonl")]) == 0
    assert eval_main(["list", "--json"]) == 0
    assert "logic-fact" in capsys.readouterr().out


@pytest.mark.slow
def test_readme_examples_after_a_real_fetch(tmp_path):
    """`glassgpt eval fetch-registry` from PyPI, then the README's examples by name only."""
    assert eval_main(["fetch-registry"]) == 0
    for ev in ("test-match", "logic-fact", "test-basic"):
        assert eval_main(["dummy", ev, "--no-cache", "--no-progress", "--max_samples", "3",
                          "--record_path", str(tmp_path / ev)]) == 0
