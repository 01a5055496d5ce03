"""The bilingual pretraining mix (data.packaged): packaged text read from a fake cache beside the
code, a held-out split per source, balanced tokenizer input, and one-line errors."""

import hashlib
import json
from pathlib import Path

import pytest

from glassgpt import config
from glassgpt.data import shards
from glassgpt.data.shards import Corpus, prepare
from glassgpt.errors import ConfigError, DataError

POEM_LINES = ["床前明月光，疑是地上霜。", "举头望明月，低头思故乡。", "白日依山尽，黄河入海流。", "欲穷千里目，更上一层楼。",
              "春眠不觉晓，处处闻啼鸟。", "夜来风雨声，花落知多少。", "学而时习之，不亦说乎？", "有朋自远方来，不亦乐乎？"]
BROWN_WORDS = ("The/at jury/nn said/vbd it/pps did/dod find/vb that/cs many/ap of/in the/at city's/nn$ "
               "voters/nns were/bed happy/jj ./. ")


def _put(cache: Path, name: str, files: dict[str, bytes]) -> None:
    root = cache / name / "files"
    entries = []
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        entries.append({"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    (cache / name / "manifest.json").write_text(json.dumps({"name": name, "version": "test", "files": entries}))


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """A packaged-data cache holding a tiny Brown corpus and a tiny chinese-poetry, found through
    XDG_CACHE_HOME as the real one is."""
    cache = tmp_path / "xdg" / "glassgpt" / "data"
    _put(cache, "brown", {f"package/ca{i:02d}": (BROWN_WORDS * (20 + i)).encode() for i in range(1, 13)})
    poems = [{"title": f"诗{i}", "author": "李白", "paragraphs": POEM_LINES[i % 8:] + POEM_LINES[: i % 8]} for i in range(60)]
    _put(cache, "chinese-poetry", {"package/dist/lunyu/lunyu.json": json.dumps(poems, ensure_ascii=False).encode()})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return cache


def _mix_cfg(tmp_path, corpus_dir, **kw):
    kw = {"vocab_size": 400, **kw}
    return config.DataConfig(paths=[str(corpus_dir)], heldout=[], val_fraction=0.1, cache_dir=str(tmp_path / "runs"), **kw)


def test_mix_reads_packaged_docs_with_a_heldout_split_per_source(tmp_path, corpus_dir, fake_cache):
    cfg = _mix_cfg(tmp_path, corpus_dir, packaged=["brown", "chinese-poetry:3000"])
    c = Corpus(prepare(cfg))
    m = c.manifest
    assert m["languages"] == {"val": "code", "val_brown": "en", "val_chinese-poetry": "zh"}
    assert set(c.heldout_sets) == {"val", "val_brown", "val_chinese-poetry"}
    by_name = {s["name"]: s for s in m["sources"]}
    assert by_name["packaged:brown"]["documents"] == 12
    # the cap stops reading a source: 3,000 bytes of poems is a handful of its 60 documents
    assert 0 < by_name["packaged:chinese-poetry"]["bytes"] < 3000 + 400
    for split in ("val_brown", "val_chinese-poetry"):
        assert m["splits"][split]["documents"] >= 1
    # held-out documents are decoded back to the source's own text, never trained on
    zh = c.tokenizer.decode(c.split("val_chinese-poetry", 8).shards[0].tolist())
    assert "李白" in zh
    train = c.tokenizer.decode(c.split("train", 8).shards[0].tolist())
    assert "jury" in train and "明月" in train
    assert m["tokenizer"]["bytes_per_token"]["val_chinese-poetry"] >= 1.0


def test_default_config_is_unchanged_by_the_mix_keys(tmp_path, corpus_dir):
    cfg = config.load("cpu")
    assert "packaged" not in cfg.to_dict()["data"] and "sft" not in cfg.to_dict()
    plain = _mix_cfg(tmp_path, corpus_dir)
    m = Corpus(prepare(plain)).manifest
    assert "languages" not in m and "packaged" not in m["data_config"]


def test_missing_source_names_the_fetch_command(tmp_path, corpus_dir, fake_cache):
    cfg = _mix_cfg(tmp_path, corpus_dir, packaged=["brown", "gcide"])
    with pytest.raises(DataError, match=r"glassgpt data fetch gcide`$"):
        prepare(cfg)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    with pytest.raises(ConfigError, match="NAME:BYTES"):
        config.load(None, ["data.packaged=[brown:lots]"])


def test_tokenizer_sees_every_source_and_keeps_code_compression(tmp_path, corpus_dir, fake_cache):
    """The interleaved BPE input gives Chinese its merges (a code-only BPE spends a token per byte
    of Chinese), and code's compression is measured against a code-only tokenizer of the same size:
    the mechanics of the issue's tokenizer checks."""
    mix = Corpus(prepare(_mix_cfg(tmp_path, corpus_dir, packaged=["chinese-poetry"], vocab_size=1000))).tokenizer
    code_only = Corpus(prepare(_mix_cfg(tmp_path, corpus_dir, vocab_size=1000))).tokenizer
    code = [p.read_text() for p in sorted(Path(corpus_dir).glob("*.py"))]
    zh = ["\n".join(POEM_LINES)]
    assert shards.bytes_per_token(mix, zh) > 1.5 * shards.bytes_per_token(code_only, zh)
    # A 1,000-token vocabulary shared half and half with Chinese costs code ~8% of its compression
    # here (2.60 vs 2.82 bytes a token); the 5% bound is on bits per byte at the preset's
    # vocabulary and mix, measured by bench/chat_stages.py, not on this fixture.
    assert 0.85 * shards.bytes_per_token(code_only, code) <= shards.bytes_per_token(mix, code) \
        < shards.bytes_per_token(code_only, code)
    # order: the interleave gives the source with the fewest bytes so far the next document
    docs = [shards.sources.Document(f"a{i}", "x" * 10) for i in range(3)] + []
    out = [d.name for d in shards._interleave([docs, [shards.sources.Document("b0", "y" * 25)]])]
    assert out == ["a0", "b0", "a1", "a2"]


def test_derived_fact_source_names_the_package_it_needs(tmp_path, corpus_dir, fake_cache):
    cfg = _mix_cfg(tmp_path, corpus_dir, packaged=["brown", "facts-en"])
    with pytest.raises(DataError, match=r"facts-en needs countryinfo, which is not fetched; run `glassgpt data fetch countryinfo`$"):
        prepare(cfg)
    with pytest.raises(DataError, match=r"unknown source 'facts-fr'.*derived: drills, facts-en, facts-zh, retrieval\)$"):
        prepare(_mix_cfg(tmp_path, corpus_dir, packaged=["facts-fr"]))
    # stated facts are their own held-out language, not prose (their share of the mix is a recipe knob)
    assert shards.packaged_language("facts-zh") == shards.packaged_language("facts-en") == "facts"


def test_chat_stages_counts_fact_splits_apart_from_prose_even_in_old_manifests(tmp_path):
    import math

    from conftest import load_bench

    bench = load_bench("chat_stages")
    split = {"val_brown": (4.0, 100), "val_facts-en": (1.0, 100), "val": (3.0, 50)}  # (nats/token, tokens)
    heldout = {k: {"loss": loss, "tokens": n, "bpb": loss / math.log(2) / 3.0} for k, (loss, n) in split.items()}
    (tmp_path / "report.json").write_text(json.dumps({"heldout": heldout}))
    # a manifest written before the facts had a language of their own
    (tmp_path / "manifest.json").write_text(json.dumps({"languages": {"val": "code", "val_brown": "en",
                                                                      "val_facts-en": "en"}}))
    assert bench.language("val_facts-en", {"val_facts-en": "en"}) == "facts"  # the bytes-per-token line's label too
    assert bench.language("val_brown", {"val_brown": "en"}) == "en" and bench.language("stdlib_tests", {}) == "code"
    got = bench.per_language(tmp_path)
    assert set(got) == {"code", "en", "facts"}
    assert got["en"] == pytest.approx(4.0 / math.log(2) / 3.0) and got["facts"] == pytest.approx(1.0 / math.log(2) / 3.0)


def test_chat_stages_wilson_interval_brackets_the_rate_and_narrows_with_more_questions():
    from conftest import load_bench

    wilson = load_bench("chat_stages").wilson
    assert wilson(11 / 14, 14) == "52%–92%"  # one run's 14 benign twins cannot show 90% met or missed
    assert wilson(0.75, 400) == "71%–79%"
    assert wilson(1.0, 24).endswith("–100%") and wilson(0.0, 24).startswith("0%–")
    assert wilson(None, 10) == "" and wilson(0.5, 0) == ""


@pytest.mark.parametrize("args, msg", [(["--samples", "64"], "needs --reeval"), (["--reeval", "--samples", "0"], "positive"),
                                       (["--answers", "a.jsonl"], "needs --reeval")])
def test_chat_stages_more_questions_or_every_answer_need_reeval(args, msg, tmp_path):
    from conftest import load_bench

    with pytest.raises(SystemExit) as e:
        load_bench("chat_stages").main([str(tmp_path / "base"), str(tmp_path / "sft"), *args])
    assert msg in str(e.value)
