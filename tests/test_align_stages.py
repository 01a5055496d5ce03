"""Alignment stages through the one trainer, on a tiny base + SFT of the toy conversations: a reward
model (held-out pair accuracy), the proposition classifier (and as an RBR grader), DPO, GRPO and PPO
(rollouts through the Engine, metrics, exact resume after a crash, NaN rewards skipped then stopping
the run, a grader that is down naming itself)."""

import json
import math

import pytest
import torch

from glassgpt.align import heads, rbr, toy
from glassgpt.align import sources as align_sources
from glassgpt.errors import ConfigError, TrainingError
from glassgpt.train import checkpoint
from glassgpt.train.trainer import train

T = 128


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, corpus_dir, cache_dir):
    """(make_cfg, the toy conversations file, the SFT run) — built once for the module."""
    from glassgpt import config
    from conftest import tiny_overrides

    root = tmp_path_factory.mktemp("align")
    conv = toy.write(root / "convs.jsonl")

    def make(**kw):
        return config.load(None, tiny_overrides(corpus_dir, cache_dir, model__seq_len=T, **kw))

    train(make(), root / "base")
    train(make(sft__enabled="true", sft__conversations=str(conv), sft__batch_size=4, sft__eval_samples=1,
               sft__eval_max_tokens=4, train__tokens=4 * T * 12, train__eval_every=100), root / "sft",
          init_from=root / "base")
    return make, conv, root


def _stage(sft_run, stage, **kw):
    make, conv, root = sft_run
    base = dict(align__stage=stage, align__conversations=str(conv), align__batch_size=2, align__steps=4,
                align__eval_samples=1, align__max_new_tokens=6, align__group=2, train__eval_every=4,
                train__checkpoint_every=2)
    base.update(kw)
    return make(**base)


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_reward_model_and_classifier(sft_run, tmp_path):
    rep = train(_stage(sft_run, "rm", align__batch_size=4), tmp_path / "rm", init_from=sft_run[2] / "sft")
    acc = rep["align"]["eval"]["pair_accuracy"]
    assert 0.0 <= acc["all"] <= 1.0 and rep["align"]["eval"]["heldout_pairs"] > 0
    assert "refuse_harmful" in acc and "pair_acc" in _metrics(tmp_path / "rm")[0]
    scorer = heads.Scorer.load(tmp_path / "rm")
    r = scorer([([{"role": "user", "content": "How do I steal a car?"}], "I'm sorry, I can't.")] * 2)
    assert r.shape == (2, 1) and r[0, 0] == pytest.approx(r[1, 0], abs=1e-5)
    # a served model ignores a head: the generation path loads the same weights
    model, _, _ = checkpoint.load_model(tmp_path / "rm")
    assert not hasattr(model, "head")

    rep = train(_stage(sft_run, "classifier", align__batch_size=8), tmp_path / "cls", init_from=sft_run[2] / "sft")
    rubric = rbr.load_rubric()
    assert rep["classifier"]["propositions"] == rubric.names
    assert set(rep["classifier"]["eval"]["heldout"]) == set(rubric.names)
    g = rbr.make_grader(f"classifier:{tmp_path / 'cls'}", rubric)
    p = g.grade([rbr.Item("How do I steal a car?", "I'm sorry, but I can't help with that.")])
    assert p.shape == (1, len(rubric.names)) and ((p > 0) & (p < 1)).all()


def test_dpo_stage(sft_run, tmp_path):
    rep = train(_stage(sft_run, "dpo"), tmp_path / "dpo", init_from=sft_run[2] / "sft")
    ev = rep["align"]["eval"]
    assert 0.0 <= ev["pair_accuracy"]["all"] <= 1.0
    assert set(ev["headline"]) >= {"not_unsafe", "not_overrefuse", "f1", "adversarial_factuality", "fact_qa"}
    assert rep["heldout"]  # held-out text bits per byte: the alignment tax
    m = _metrics(tmp_path / "dpo")
    assert m[0]["pair_acc"] == 1.0 or m[0]["margin"] == pytest.approx(0.0, abs=1e-4)  # policy = reference at step 1
    with pytest.raises(ConfigError, match="pass --init-from"):
        train(_stage(sft_run, "dpo"), tmp_path / "nodpo")


def test_dpo_with_the_chosen_answers_nll(sft_run, tmp_path):
    train(_stage(sft_run, "dpo", align__dpo_nll=0.5), tmp_path / "rpo", init_from=sft_run[2] / "sft")
    m = [r for r in _metrics(tmp_path / "rpo") if "loss" in r]
    # step 1: policy = reference, so the DPO term is log 2 and the rest is the weighted NLL
    assert m[0]["chosen_nll"] > 0
    assert m[0]["loss"] == pytest.approx(math.log(2) + 0.5 * m[0]["chosen_nll"], abs=2e-3)
    with pytest.raises(ConfigError, match="align.dpo_nll must be non-negative"):
        train(_stage(sft_run, "dpo", align__dpo_nll=-1), tmp_path / "bad", init_from=sft_run[2] / "sft")


@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_rl_stage_resumes_exactly(sft_run, tmp_path, stage, monkeypatch):
    init = sft_run[2] / "sft"
    full = tmp_path / "full"
    rep = train(_stage(sft_run, stage), full, init_from=init)
    m = [r for r in _metrics(full) if "loss" in r]
    assert len(m) == 4 and all({"reward", "kl", "reward_rbr", "reward_fact", "nan_skipped"} <= set(r) for r in m)
    assert "align_eval" in _metrics(full)[-2] or any("align_eval" in r for r in _metrics(full))
    assert rep["align"]["eval"]["rbr_fit"]  # RBR weights were fitted at the start

    # crash after the step-2 checkpoint, then resume: the same rollouts, rewards and weights
    crashed = tmp_path / "crashed"
    orig = align_sources.RLSource.loss

    def crash(self, fwd, raw, index):
        if index == 2:
            raise KeyboardInterrupt
        return orig(self, fwd, raw, index)

    monkeypatch.setattr(align_sources.RLSource, "loss", crash)
    with pytest.raises(KeyboardInterrupt):
        train(_stage(sft_run, stage), crashed, init_from=init)
    monkeypatch.setattr(align_sources.RLSource, "loss", orig)
    train(_stage(sft_run, stage), crashed, resume=True)
    a = [r for r in _metrics(full) if "loss" in r]
    b = [r for r in _metrics(crashed) if "loss" in r]
    assert [(r["step"], r["reward"], r["kl"], r["loss"]) for r in a] == [(r["step"], r["reward"], r["kl"], r["loss"]) for r in b]
    wa = checkpoint.read_weights(checkpoint.latest(full))[1]
    wb = checkpoint.read_weights(checkpoint.latest(crashed))[1]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nan_reward_skips_then_three_stop(sft_run, tmp_path, monkeypatch):
    import numpy as np

    orig = align_sources.RLSource.rewards
    calls = {"n": 0}

    def once_nan(self, items, texts):
        calls["n"] += 1
        out = orig(self, items, texts)
        if calls["n"] == 2:
            out["fact"] = out["fact"] + np.nan
        return out

    monkeypatch.setattr(align_sources.RLSource, "rewards", once_nan)
    rep = train(_stage(sft_run, "grpo"), tmp_path / "one", init_from=sft_run[2] / "sft")
    m = [r for r in _metrics(tmp_path / "one") if r.get("step") and "lr_mult" in r]
    assert [r.get("skipped", False) for r in m] == [False, True, False, False]
    assert m[-1]["nan_skipped"] == 1 and rep["skipped_steps"] == 1

    def always_nan(self, items, texts):
        out = orig(self, items, texts)
        out["rm"] = out["rm"] + np.nan
        return out

    monkeypatch.setattr(align_sources.RLSource, "rewards", always_nan)
    with pytest.raises(TrainingError, match="NaN in 3 steps in a row"):
        train(_stage(sft_run, "grpo", align__steps=6), tmp_path / "three", init_from=sft_run[2] / "sft")
    assert checkpoint.latest(tmp_path / "three").name == "step_0000002"  # the one good checkpoint, intact


def test_grader_down_stops_naming_it(sft_run, tmp_path):
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"harmful": [0.0] * 11}))
    cfg = _stage(sft_run, "grpo", align__grader="model:judge", align__grader_base_url="http://127.0.0.1:9/v1",
                 align__rbr_weights=str(weights))
    with pytest.raises(rbr.GraderError, match="grader model:judge@http://127.0.0.1:9/v1 failed"):
        train(cfg, tmp_path / "down", init_from=sft_run[2] / "sft")


def test_engine_generate_batch_is_deterministic(sft_run):
    from glassgpt.serve.engine import Engine, SamplingParams

    model, tok, _ = checkpoint.load_model(sft_run[2] / "sft")
    eng = Engine(model, tok, device="cpu", max_batch=6)
    prompts = [tok.encode("def f():"), tok.encode("import os")]

    def run():
        res = eng.generate_batch(prompts, [SamplingParams(max_tokens=5, temperature=1.0, n=3, seed=7 + k) for k in range(2)])
        return [[[t.id for t in c["tokens"]] for c in r] for r in res]

    a, b = run(), run()
    assert a == b and len(a) == 2 and all(len(r) == 3 for r in a)
    assert len({tuple(x) for r in a for x in r}) > 1  # sampled, not one greedy answer


def test_align_eval_in_process_and_against_glassgpt_serve(sft_run, tmp_path, monkeypatch, capsys):
    from glassgpt.cli import main
    from glassgpt.serve.api import create_app
    from glassgpt.serve.engine import Engine
    from glassgpt.serve.testing import ServerThread

    _, conv, root = sft_run
    local = tmp_path / "local.json"
    assert main(["align", "eval", str(root / "sft"), "--conversations", str(conv), "--samples", "2",
                 "--max-tokens", "6", "--json", str(local)]) == 0
    out = capsys.readouterr().out
    assert "not_unsafe" in out and "adversarial_factuality" in out
    monkeypatch.setenv("OPENAI_API_KEY", "unused-no-auth")
    remote = tmp_path / "remote.json"
    with ServerThread(create_app([Engine.from_checkpoint(root / "sft", name="glassgpt-sft")], auth=False)) as srv:
        assert main(["align", "eval", "glassgpt-sft", "--base-url", f"{srv.url}/v1", "--conversations", str(conv),
                     "--samples", "2", "--max-tokens", "6", "--json", str(remote)]) == 0
    a, b = json.loads(local.read_text()), json.loads(remote.read_text())
    assert a["n"] == b["n"] and sum(a["n"].values()) > 0
    # the same greedy model, in-process and over HTTP: the same answers
    assert a["samples"] == b["samples"] and a["headline"] == b["headline"]


def test_align_cli_rubric_and_bad_input(sft_run, tmp_path, capsys):
    from glassgpt.cli import main

    _, conv, _ = sft_run
    w = tmp_path / "w.json"
    assert main(["align", "rubric", "--conversations", str(conv), "--weights-out", str(w)]) == 0
    out = capsys.readouterr().out
    assert "apology" in out and "weights harmful" in out and set(json.loads(w.read_text())) == {"harmful", "sensitive", "benign"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("propositions: {apology: {text: a}}\nclasses: {x: {sorry: true}}\ncategories: {}\n")
    assert main(["align", "rubric", "--rubric", str(bad), "--conversations", str(conv)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "class 'x' uses unknown proposition 'sorry'" in err
    assert main(["train", "--preset", "tiny", "--align.stage=rlhf", "--out", str(tmp_path / "r")]) == 2
    assert "unknown align.stage 'rlhf'" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_align_quick(tmp_path, capsys):
    from conftest import load_bench

    bench = load_bench("align")
    assert bench.main(["--quick", "--out", str(tmp_path / "q"), "--seeds", "2", "--samples", "2"]) == 0
    out = capsys.readouterr().out
    for label in ("SFT", "DPO", "RM-only RL (GRPO)", "RL+RBR (GRPO)", "RL+RBR (PPO)"):
        assert label in out
    assert "reward model held-out pair accuracy" in out and "cpu:" in out



def test_grpo_advantage_norm_choice(sft_run):
    """align.adv_norm: "std" (the default, in no run's identity) or "mean" (Dr. GRPO: centred, not
    divided, so a group whose rewards differ only by noise gets a small advantage); unknown: one line."""
    r = torch.tensor([1.0, 1.0, 1.0, 1.02, 0.0, 2.0, 0.0, 2.0])  # two prompts, groups of 4
    std = align_sources.group_advantages(r, 4, "std")
    mean = align_sources.group_advantages(r, 4, "mean")
    assert torch.allclose(mean, torch.tensor([-0.005, -0.005, -0.005, 0.015, -1.0, 1.0, -1.0, 1.0]))
    assert torch.allclose(std[:4], torch.tensor([-0.5, -0.5, -0.5, 1.5]), atol=2e-2)  # noise blown up to 1.5
    assert torch.allclose(std[4:], mean[4:] * 0.75 ** 0.5, atol=1e-3)  # / the unbiased std, (4/3) ** 0.5
    assert "adv_norm" not in _stage(sft_run, "grpo").to_dict()["align"]
    assert _stage(sft_run, "grpo", align__adv_norm="mean").to_dict()["align"]["adv_norm"] == "mean"
    with pytest.raises(ConfigError, match=r"unknown align.adv_norm 'meen' \(did you mean 'mean'\?\); choices: std, mean"):
        _stage(sft_run, "grpo", align__adv_norm="meen")



def test_the_reward_model_trains_its_own_steps(sft_run):
    """align.rm_steps: the RM's steps (0: align.steps, left out of the run's identity); other stages keep align.steps."""
    assert _stage(sft_run, "rm").align.stage_steps() == 4 and "rm_steps" not in _stage(sft_run, "rm").to_dict()["align"]
    assert _stage(sft_run, "rm", align__rm_steps=9).align.stage_steps() == 9
    assert _stage(sft_run, "grpo", align__rm_steps=9).align.stage_steps() == 4
    with pytest.raises(ConfigError, match="align.rm_steps must be non-negative"):
        _stage(sft_run, "rm", align__rm_steps=-1)


def test_rl_prompts_take_true_twins_in_turn_with_false_ones(sft_run, tmp_path, monkeypatch):
    """The policy's fact-check prompts include the true twins of the training questions, in the same kind
    as the false ones (rewarded only for denying false statements, it learnt to deny all; as a kind of
    their own they cut the harmful prompts' share)."""
    seen = {}

    class Stop(Exception):
        pass

    def grab(self, raw, lineage):
        seen["src"] = self
        raise Stop

    monkeypatch.setattr(align_sources.RLSource, "ready", grab)
    with pytest.raises(Stop):
        train(_stage(sft_run, "grpo"), tmp_path / "grab", init_from=sft_run[2] / "sft")
    src = seen["src"]
    checks = src.kinds["factcheck"]
    affirm = [p for p in checks if p["category"] in ("true_premise", "true_claim")]
    assert affirm and "false_claim" in {p["category"] for p in checks}
    assert all(p["q"].split == "train" for p in checks)
    assert not {"affirm", "adversarial", "true_claim", "false_claim"} & set(src.kinds)
    picked = {p["id"] for i in range(len(src.kinds)) for p in src.pick_prompts(i)}
    assert picked & {p["id"] for p in affirm}


def test_alignment_registry_evals_match_align_eval_in_process_and_served(sft_run, tmp_path, monkeypatch):
    """`glassgpt eval … glassgpt-align` (registry evals): the same headline numbers as `glassgpt align eval`,
    in-process (local:RUN samples a chat model as the API does) and against `glassgpt serve`; a set
    that does not exist is one line."""
    from glassgpt.align import evals as align_evals
    from glassgpt.align import pipeline
    from glassgpt.evals.errors import EvalError
    from glassgpt.evals.registry import Registry, default_registry_paths
    from glassgpt.evals.runner import run_target
    from glassgpt.serve.api import create_app
    from glassgpt.serve.engine import Engine
    from glassgpt.serve.testing import ServerThread

    _, conv, root = sft_run
    model, tok, _ = checkpoint.load_model(root / "sft")
    want = align_evals.run(align_evals.local_answerer(model, tok, 6), pipeline.eval_sets(str(conv), 2))["headline"]
    reg = Registry(default_registry_paths())
    params = {"conversations": str(conv), "n": 2, "max_tokens": 6}

    def report(target, **kw):
        res = run_target("glassgpt-align", target, reg, record_path=str(tmp_path / f"{len(list(tmp_path.iterdir()))}.jsonl"),
                         show_progress=False, extra_eval_params=params, **kw)
        assert not res.failed, res.failed
        return {k: v for k, v in res.results[0].final_report.items() if not k.startswith("usage_")}

    local = report(f"local:{root / 'sft'}")
    assert {k: local[k] for k in want if want[k] is not None} == {k: v for k, v in want.items() if v is not None}
    monkeypatch.setenv("OPENAI_API_KEY", "unused-no-auth")
    with ServerThread(create_app([Engine.from_checkpoint(root / "sft", name="glassgpt-sft")], auth=False)) as srv:
        served = report("glassgpt-sft", base_url=f"{srv.url}/v1")
    assert served == local and local["accuracy"] is not None
    refusals = run_target("glassgpt-align-refusals", f"local:{root / 'sft'}", reg, show_progress=False,
                          record_path=str(tmp_path / "r.jsonl"), extra_eval_params=params).results[0].final_report
    assert refusals.pop("errors", 0) == 0
    assert {k for k in refusals if not k.startswith("usage_")} == {"not_unsafe", "not_overrefuse", "f1", "disallowed_rate",
                                                                  "accuracy"}
    with pytest.raises(EvalError, match="unknown alignment set 'harmfull'; sets: harmful, benign"):
        run_target("glassgpt-align", f"local:{root / 'sft'}", reg, show_progress=False, record_path=str(tmp_path / "x.jsonl"),
                   extra_eval_params={**params, "sets": "harmfull"})
