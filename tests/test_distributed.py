"""torchrun on CPU (gloo): 2 processes must train like 1 process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest

from glassgpt.train.trainer import train

from conftest import tiny_overrides


def _losses(run):
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in recs if "loss" in r]


def _torchrun(out, overrides, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
           "-m", "glassgpt.cli", "train", "--out", str(out)] + ["--" + o for o in overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("fsdp,optimizer", [(False, "muon"), (True, "adamw")])
def test_two_processes_match_one(tmp_path, corpus_dir, cache_dir, tiny_cfg, fsdp, optimizer):
    # fp32: the check is of the mechanics (bf16 matmuls over half the rows round differently)
    common = dict(train__optimizer=optimizer, train__tokens=4 * 32 * 8, train__eval_every=8, train__checkpoint_every=8,
                  train__precision="fp32")
    train(tiny_cfg(**common), tmp_path / "one")
    ov = tiny_overrides(corpus_dir, cache_dir, train__batch_size=2, train__fsdp=str(fsdp).lower(), **common)
    _torchrun(tmp_path / "two", ov)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (one, two)
    r1 = json.loads((tmp_path / "one" / "report.json").read_text())
    r2 = json.loads((tmp_path / "two" / "report.json").read_text())
    assert r2["hardware"]["processes"] == 2 and r1["tokens"] == r2["tokens"]
    assert abs(r1["heldout"]["humaneval"]["loss"] - r2["heldout"]["humaneval"]["loss"]) < 1e-4


def _python(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.split(), r.stderr


DENORMALS = "int((torch.full((1 << 18,), 1e-30) * 1e-10).count_nonzero())"  # 1e-40: denormal in fp32


def test_denormals_flushed_on_every_thread_when_set_first():
    out, _ = _python("import torch\nfrom glassgpt.train.dist import flush_denormals\n"
                     f"print(flush_denormals(), {DENORMALS})")
    if out[0] == "None":
        pytest.skip("this CPU cannot flush denormals")
    assert out == ["True", "0"]


def test_threads_started_before_the_flag_are_seen_and_warned(tmp_path):
    # a parallel op first starts torch's threads without the flag: the check must notice, setup() warn
    out, err = _python(f"import torch\nprint({DENORMALS})\nfrom glassgpt.train import dist\n"
                       "print(dist.flush_denormals())\nimport logging\nlogging.basicConfig()\ndist.setup()")
    if out[1] == "None":
        pytest.skip("this CPU cannot flush denormals")
    assert out == ["262144", "False"] and "flushed on some CPU threads only" in err


def test_cli_flushes_denormals_before_any_torch_work(tmp_path):
    # the CLI sets the flag first, so the threads of whatever torch work follows inherit it
    out, _ = _python(f"import torch\nfrom glassgpt.cli import main\nrc = main(['train', '--preset', '{tmp_path}/none.yaml', '--out', '{tmp_path}/run'])\n"
                     f"print(rc, torch.set_flush_denormal(True), {DENORMALS})")
    if out[1] == "False":
        pytest.skip("this CPU cannot flush denormals")
    assert out == ["2", "True", "0"]
