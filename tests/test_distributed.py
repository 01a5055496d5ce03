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
    common = dict(train__optimizer=optimizer, train__tokens=4 * 32 * 8, train__eval_every=8, train__checkpoint_every=8)
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
