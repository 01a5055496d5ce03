"""The main job behind `glassgpt speedrun`: the tiny ladder → target pipeline (slow), and the chat
stages after a base (SFT, RL, evals, the report card)."""

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


@pytest.mark.slow
def test_tiny_chat_speedrun_goes_on_to_sft_rl_and_one_report_card(tmp_path, cache_dir, capsys):
    """`--chat` after the base: chat SFT (toy conversations), the reward model and GRPO with rule-based
    rewards, the vision stage, their evals, and one report card with every stage; a rerun trains nothing again."""
    out = tmp_path / "sr"
    args = ["speedrun", "--preset", "tiny", "--chat", "--out", str(out), f"--data.cache_dir={cache_dir}",
            "--train.threads=1"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "SFT chat eval:" in text and "alignment evals, grpo:" in text and "alignment evals, vision:" in text
    assert "image chat, held-out phrasings: digits" in text
    r = json.loads((out / "report.json").read_text())
    st = r["stages"]
    assert {"base", "sft", "rm", "grpo", "vision", "alignment_evals", "wall_seconds"} <= set(st)
    assert st["sft"]["steps"] > 0 and st["grpo"]["steps"] > 0 and st["base"]["run"] == str(out / "target")
    assert set(st["alignment_evals"]) == {"sft", "grpo", "vision"} and "f1" in st["alignment_evals"]["grpo"]
    assert set(st["wall_seconds"]) == {"data", "ladder", "base", "sft", "align", "vision", "total"}
    md = (out / "report.md").read_text()
    assert "# Predictable scaling: verification" in md and "# The assistant: base → SFT → RL → vision" in md
    assert json.loads((out / "speedrun.json").read_text())["final"] == st["vision"]["run"]  # what serve loads
    stamp = (out / "vision" / "report.json").stat().st_mtime
    assert cli.main(args) == 0
    assert (out / "vision" / "report.json").stat().st_mtime == stamp  # finished stages are kept
    again = json.loads((out / "report.json").read_text())["stages"]["wall_seconds"]
    assert again["ladder"] >= st["wall_seconds"]["ladder"] and again["total"] > st["wall_seconds"]["total"]


def test_chat_stages_after_a_tiny_base_write_every_stage_into_the_report_card(tmp_path, cache_dir, monkeypatch):
    """The speedrun's steps 6-8 on their own (the ladder is the slow test's): SFT from the base, RL, the
    vision stage from the RL model, evals, and report.json / report.md extended with every stage's numbers."""
    from glassgpt.align import pipeline
    from glassgpt.scaling import speedrun

    ov = [f"data.cache_dir={cache_dir}", "train.threads=1"]
    base = tmp_path / "target"
    pipeline.run_stage("tiny", ov + pipeline.TINY + pipeline.TINY_BASE, base, None)
    report = {"target": {"params": 1, "tokens": 1, "flops": 1.0}}
    monkeypatch.setattr(speedrun.predict_mod, "markdown", lambda r: "# verification\n")  # no ladder to verify here
    laps = []
    sft_dir, results = speedrun.chat_stages("tiny", ov + ["train.tokens=99"], tmp_path, base, laps.append, 8)
    assert laps == ["sft", "align", "vision"] and sft_dir == tmp_path / "sft"
    speedrun.report_card(tmp_path, report, base, sft_dir, results, {"data": 11.0, "ladder": 22.0, "sft": 40.5})
    st = report["stages"]
    assert st["base"]["run"] == str(base) and st["sft"]["steps"] > 0 and st["grpo"]["steps"] > 0
    assert st["rm"]["pair_accuracy"] and set(st["alignment_evals"]) == {"sft", "grpo", "vision"}
    assert "f1" in st["alignment_evals"]["grpo"] and "f1" in st["alignment_evals"]["vision"]
    # the vision stage starts from the RL model and is asked the registry's image-chat evals of its mix
    vis = json.loads((tmp_path / "vision" / "report.json").read_text())
    assert vis["lineage"]["parent"] == results["grpo"][0]["run"] and vis["vision"]["chat"]
    img = st["vision"]["image_chat"]
    assert set(img) == {f"{t}/{lg}/{w}" for t in ("digits", "shapes", "text", "charts", "noimage")
                        for lg in ("en", "zh") for w in ("train", "heldout")}
    assert all(0.0 <= v <= 1.0 for v in img.values())
    assert st["wall_seconds"] == {"data": 11.0, "ladder": 22.0, "sft": 40.5, "total": 73.5}
    assert json.loads((tmp_path / "report.json").read_text())["stages"]["grpo"] == st["grpo"]
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# verification") and "| sft |" in md and "RL+RBR (GRPO)" in md and "| vision |" in md
    assert "| digits | " in md and "Alignment evals before the vision stage (grpo)" in md
    # train.tokens=99 was the base's override: the SFT stage kept its own budget
    assert st["sft"]["tokens"] != 99


def test_a_speedrun_directory_resolves_to_the_model_it_ends_with(tmp_path):
    """`glassgpt serve --checkpoint runs/speedrun`: the aligned assistant of a chat speedrun (speedrun.json's
    `final`), the target of a speedrun written before that key."""
    from glassgpt.errors import CheckpointError
    from glassgpt.train import checkpoint

    def fake_checkpoint(run):
        ck = run / "checkpoints" / "step_0000001"
        ck.mkdir(parents=True)
        (ck / "meta.json").write_text("{}")
        (ck / "model.safetensors").write_bytes(b"")
        return ck

    target, final = fake_checkpoint(tmp_path / "target"), fake_checkpoint(tmp_path / "align" / "grpo_s0")
    (tmp_path / "speedrun.json").write_text(json.dumps({"preset": "cpu"}))
    assert checkpoint.resolve(tmp_path) == target
    (tmp_path / "speedrun.json").write_text(json.dumps({"preset": "chat", "final": str(tmp_path / "align" / "grpo_s0")}))
    assert checkpoint.resolve(tmp_path) == final
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        checkpoint.resolve(tmp_path / "align")
