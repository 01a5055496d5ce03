"""`glassgpt keys / usage / serve / chat`: the CLI parses and calls; the chat loop."""

import io
import json
from pathlib import Path

import pytest

import glassgpt

from glassgpt.data.chat import DEFAULT_SYSTEM
from glassgpt.serve.chat import LocalBackend, read_message, run_chat
from glassgpt.serve.engine import Engine
from glassgpt.serve.store import Store
from glassgpt.serve.testing import tiny_checkpoint


def cli(argv):
    from glassgpt.cli import main

    return main(argv)


def test_keys_create_list_revoke_and_usage(tmp_path, capsys):
    db = str(tmp_path / "k.db")
    assert cli(["keys", "create", "--name", "alice", "--rpm", "10", "--db", db]) == 0
    out = capsys.readouterr().out
    key = out.splitlines()[0]
    assert key.startswith("sk-glass-")
    store = Store(db)
    rec = store.authenticate(f"Bearer {key}")
    assert rec.name == "alice" and rec.rpm == 10
    assert key not in (tmp_path / "k.db").read_bytes().decode("latin-1")  # only the hash is stored
    assert cli(["keys", "list", "--db", db]) == 0
    assert "alice" in capsys.readouterr().out
    store.record(rec.id, "m", "chat.completions", 100, 50, (0.002, 0.002))
    store.record(None, "m", "chat.completions", 10, 5, (0.002, 0.002))
    assert cli(["usage", "--db", db]) == 0
    out = capsys.readouterr().out
    assert rec.id in out and "(no auth)" in out and "0.000330" in out  # 165 tokens at $0.002/1K
    assert cli(["keys", "revoke", rec.id, "--db", db]) == 0
    assert cli(["keys", "revoke", rec.id, "--db", db]) == 2  # already revoked: one line, exit 2
    assert "already revoked" in capsys.readouterr().err
    assert cli(["keys", "revoke", "nope", "--db", db]) == 2


def test_serve_refuses_bad_setups(tmp_path, capsys):
    assert cli(["serve", "--checkpoint", str(tmp_path), "--no-auth", "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err
    bad = tmp_path / "run" / "checkpoints" / "step_0000001"
    bad.mkdir(parents=True)
    (bad / "meta.json").write_text("{not json")
    (bad / "model.safetensors").write_bytes(b"\0" * 16)
    assert cli(["serve", "--checkpoint", str(tmp_path / "run"), "--db", str(tmp_path / "s.db")]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "Traceback" not in err


def test_serve_refuses_a_header_timeout_that_is_not_positive(tmp_path, capsys):
    assert cli(["serve", "--checkpoint", str(tmp_path), "--header-timeout", "0"]) == 2
    err = capsys.readouterr().err
    assert "--header-timeout must be a positive number" in err and "Traceback" not in err


def test_serve_refuses_zero_threads(tmp_path, capsys):
    assert cli(["serve", "--checkpoint", str(tmp_path), "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "--threads must be at least 1" in err and "Traceback" not in err


def test_read_message_multiline():
    lines = iter(["first \\", "second", '"""', "a", "b", '"""'])
    assert read_message(lambda _: next(lines)) == "first \nsecond"
    assert read_message(lambda _: next(lines)) == "a\nb"
    assert read_message(lambda _: (_ for _ in ()).throw(EOFError())) is None


def test_chat_loop_local(tmp_path):
    eng = Engine.from_checkpoint(tiny_checkpoint(), name="tiny", device="cpu", max_batch=1)
    backend = LocalBackend(eng)
    save = tmp_path / "conv.json"
    script = iter(["hello", "/reset", "again \\", "more", f"/save {save}", "/quit"])
    out = io.StringIO()
    try:
        # no system prompt: the default one alone would fill the tiny model's 64-token context
        msgs = run_chat(backend, read=lambda _: next(script), out=out, temperature=0, max_tokens=5, system="")
    finally:
        eng.stop()
    text = out.getvalue()
    assert "conversation reset" in text and "saved 2 messages" in text
    saved = json.loads(save.read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]
    assert saved["messages"][0]["content"] == "again \nmore"
    assert msgs == saved["messages"]
    assert backend.usage["completion_tokens"] > 0


def test_auth_cache_is_bounded_under_wrong_keys(tmp_path):
    import pytest

    from glassgpt.serve.errors import AuthError
    from glassgpt.serve.store import Store

    store = Store(tmp_path / "s.db", cache_size=100)
    good, _ = store.create_key("ok")
    store.authenticate(f"Bearer {good}")
    for i in range(5000):
        with pytest.raises(AuthError):
            store.authenticate(f"Bearer sk-wrong-{i}")
        if i % 50 == 0:
            store.authenticate(f"Bearer {good}")  # a key in use stays cached (least recently used goes first)
    assert len(store._cache) <= 100
    assert store.authenticate(f"Bearer {good}").name == "ok"


def test_default_system_prompt_goes_to_chat_models_only_and_the_page_sends_the_same():
    eng = Engine.from_checkpoint(tiny_checkpoint(), name="tiny", device="cpu", max_batch=1)
    assert eng.stage == "base"
    try:
        msgs = run_chat(LocalBackend(eng), read=lambda _, s=iter(["hello", "/quit"]): next(s), out=io.StringIO(),
                        temperature=0, max_tokens=3)
        assert [m["role"] for m in msgs] == ["user", "assistant"]
        eng.stage = "sft"  # as a chat SFT run's engine reports it (Config.stage)
        msgs = run_chat(LocalBackend(eng), read=lambda _, s=iter(["/save /dev/null", "/quit"]): next(s),
                        out=io.StringIO(), temperature=0, max_tokens=3)
        assert msgs == [{"role": "system", "content": DEFAULT_SYSTEM}]
    finally:
        eng.stop()
    page = (Path(glassgpt.__file__).parent / "serve" / "web" / "app.js").read_text()
    assert f'const DEFAULT_SYSTEM = {json.dumps(DEFAULT_SYSTEM, ensure_ascii=False)};' in page


@pytest.mark.parametrize("flag,words", [("--max-token-rate", "--max-token-rate must be 0"),
                                        ("--refusal-delay", "--refusal-delay must be 0 or more")])
def test_serve_refuses_a_negative_pace_or_refusal_delay(tmp_path, capsys, flag, words):
    assert cli(["serve", "--checkpoint", str(tmp_path), flag, "-1"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_serve_gives_the_main_thread_one_torch_thread_before_any_torch_work(tmp_path, monkeypatch):
    """`glassgpt serve` keeps the main thread to one torch thread before the denormal flush runs
    torch there (Engine.own_threads: otherwise the engine thread's OpenMP regions wake slowly)."""
    import glassgpt.serve.api as api
    import glassgpt.train.dist as dist

    calls = []
    monkeypatch.setattr(Engine, "own_threads", staticmethod(lambda: calls.append("own_threads") or 2))
    monkeypatch.setattr(dist, "flush_denormals", lambda: calls.append("flush"))
    monkeypatch.setattr(api, "serve", lambda *a, **k: calls.append("serve"))
    assert cli(["serve", "--checkpoint", str(tmp_path)]) == 0
    assert calls == ["own_threads", "flush", "serve"]
