"""Precision and compile as choices: auto resolves by the hardware, bad values are one line,
and a run's report says what it ran with."""

import json
import logging
import math

import pytest
import torch

from glassgpt import cli, config
from glassgpt.errors import ConfigError
from glassgpt.train import dist, trainer
from glassgpt.train.trainer import train


def test_auto_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(dist, "native_bf16", lambda device: True)
    assert dist.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(dist, "native_bf16", lambda device: False)
    assert dist.resolve_precision("auto", "cpu") == "fp32"
    assert dist.resolve_precision("fp32", "cpu") == "fp32"


def test_bf16_without_native_support_warns_on_cpu_and_is_refused_on_cuda(monkeypatch, caplog):
    monkeypatch.setattr(dist, "native_bf16", lambda device: False)
    with caplog.at_level(logging.WARNING, logger="glassgpt"):
        assert dist.resolve_precision("bf16", "cpu") == "bf16"
    assert "emulated" in caplog.text
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    with pytest.raises(ConfigError, match="Tesla T4 has no bf16"):
        dist.resolve_precision("bf16", "cuda:0")


def test_autocast_lowers_matmuls_only_for_bf16():
    a = torch.randn(4, 4)
    with dist.autocast("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with dist.autocast("cpu", "fp32"):
        assert (a @ a).dtype == torch.float32


@pytest.mark.parametrize("key,value,choices", [("train.precision", "fp16", "auto, fp32, bf16"),
                                               ("train.compile", "maybe", "auto, on, off")])
def test_unknown_precision_or_compile_mode_is_one_line(key, value, choices, capsys, tmp_path):
    with pytest.raises(ConfigError, match=choices):
        config.load("tiny", [f"{key}={value}"])
    assert cli.main(["train", "--preset", "tiny", "--out", str(tmp_path / "r"), f"--{key}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and choices in err
    assert not (tmp_path / "r").exists()


def test_old_boolean_compile_values_still_load():
    assert config.load("tiny", ["train.compile=true"]).train.compile == "on"
    assert config.load("tiny", ["train.compile=false"]).train.compile == "off"
    assert config.load("gpu").train.compile == "on"  # the preset's YAML says `compile: true`


def test_compile_without_a_cpp_compiler_trains_eager(monkeypatch, caplog):
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(trainer.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger="glassgpt.train.trainer"):
        fwd, compiled = trainer.compile_model(model, "on", "cpu")
    assert fwd is model and not compiled and "C++ compiler" in caplog.text
    assert trainer.compile_model(model, "off", "cuda") == (model, False)


def test_auto_compile_on_cpu_only_for_large_plain_runs(monkeypatch):
    """auto on a CPU: a plain text run of enough FLOPs compiles; a small one, or one with images or
    RL (not plain), trains eager; auto on CUDA always compiles."""
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(trainer.torch, "compile", lambda m: ("compiled", m))
    big = trainer.AUTO_COMPILE_CPU_FLOPS
    assert trainer.compile_model(model, "auto", "cpu", big / 10, plain=True) == (model, False)
    assert trainer.compile_model(model, "auto", "cpu", big * 10, plain=False) == (model, False)
    assert trainer.compile_model(model, "auto", "cpu", big, plain=True) == (("compiled", model), True)
    assert trainer.compile_model(model, "auto", "cuda") == (("compiled", model), True)
    assert trainer.compile_model(model, "off", "cpu", big * 10, plain=True) == (model, False)


def test_bf16_run_trains_and_reports_its_precision(tiny_cfg, tmp_path):
    rep = train(tiny_cfg(train__precision="bf16", train__compile="off"), tmp_path / "bf16")
    ref = train(tiny_cfg(train__precision="fp32"), tmp_path / "fp32")  # compile auto: a tiny run stays eager
    assert rep["precision"] == "bf16" and ref["precision"] == "fp32" and rep["compile"] is False
    assert tiny_cfg().train.compile == "auto" and ref["compile"] is False and ref["first_step_seconds"] > 0
    assert rep["hardware"]["cpu_capability"] == dist.cpu_capability()
    saved = json.loads((tmp_path / "bf16" / "report.json").read_text())
    assert saved["precision"] == "bf16"
    # bf16 matmuls round differently but learn the same thing: held-out loss within 2% of fp32's
    for name, r in ref["heldout"].items():
        assert rep["heldout"][name]["loss"] == pytest.approx(r["loss"], rel=0.02), name


def test_engine_bf16_agrees_with_fp32():
    """bf16 weights (the KV cache stays fp32 on a CPU: faster attention at decode) against the fp32
    engine on a trained tiny model: every prompt token's logprob within 0.05 nats, and the top-1 token
    the same except at near ties."""
    from glassgpt.serve.engine import Engine, SamplingParams
    from glassgpt.serve.testing import tiny_checkpoint

    ck = tiny_checkpoint()
    e32 = Engine.from_checkpoint(ck, device="cpu", precision="fp32")
    e16 = Engine.from_checkpoint(ck, device="cpu", precision="bf16")
    assert e16.cache is None and e16.dtype == torch.float32
    assert next(e16.model.parameters()).dtype == torch.bfloat16 and e16.model.cos.dtype == torch.float32
    texts = ["def add(a, b):\n    return a + b\n", "import os\nimport sys\n\nclass Foo:\n    pass\n",
             "for i in range(10):\n    print(i)", "with open(path) as f:\n    data = f.read()\n"]
    n = 0
    for t in texts:
        ids = e32.tokenizer.encode(t)[: e32.context_window - 1]
        a, b = (e.generate(ids, SamplingParams(max_tokens=0, echo_logprobs=True, logprobs=True, top_logprobs=2))
                ["prompt_logprobs"][1:] for e in (e32, e16))
        for x, y in zip(a, b):
            assert abs(x.logprob - y.logprob) <= 0.05
            margin = x.top[0][1] - x.top[1][1]
            assert x.top[0][0] == y.top[0][0] or margin < 0.1, (x.top, y.top)
            n += 1
    assert n > 40
    out = e16.generate(e16.tokenizer.encode("def "), SamplingParams(max_tokens=8, temperature=0.0))
    assert out["choices"][0]["tokens"]


def test_eval_local_fn_takes_a_precision():
    from glassgpt.evals.completion_fns import make_completion_fn
    from glassgpt.serve.testing import tiny_checkpoint

    ck = tiny_checkpoint()
    f32 = make_completion_fn(f"local:{ck}")
    f16 = make_completion_fn(f"local:{ck}", precision="bf16")
    assert f16.precision == "bf16" and f32.precision is None and f16.cache_id != f32.cache_id
    reqs = [("def add(a, b):\n", "    return a + b\n"), ("import ", "os\n")]
    for (a, _), (b, _) in zip(f32.loglikelihood(reqs), f16.loglikelihood(reqs)):
        assert abs(a - b) <= 0.05 * 8  # within 0.05 nats a token over a few tokens
    assert f16(prompt="def ", max_tokens=4).get_completions()  # generation through the bf16 engine


def test_muon_newton_schulz_runs_in_bf16_only_for_bf16_runs():
    import torch

    from glassgpt.config import Config
    from glassgpt.model.gpt import build
    from glassgpt.train import optim

    cfg = Config()
    cfg.model.depth, cfg.model.width, cfg.model.head_dim, cfg.model.vocab_size = 1, 64, 32, 64
    model = build(cfg.model, seed=0)
    fp32 = [o for o in optim.build_optimizers(model, cfg) if isinstance(o, optim.Muon)][0]
    bf16 = [o for o in optim.build_optimizers(model, cfg, "bf16") if isinstance(o, optim.Muon)][0]
    assert not fp32.ns_bf16 and bf16.ns_bf16
    g = torch.randn(2, 32, 48, generator=torch.Generator().manual_seed(0))
    a, b = optim.zeropower_newton_schulz(g), optim.zeropower_newton_schulz(g, bf16=True)
    assert a.dtype == b.dtype == torch.float32
    # both orthogonalise: singular values near 1 (the quintic iteration leaves them in ~[0.7, 1.2])
    for x in (a, b):
        s = torch.linalg.svdvals(x)
        assert s.min() > 0.5 and s.max() < 1.3
    assert (a - b).abs().max() < 0.05 and not torch.equal(a, b)


def test_gram_newton_schulz_matches_the_plain_iteration_and_only_compiled_fp32_takes_it():
    """The Gram-matrix iteration is the same polynomial: for wide and tall matrices (and stacks, and a
    low-rank gradient) it agrees with the plain fp32 iteration; square ones keep the plain one; only an
    fp32 run whose step is compiled uses it (eager fp32 keeps the reference arithmetic)."""
    from glassgpt.config import Config
    from glassgpt.model.gpt import build
    from glassgpt.train import optim

    gen = torch.Generator().manual_seed(0)
    low_rank = torch.randn(96, 4, generator=gen) @ torch.randn(4, 24, generator=gen)
    # a rank-4 gradient: both amplify rounding noise in its null space to ~1e-5, differently
    for g, tol in ((torch.randn(3, 24, 96, generator=gen), 2e-5), (torch.randn(96, 24, generator=gen), 2e-5), (low_rank, 1e-3)):
        plain, gram = optim.zeropower_newton_schulz(g), optim.zeropower_newton_schulz(g, gram=True)
        assert gram.shape == plain.shape and not torch.equal(gram, plain)
        assert (gram - plain).abs().max() < tol * plain.abs().max()
    square = torch.randn(32, 32, generator=gen)
    assert torch.equal(optim.zeropower_newton_schulz(square, gram=True), optim.zeropower_newton_schulz(square))
    cfg = Config()
    cfg.model.depth, cfg.model.width, cfg.model.head_dim, cfg.model.vocab_size = 1, 64, 32, 64
    model = build(cfg.model, seed=0)

    def muon(precision, compiled):
        opts = optim.build_optimizers(model, cfg, precision)
        optim.fast_newton_schulz(opts, precision, compiled)
        return [o for o in opts if isinstance(o, optim.Muon)][0]
    assert muon("fp32", True).ns_gram and not muon("fp32", False).ns_gram and not muon("bf16", True).ns_gram


def test_compile_that_fails_at_the_first_step_trains_eager(monkeypatch, caplog, tmp_path, corpus_dir, cache_dir):
    """torch.compile fails where it first runs (inductor's code generation; e.g. setuptools refusing a
    stdlib distutils imported earlier): one line, then the same run eager, weights as an eager run's."""
    from conftest import tiny_overrides

    class InductorError(Exception):  # as torch._inductor.exc raises it
        __module__ = "torch._inductor.exc"

    class Compiled(torch.nn.Module):  # what torch.compile returns: a module whose first call compiles
        def __init__(self, m, error):
            super().__init__()
            self.m, self.error = m, error

        def forward(self, *a, **k):
            raise self.error

    def broken_compile(m):
        return Compiled(m, InductorError("AssertionError: /usr/lib/python3.11/distutils/core.py"))

    cfg = config.load(None, tiny_overrides(corpus_dir, cache_dir, train__compile="on", train__tokens=4 * 64 * 3))
    monkeypatch.setattr(trainer.shutil, "which", lambda name: "/usr/bin/g++")
    monkeypatch.setattr(trainer.torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING, logger="glassgpt.train.trainer"):
        rep = train(cfg, tmp_path / "failed")
    assert "torch.compile failed at the first step (InductorError" in caplog.text and rep["compile"] is False
    eager = train(config.load(None, tiny_overrides(corpus_dir, cache_dir, train__compile="off",
                                                  train__tokens=4 * 64 * 3)), tmp_path / "eager")
    assert rep["steps"] == eager["steps"]
    a, b = (json.loads((tmp_path / r / "metrics.jsonl").read_text().splitlines()[0]) for r in ("failed", "eager"))
    assert a["loss"] == b["loss"]

    # an error of the model's own code is not swallowed
    monkeypatch.setattr(trainer.torch, "compile", lambda m: Compiled(m, ValueError("shapes do not match")))
    with pytest.raises(ValueError, match="shapes do not match"):
        train(cfg, tmp_path / "model_error")


@pytest.mark.parametrize("name, lo, band", [("jordan", 3e-3, (0.68, 1.21)), ("minimax5", 1e-3, (0.88, 1.12)),
                                            ("minimax4", 3e-3, (0.80, 1.21)), ("minimax3", 1e-2, (0.72, 1.27))])
def test_newton_schulz_schedules_keep_singular_values_in_their_band(name, lo, band):
    """Each schedule's composed polynomial maps every normalised singular value in [lo, 1] into the band
    bench/ns_coefficients.py fitted it to, and the iteration on a matrix with those singular values does
    the same (the schedule is what the optimizer runs)."""
    from glassgpt.train import optim

    s = torch.cat([torch.logspace(math.log10(lo), 0, 2000, dtype=torch.float64), torch.linspace(lo, 1, 2000, dtype=torch.float64)])
    x = s.clone()
    for a, b, c in optim.NS_SCHEDULES[name]:
        x = a * x + b * x**3 + c * x**5
    assert band[0] <= x.min() and x.max() <= band[1]
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(128, 64, generator=gen, dtype=torch.float64))
    sv = torch.logspace(math.log10(4 * lo), 0, 64, dtype=torch.float64)
    assert (sv / sv.norm()).min() >= lo  # what the iteration sees after its Frobenius normalisation
    out = torch.linalg.svdvals(optim.zeropower_newton_schulz(((u * sv) @ v.T * 3.0).float(), name).double())
    assert band[0] - 1e-3 <= out.min() and out.max() <= band[1] + 1e-3


def test_newton_schulz_schedule_is_a_checked_choice():
    """train.newton_schulz names a schedule (config's list is optim's table); a bad name is one line; the
    optimizer runs the configured one; the default keeps a run's identity (and so its numbers)."""
    from glassgpt.model.gpt import build
    from glassgpt.train import optim

    assert config.NEWTON_SCHULZ == tuple(optim.NS_SCHEDULES)
    with pytest.raises(ConfigError, match="unknown train.newton_schulz 'minimax9'; choose one of: jordan, minimax5"):
        config.load("tiny", ["train.newton_schulz=minimax9"])
    cfg = config.load("tiny", ["train.newton_schulz=minimax4", "model.vocab_size=64"])
    assert cfg.to_dict()["train"]["newton_schulz"] == "minimax4"
    assert "newton_schulz" not in config.load("tiny").to_dict()["train"]
    muon = [o for o in optim.build_optimizers(build(cfg.model, seed=0), cfg) if isinstance(o, optim.Muon)][0]
    assert muon.ns_schedule == "minimax4"
    # a checkpoint's optimizer state (its param groups included) loads into it and keeps the schedule
    muon.load_state_dict(muon.state_dict())
    assert muon.ns_schedule == "minimax4"
    with pytest.raises(ValueError, match="unknown Newton-Schulz schedule 'x'"):
        optim.Muon([torch.nn.Parameter(torch.zeros(2, 2))], ns_schedule="x")


def test_block_newton_schulz_orthogonalises_each_block_of_the_short_side():
    """block=b cuts each matrix's short side into b-row blocks and runs the same iteration on each alone:
    wide and tall matrices, a stack, the Gram path too; no block when the short side is not larger than b."""
    from glassgpt.train import optim

    gen = torch.Generator().manual_seed(0)
    wide, tall = torch.randn(2, 64, 160, generator=gen), torch.randn(96, 32, generator=gen)
    out = optim.zeropower_newton_schulz(wide, block=16)
    for k in range(4):
        alone = optim.zeropower_newton_schulz(wide[:, 16 * k:16 * (k + 1)])
        assert torch.allclose(out[:, 16 * k:16 * (k + 1)], alone, atol=1e-6)
    assert torch.allclose(optim.zeropower_newton_schulz(wide, gram=True, block=16), out, atol=1e-4)
    out = optim.zeropower_newton_schulz(tall, block=8)
    assert torch.allclose(out[:, 8:16], optim.zeropower_newton_schulz(tall[:, 8:16]), atol=1e-6)
    assert torch.equal(optim.zeropower_newton_schulz(tall, block=32), optim.zeropower_newton_schulz(tall))
    with pytest.raises(ValueError, match="block of 24 rows does not divide a matrix's short side 32"):
        optim.zeropower_newton_schulz(tall, block=24)


def test_block_periodic_muon_takes_whole_matrices_every_period_and_resumes_its_count(monkeypatch):
    """train.ns_block / train.ns_full_every: whole matrices on steps 0, P, 2P…, blocks between; the step
    count is in the optimizer's saved state, so a resumed run keeps the period; bad settings are one line;
    the defaults keep a run's identity."""
    from glassgpt.model.gpt import build
    from glassgpt.train import optim

    for sets, msg in ((["train.ns_block=16"], "never uses its blocks"), (["train.ns_block=-1"], "must be >= 0"),
                      (["train.ns_block=24", "train.ns_full_every=3"], "must be a power of two dividing")):
        with pytest.raises(ConfigError, match=msg):
            config.load("tiny", sets)
    assert not {"ns_block", "ns_full_every"} & set(config.load("tiny").to_dict()["train"])
    cfg = config.load("tiny", ["train.ns_block=16", "train.ns_full_every=3", "model.vocab_size=64"])
    model = build(cfg.model, seed=0)
    muon = [o for o in optim.build_optimizers(model, cfg) if isinstance(o, optim.Muon)][0]
    seen = []
    real = optim.zeropower_newton_schulz
    monkeypatch.setattr(optim, "zeropower_newton_schulz", lambda g, *a: seen.append(a[-1]) or real(g, *a))

    def step():
        seen.clear()
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        muon.step()
        return set(seen)

    assert [step() for _ in range(4)] == [{0}, {16}, {16}, {0}]
    saved = muon.state_dict()
    fresh = [o for o in optim.build_optimizers(model, cfg) if isinstance(o, optim.Muon)][0]
    fresh.load_state_dict(saved)
    muon = fresh
    assert [step() for _ in range(3)] == [{16}, {16}, {0}]
    plain = optim.Muon([torch.nn.Parameter(torch.zeros(4, 4))])
    plain.param_groups[0]["params"][0].grad = torch.ones(4, 4)
    plain.step()
    assert "ns_step" not in plain.state_dict()["param_groups"][0]  # plain Muon's saved state as before


def test_block_newton_schulz_in_bf16_matches_its_fp32_blocks():
    """The bf16 iteration (one fused GEMM a product, 3-D stacks) takes the blocks as one stack."""
    from glassgpt.train import optim

    g = torch.randn(2, 32, 96, generator=torch.Generator().manual_seed(1))
    a, b = optim.zeropower_newton_schulz(g, block=8), optim.zeropower_newton_schulz(g, bf16=True, block=8)
    assert b.dtype == g.dtype and (a - b).abs().max() < 0.05 * a.abs().max()
