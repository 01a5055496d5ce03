"""Precision and compile as choices: auto resolves by the hardware, bad values are one line,
and a run's report says what it ran with."""

import json
import logging

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
    assert trainer.compile_model(model, "auto", "cpu") == (model, False)  # auto: CUDA only
    assert trainer.compile_model(model, "off", "cuda") == (model, False)


def test_bf16_run_trains_and_reports_its_precision(tiny_cfg, tmp_path):
    rep = train(tiny_cfg(train__precision="bf16", train__compile="off"), tmp_path / "bf16")
    ref = train(tiny_cfg(train__precision="fp32", train__compile="off"), tmp_path / "fp32")
    assert rep["precision"] == "bf16" and ref["precision"] == "fp32" and rep["compile"] is False
    assert rep["hardware"]["cpu_capability"] == dist.cpu_capability()
    saved = json.loads((tmp_path / "bf16" / "report.json").read_text())
    assert saved["precision"] == "bf16"
    # bf16 matmuls round differently but learn the same thing: held-out loss within 2% of fp32's
    for name, r in ref["heldout"].items():
        assert rep["heldout"][name]["loss"] == pytest.approx(r["loss"], rel=0.02), name
