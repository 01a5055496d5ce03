"""Shared fixtures: tiny corpora and configs built in-process, in seconds."""

import shutil
import sysconfig
from pathlib import Path

import pytest

from glassgpt import config

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SAMPLE_FILES = ["textwrap.py", "string.py", "shlex.py", "fnmatch.py", "bisect.py", "heapq.py", "keyword.py",
                "colorsys.py", "glob.py", "copy.py", "queue.py", "sched.py", "struct.py", "token.py"]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A small training corpus: a few stdlib modules copied as user text files."""
    d = tmp_path_factory.mktemp("corpus")
    for name in SAMPLE_FILES:
        shutil.copy(STDLIB / name, d / name)
    return d


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def load_bench(name: str):
    """A bench/ script as a module (bench/ on sys.path while it loads: benches import each other)."""
    import importlib.util
    import sys

    bench_dir = Path(__file__).parents[1] / "bench"
    sys.path.insert(0, str(bench_dir))
    try:
        spec = importlib.util.spec_from_file_location(name, bench_dir / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(bench_dir))
    return mod


def tiny_overrides(corpus_dir, cache_dir, **extra) -> list[str]:
    ov = {
        "data.paths": f'["{corpus_dir}"]', "data.cache_dir": str(cache_dir), "data.heldout": "[humaneval]",
        "data.vocab_size": "320", "data.val_fraction": "0.1",
        "model.depth": "2", "model.aspect": "32", "model.head_dim": "16", "model.seq_len": "32",
        "train.batch_size": "4", "train.tokens": str(4 * 32 * 12), "train.eval_every": "6", "train.eval_tokens": "512",
        "train.checkpoint_every": "4", "train.log_every": "4", "train.threads": "1",
    }
    ov.update({k.replace("__", "."): str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in ov.items()]


@pytest.fixture
def tiny_cfg(corpus_dir, cache_dir):
    def make(**extra):
        return config.load(None, tiny_overrides(corpus_dir, cache_dir, **extra))

    return make


def naive_greedy(model, prompt, n, image_embeds=None):
    """Greedy by definition, the reference for every decoder: re-run the whole prefix for each
    token (image embeddings spliced in at the prompt's <|image|> positions each time)."""
    import torch

    x = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            if len(x) >= model.cfg.seq_len:
                break
            x.append(int(model(torch.tensor([x], device=model.wte.weight.device), image_embeds=image_embeds)[0, -1].argmax()))
    return x[len(prompt):]


def check_arith_record(lines: list[dict], accuracy: float) -> None:
    """Every recorded verdict of glassgpt-arith-2d is the rule applied to what was sampled (the
    answer, then no further digit), and the accuracy is their mean: the expected verdicts, not a range."""
    matches = [line["data"] for line in lines if line.get("type") == "match"]
    assert matches
    for m in matches:
        got = m["sampled"].lstrip()
        assert m["correct"] == (got.startswith(m["expected"]) and not got[len(m["expected"]):][:1].isdigit()), m
    assert accuracy == sum(m["correct"] for m in matches) / len(matches)
