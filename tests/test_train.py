import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from glassgpt import cli
from glassgpt.errors import CheckpointError, TrainingError
from glassgpt.train import checkpoint
from glassgpt.serve.engine import Engine, SamplingParams
from glassgpt.train.trainer import train

from conftest import tiny_overrides


def _losses(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in records if "loss" in r]


def test_tiny_run_learns_and_writes_run_dir(tiny_cfg, tmp_path):
    report = train(tiny_cfg(train__tokens=4 * 32 * 40, train__eval_every=40), tmp_path / "run")
    run = tmp_path / "run"
    for f in ("config.yaml", "metrics.jsonl", "report.json", "tokenizer.json", "manifest.json", "checkpoints/latest"):
        assert (run / f).exists(), f
    losses = _losses(run)
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert set(report["heldout"]) == {"val", "humaneval"}, report["heldout"]
    assert all(v["bpb"] > 0 for v in report["heldout"].values())
    assert report["flops"] == report["tokens"] * report["flops_per_token"]
    model, tok, cfg = checkpoint.load_model(run)
    r = Engine(model, tok, device="cpu", max_batch=1).generate(tok.encode("def "), SamplingParams(max_tokens=5, temperature=0.0))
    assert 1 <= len(r["choices"][0]["tokens"]) <= 5 and r["choices"][0]["finish_reason"] in ("length", "stop")


@pytest.mark.parametrize("optimizer,schedule", [("adamw", "cosine"), ("muon", "wsd")])
def test_resume_after_sigkill_gives_the_same_curve(tiny_cfg, tmp_path, corpus_dir, cache_dir, optimizer, schedule):
    extra = dict(train__optimizer=optimizer, train__schedule=schedule, train__grad_accum=2)
    train(tiny_cfg(**extra), tmp_path / "a")  # uninterrupted reference
    args = [sys.executable, "-m", "glassgpt.cli", "train", "--preset", "tiny", "--out", str(tmp_path / "b")]
    args += ["--" + o for o in tiny_overrides(corpus_dir, cache_dir, **extra)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "b" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill mid-run: after the step-4 checkpoint, before the end
        if metrics.exists() and len(_losses(tmp_path / "b")) >= 6:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(_losses(tmp_path / "b")) < 12, "the run finished before it could be killed"
    train(tiny_cfg(**extra), tmp_path / "b", resume=True)
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")


def test_nan_loss_stops_with_last_good_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    from glassgpt.model import gpt

    real = gpt.GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        out = real(self, idx, targets, **kw)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] > 6:
                return out * float("nan")
        return out

    monkeypatch.setattr(gpt.GPT, "forward", poisoned)
    with pytest.raises(TrainingError, match="loss became nan at step 7.*step_0000004"):
        train(tiny_cfg(), tmp_path / "run")
    assert checkpoint.latest(tmp_path / "run").name == "step_0000004"
    checkpoint.read_weights(checkpoint.latest(tmp_path / "run"))  # intact


def test_checkpoint_from_another_config_refused(tiny_cfg, tmp_path):
    train(tiny_cfg(train__tokens=4 * 32 * 4), tmp_path / "run")
    with pytest.raises(CheckpointError, match="another model config.*depth"):
        train(tiny_cfg(model__depth=3), tmp_path / "run", resume=True)
    with pytest.raises(CheckpointError, match="pass --resume"):
        train(tiny_cfg(), tmp_path / "run")


def test_full_disk_keeps_previous_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    train(tiny_cfg(train__tokens=4 * 32 * 4), tmp_path / "run")
    import errno

    import glassgpt.train.checkpoint as ck

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(CheckpointError, match="No space left.*step_0000004 is intact"):
        ck.save(tmp_path / "run", 8, {}, [], {})
    assert ck.latest(tmp_path / "run").name == "step_0000004"
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp*"))


def test_corrupt_checkpoint_is_a_clear_error(tiny_cfg, tmp_path):
    train(tiny_cfg(train__tokens=4 * 32 * 4), tmp_path / "run")
    ck = checkpoint.latest(tmp_path / "run")
    (ck / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load_model(tmp_path / "run")


def test_load_model_never_opens_optimizer_state(tiny_cfg, tmp_path):
    """Serving and evals read weights only: a corrupt (or hostile) optim.pt is never unpickled."""
    train(tiny_cfg(train__tokens=4 * 32 * 4), tmp_path / "run")
    (checkpoint.latest(tmp_path / "run") / "optim.pt").write_bytes(b"not a pickle")
    model, tok, cfg = checkpoint.load_model(tmp_path / "run")
    assert model(torch.tensor([tok.encode("def f")])).shape[-1] == tok.vocab_size
    with pytest.raises(CheckpointError, match="optim.pt is unreadable"):  # resuming does need it
        train(tiny_cfg(), tmp_path / "run", resume=True)


def _stage_parent(tiny_cfg, tmp_path):
    train(tiny_cfg(train__tokens=4 * 32 * 4), tmp_path / "base")
    return tmp_path / "base"


def test_stage_starts_from_weights_with_lineage(tiny_cfg, tmp_path, corpus_dir):
    """A new stage: the parent's weights and tokenizer, a fresh optimizer and schedule from step 0,
    changes that keep every weight's shape (context, RoPE, data, tokens), lineage in report.json."""
    base = _stage_parent(tiny_cfg, tmp_path)
    ck = checkpoint.latest(base)
    fresh = json.loads((base / "report.json").read_text())
    assert fresh["lineage"] is None
    cfg = tiny_cfg(model__seq_len=64, model__rope_base=20000.0, model__rope_scale=2.0, train__tokens=4 * 64 * 3,
                   data__vocab_size=300, data__paths=f'["{corpus_dir / "textwrap.py"}"]')
    rep = train(cfg, tmp_path / "long", init_from=base)
    assert rep["steps"] == 3 and len(_losses(tmp_path / "long")) == 3  # from step 0, its own schedule
    lin = rep["lineage"]
    assert lin["parent"] == str(base) and lin["step"] == 4 and lin["kind"] == "init"
    assert lin["parent_sha256"] == checkpoint.weights_sha256(ck)
    # the parent's tokenizer, whatever this config's data.vocab_size would have trained
    assert (tmp_path / "long" / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    assert rep["config"]["model"]["vocab_size"] == fresh["config"]["model"]["vocab_size"]
    # the first step starts from the parent's weights: its loss is the parent's, not a fresh model's
    scratch = train(tiny_cfg(model__seq_len=64, train__tokens=4 * 64 * 3, data__paths=f'["{corpus_dir / "textwrap.py"}"]'),
                    tmp_path / "scratch")
    assert _losses(tmp_path / "long")[0] < _losses(tmp_path / "scratch")[0] - 0.3, (rep, scratch)
    # resuming a stage keeps its lineage (it is in the checkpoint)
    meta = json.loads((checkpoint.latest(tmp_path / "long") / "meta.json").read_text())
    assert meta["lineage"] == lin


def test_a_stage_without_the_parents_smear_is_refused_before_writing(tiny_cfg, tmp_path):
    train(tiny_cfg(model__smear="true", train__tokens=4 * 32), tmp_path / "base")
    with pytest.raises(CheckpointError, match="model.smear: parent run has True, this config False"):
        train(tiny_cfg(train__tokens=4 * 32), tmp_path / "plain", init_from=tmp_path / "base")
    assert not (tmp_path / "plain").exists()
    with pytest.raises(CheckpointError, match="model.smear_tokens: parent run has 1, this config 2"):
        train(tiny_cfg(model__smear="true", model__smear_tokens="2", train__tokens=4 * 32), tmp_path / "two",
              init_from=tmp_path / "base")


def test_stage_bad_parents_write_nothing(tiny_cfg, tmp_path):
    base = _stage_parent(tiny_cfg, tmp_path)
    out = tmp_path / "stage"
    with pytest.raises(CheckpointError, match="model.depth: parent run has 2, this config 3"):
        train(tiny_cfg(model__depth=3), out, init_from=base)
    assert not out.exists()
    with pytest.raises(CheckpointError, match=f"init_from {tmp_path / 'nope'}: no such"):
        train(tiny_cfg(), out, init_from=tmp_path / "nope")
    assert not out.exists()
    (checkpoint.latest(base) / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="step_0000004 is corrupt") as e:
        train(tiny_cfg(), out, init_from=base)
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_stage_vision_keys_that_change_shapes_are_refused(tiny_cfg, tmp_path):
    from glassgpt.train.trainer import read_parent

    base = _stage_parent(tiny_cfg, tmp_path)
    meta = json.loads((checkpoint.latest(base) / "meta.json").read_text())
    import dataclasses

    from glassgpt.config import VisionConfig

    meta["config"]["vision"] = dataclasses.asdict(VisionConfig(enabled=True, width=64, head_dim=16))
    (checkpoint.latest(base) / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="vision.width: parent run has 64, this config 32"):
        read_parent(base, tiny_cfg(vision__enabled="true", vision__width=32, vision__head_dim=16))


def test_cli_errors_are_one_line_exit_2(capsys, tmp_path):
    assert cli.main(["train", "--preset", "tiny", "--out", str(tmp_path / "r"), "--model.dept=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'model.depth'" in err
    assert cli.main(["train", "--preset", "tiny", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "missing.txt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_muon_stacks_same_shaped_matrices_like_one_by_one():
    from glassgpt.train.optim import Muon, zeropower_newton_schulz

    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 4), (8, 4), (4, 8), (6, 2, 3, 3), (8, 4)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    before = [p.detach().clone() for p in params]
    opt = Muon(params, lr=0.1, momentum=0.9, weight_decay=0.01)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    for p, p0, g in zip(params, before, grads):
        m = (g * 0.1).lerp(g, 0.9).flatten(1)  # momentum buffer after one step, then the Nesterov mix
        u = zeropower_newton_schulz(m) * max(1.0, m.size(0) / m.size(1)) ** 0.5
        want = p0 * (1 - 0.1 * 0.01) - 0.1 * u.view_as(p0)
        assert torch.allclose(p.detach(), want, atol=1e-6)
        s = torch.linalg.svdvals(u / max(1.0, m.size(0) / m.size(1)) ** 0.5)
        assert s.min() > 0.5 and s.max() < 1.5  # roughly orthogonal: singular values near 1


def test_adam_lr_mult_scales_only_the_adamw_rates():
    """train.adam_lr_mult (for learning-rate sweeps: bench/lr_transfer.py) multiplies the derived
    embedding and head rates, leaves Muon's alone, and must be positive."""
    from glassgpt import config
    from glassgpt.errors import ConfigError
    from glassgpt.model.gpt import GPT
    from glassgpt.train import optim

    cfg = config.load("tiny")
    cfg.model.vocab_size = cfg.data.vocab_size
    model = GPT(cfg.model)
    adam1, muon1 = optim.param_groups(model, cfg)
    cfg.train.adam_lr_mult = 2.0
    adam2, muon2 = optim.param_groups(model, cfg)
    assert [g["lr"] for g in adam2] == pytest.approx([2 * g["lr"] for g in adam1])
    assert [g["lr"] for g in muon2] == [g["lr"] for g in muon1]
    with pytest.raises(ConfigError, match="adam_lr_mult must be positive"):
        config.load("tiny", ["train.adam_lr_mult=0"])


def test_copy_rows_are_random_sequences_shown_twice_scored_on_the_second(tiny_cfg, tmp_path):
    """train.copy_share: the batch's last rows become <|bos|> + random sequences each shown twice, loss
    on the second showings only; the text rows are untouched; the same index gives the same rows."""
    from glassgpt.data.shards import Corpus, prepare
    from glassgpt.train.sources import TextSource

    class D:
        rank, world, device = 0, 1, "cpu"

    plain_cfg, cfg = tiny_cfg(), tiny_cfg(train__copy_share=0.5)  # 2 of the 4 rows
    corpus = Corpus(prepare(cfg.data))
    plain, drilled = TextSource(plain_cfg, corpus, D(), None), TextSource(cfg, corpus, D(), None)
    specials = set(corpus.tokenizer.special.values())
    pairs = 0
    for index in range(3):
        a, b = plain.rows(index), drilled.rows(index)
        B, n = b.x.shape
        assert torch.equal(a.x[: B - 2], b.x[: B - 2]) and torch.equal(a.y[: B - 2], b.y[: B - 2])
        for r in (B - 2, B - 1):
            x, y = b.x[r], b.y[r]
            assert int(x[0]) == corpus.tokenizer.bos_id and not specials & set(x[1:].tolist())
            row, scored = torch.cat([x, y[-1:]]), torch.cat([torch.tensor([False]), y != -1])
            assert torch.equal(y[y != -1], row[1:][y != -1])  # targets are the next tokens
            i = 1
            while i < len(row):  # a run of unscored tokens (first showing), then as many scored: the copy
                p = 0
                while i + p < len(row) and not scored[i + p]:
                    p += 1
                second = row[i + p:i + 2 * p]
                assert (8 <= p or i + p == len(row)) and bool(scored[i + p:i + 2 * p].all()) and torch.equal(second, row[i:i + len(second)])
                i, pairs = i + 2 * p, pairs + 1
        assert torch.equal(drilled.rows(index).x, b.x)  # deterministic (a resumed run sees the same rows)
    assert pairs >= 6 and not torch.equal(drilled.rows(0).x[-1], drilled.rows(1).x[-1])
    # a share below one row a batch: whole rows, rounded over the batches (one in every eighth here)
    eighth = TextSource(tiny_cfg(train__copy_share=1 / 32), corpus, D(), None)
    drilled_batches = [i for i in range(16) if int(eighth.rows(i).x[-1, 0]) == corpus.tokenizer.bos_id
                       and bool((eighth.rows(i).y[-1] == -1).any())]
    assert drilled_batches == [7, 15]
    # the identity of runs without it is unchanged; a bad share is one line
    assert "copy_share" not in plain_cfg.to_dict()["train"] and cfg.to_dict()["train"]["copy_share"] == 0.5
    from glassgpt.errors import ConfigError

    for bad in (-0.1, 1):
        with pytest.raises(ConfigError, match="train.copy_share must be at least 0 and below 1, not"):
            tiny_cfg(train__copy_share=bad)
