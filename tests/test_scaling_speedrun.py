"""The whole pipeline behind `glassgpt speedrun --preset tiny` (slow: a real ladder and target)."""

import json

import pytest

from glassgpt import cli


@pytest.mark.slow
def test_tiny_speedrun_end_to_end(tmp_path, cache_dir, capsys):
    out = tmp_path / "sr"
    args = ["speedrun", "--preset", "tiny", "--out", str(out), f"--data.cache_dir={cache_dir}", "--train.threads=1"]
    rc = cli.main(args)
    assert rc == 0
    text = capsys.readouterr().out
    assert "predicted" in text and "actual" in text and "compute: largest rung" in text
    r = json.loads((out / "report.json").read_text())
    assert set(r) >= {"target", "ladder", "prediction", "actual", "relative_error", "capability"}
    assert r["registered_before_target"]
    pred = json.loads((out / "prediction.json").read_text())
    assert pred["sha256"] and (out / "scaling.png").exists() and (out / "report.md").exists()
    # a second call resumes: nothing re-trains, the registered prediction is reused unchanged
    assert cli.main(args) == 0
    assert json.loads((out / "prediction.json").read_text())["sha256"] == pred["sha256"]
