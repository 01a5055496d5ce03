"""The pieces together: glassgpt's eval framework measuring glassgpt's own server over HTTP."""

import json

import pytest


from glassgpt.cli_evals import main as eval_main

from conftest import check_arith_record


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny model with a 512-token context, so the sample documents fit in one window."""
    from glassgpt import config
    from glassgpt.train.trainer import train

    root = tmp_path_factory.mktemp("ctx512")
    train(config.load("tiny", ["model.seq_len=512", "train.batch_size=2", "train.tokens=20000",
                               f"data.cache_dir={root / 'cache'}", "data.heldout=[]"]), root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def server(run_dir):
    from glassgpt.serve.api import create_app
    from glassgpt.serve.engine import Engine
    from glassgpt.serve.testing import ServerThread

    engine = Engine.from_checkpoint(run_dir, name="glassgpt-tiny")
    with ServerThread(create_app([engine], auth=False)) as srv:
        yield srv


def _final(record):
    lines = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    return next(line["final_report"] for line in lines if "final_report" in line), lines


def test_chat_eval_against_own_server(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "unused-no-auth")
    rec = tmp_path / "arith.jsonl"
    rc = eval_main(["glassgpt-tiny", "glassgpt-arith-2d", "--base-url", f"{server.url}/v1", "--max_samples", "4",
                    "--record_path", str(rec), "--no-cache", "--no-progress", "--threads", "2"])
    assert rc == 0
    report, lines = _final(rec)
    check_arith_record(lines, report["accuracy"])
    samples = [line for line in lines if line.get("type") == "sampling"]
    assert len(samples) == 4 and all("usage" in json.dumps(s) or s["data"].get("sampled") is not None for s in samples)
    assert not any(line.get("type") == "error" for line in lines)


def test_bits_per_byte_over_http_matches_local(server, run_dir, tmp_path, monkeypatch):
    """Loglikelihood through /v1/completions echo+logprobs equals the in-process number."""
    monkeypatch.setenv("OPENAI_API_KEY", "unused-no-auth")
    remote, local = tmp_path / "remote.jsonl", tmp_path / "local.jsonl"
    common = ["glassgpt-bpb-sample", "--no-cache", "--no-progress", "--threads", "1"]
    assert eval_main(["glassgpt-tiny"] + common + ["--base-url", f"{server.url}/v1", "--record_path", str(remote)]) == 0
    assert eval_main([f"local:{run_dir}"] + common + ["--record_path", str(local)]) == 0
    r, _ = _final(remote)
    loc, _ = _final(local)
    assert r["errors"] == 0 and r["bytes"] == loc["bytes"]
    assert r["bpb"] > 0 and r["bpb"] == pytest.approx(loc["bpb"], rel=1e-3)
