import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from glassgpt import config
from glassgpt.data import sources
from glassgpt.data.shards import Corpus, Loader, is_val, prepare
from glassgpt.errors import DataError


def _cfg(tmp_path, paths, **kw):
    ov = [f'data.paths={json.dumps([str(p) for p in paths])}', f"data.cache_dir={tmp_path / 'cache'}",
          "data.vocab_size=300", "data.heldout=[humaneval]", "data.val_fraction=0.2"]
    ov += [f"{k}={v}" for k, v in kw.items()]
    return config.load(None, ov).data


def test_stdlib_source_splits_tests_from_training():
    stats = sources.SourceStats("x")
    names = [d.name for _, d in zip(range(300), sources.stdlib_documents(stats))]
    assert names and not any("/test/" in f"/{n}" or "/tests/" in f"/{n}" or "idle_test" in n for n in names)
    if sources.stdlib_tests_available():
        held = [d.name for _, d in zip(range(50), sources.stdlib_documents(sources.SourceStats("h"), heldout=True))]
        assert held and all(set(n.split("/")[:-1]) & sources.HELDOUT_DIRS for n in held)


def test_humaneval_has_164_programs():
    docs = list(sources.humaneval_documents(sources.SourceStats("he")))
    assert len(docs) == 164 and "def " in docs[0].text


def test_text_jsonl_parquet_and_bad_files(tmp_path):
    (tmp_path / "a.txt").write_text("alpha beta gamma\n" * 50)
    lines = [json.dumps({"text": f"record {i} " * 20}) for i in range(30)] + ["{not json", json.dumps({"title": "no text"})]
    (tmp_path / "b.jsonl").write_text("\n".join(lines))
    pq.write_table(pa.table({"text": [f"parquet row {i} " * 10 for i in range(40)]}), tmp_path / "c.parquet")
    (tmp_path / "d.bin").write_bytes(b"\x00\x01\x02" * 100)
    (tmp_path / "e.txt").write_bytes(b"\xff\xfe bad utf8")
    stats = sources.SourceStats("files")
    docs = list(sources.file_documents([str(tmp_path)], stats))
    assert len(docs) == 1 + 30 + 40
    assert stats.skipped == {"bad jsonl line (needs a string 'text' field)": 2, "binary": 1, "not utf-8": 1}


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list(sources.file_documents([str(tmp_path / "nope.txt")], sources.SourceStats("x")))
    with pytest.raises(DataError, match="no files match"):
        list(sources.file_documents([str(tmp_path / "*.jsonl")], sources.SourceStats("x")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files found"):
        list(sources.file_documents([str(tmp_path / "empty")], sources.SourceStats("x")))
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(DataError, match="no usable text"):
        prepare(_cfg(tmp_path, [tmp_path / "blank.txt"]))
    assert not list((tmp_path / "cache").glob("*")), "a failed prepare must leave nothing behind"


def test_prepare_manifest_split_and_cache(corpus_dir, tmp_path):
    cfg = _cfg(tmp_path, [corpus_dir])
    root = prepare(cfg)
    m = json.loads((root / "manifest.json").read_text())
    assert set(m["splits"]) == {"train", "val", "humaneval"}
    assert m["sources"][0]["files"] > 0 and m["splits"]["train"]["tokens"] > 1000 and len(m["shards_sha256"]) == 64
    assert prepare(cfg) == root  # cached
    corpus = Corpus(root)
    # deterministic document-level split: val documents are exactly those the hash picks
    n_val = sum(is_val(p.name, 0.2) for p in sorted(corpus_dir.iterdir()))
    assert m["splits"]["val"]["documents"] == n_val
    # shards decode back to the source text
    tr = np.fromfile(root / "train_00000.bin", dtype=np.uint16)
    assert tr[0] == corpus.tokenizer.bos_id


def test_small_shards_and_bos_aligned_rows(corpus_dir, tmp_path):
    root = prepare(_cfg(tmp_path, [corpus_dir], **{"data.shard_tokens": "5000"}))
    corpus = Corpus(root)
    assert len(corpus.manifest["splits"]["train"]["files"]) > 2
    rows = corpus.split("train", 64)
    bos = corpus.tokenizer.bos_id
    starts = [rows.get([i])[0, 0] for i in range(len(rows))]
    # every document start is the start of some row
    n_docs = corpus.manifest["splits"]["train"]["documents"]
    assert sum(s == bos for s in starts) >= n_docs
    total = corpus.manifest["splits"]["train"]["tokens"]
    assert len(rows) * 64 >= total * 0.95  # no document is cropped away


def test_loader_is_deterministic_and_rank_sliced(corpus_dir, tmp_path):
    rows = Corpus(prepare(_cfg(tmp_path, [corpus_dir]))).split("train", 32)
    single = Loader(rows, 4, seed=1)
    r0, r1 = Loader(rows, 2, seed=1, rank=0, world=2), Loader(rows, 2, seed=1, rank=1, world=2)
    for k in range(5):
        both = np.concatenate([r0.batch(k), r1.batch(k)])
        assert (both == single.batch(k)).all()
    assert (Loader(rows, 4, seed=1).batch(3) == single.batch(3)).all()


def test_corpus_smaller_than_one_batch(tmp_path):
    (tmp_path / "small.txt").write_text("just a few words of text, repeated. " * 30)
    corpus = Corpus(prepare(_cfg(tmp_path, [tmp_path / "small.txt"], **{"data.val_fraction": "0"})))
    with pytest.raises(DataError, match="fewer than one global batch"):
        Loader(corpus.split("train", 64), 64, seed=0)


def test_split_does_not_depend_on_where_the_corpus_lives(tmp_path, corpus_dir):
    import shutil

    moved = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(corpus_dir, moved)
    names = lambda pat: [d.name for d in sources.file_documents([pat], sources.SourceStats("x"))]  # noqa: E731
    assert names(str(corpus_dir)) == names(str(moved)) == names(str(moved / "*.py")) == sorted(p.name for p in corpus_dir.iterdir())
    assert names(str(moved / "heapq.py")) == ["heapq.py"]


def test_tokenizer_extra_makes_task_words_single_tokens(corpus_dir, tmp_path, monkeypatch):
    from glassgpt.data import images
    from glassgpt.data.shards import cache_key

    plain = _cfg(tmp_path, [corpus_dir], **{"data.vocab_size": "400"})
    with_extra = _cfg(tmp_path, [corpus_dir], **{"data.vocab_size": "400", "data.tokenizer_extra": "shapes"})
    assert cache_key(plain) != cache_key(with_extra)
    texts = list(images.task_texts("shapes", per_source=50))
    assert len(texts) == 1 and texts[0].count("\n") == 100 and "?\n" in texts[0]  # question, answer: a line each
    tok_plain = Corpus(prepare(plain)).tokenizer
    tok_extra = Corpus(prepare(with_extra)).tokenizer
    q = "What colour is the circle?"
    assert len(tok_extra.encode(q)) < len(tok_plain.encode(q))
    assert [tok_extra.decode([i]) for i in tok_extra.encode(" circle")] == [" circle"]
    assert len(tok_extra.encode("circle")) < len(tok_plain.encode("circle"))  # an answer starts its turn: no space
    # the texts' version is in the key (only when set): changed answers never reuse an old tokenizer
    key, key_plain = cache_key(with_extra), cache_key(plain)
    monkeypatch.setattr(images, "TASK_TEXTS_VERSION", images.TASK_TEXTS_VERSION + 1)
    assert cache_key(with_extra) != key and cache_key(plain) == key_plain
    with pytest.raises(DataError, match="unknown image source 'shapez'"):
        prepare(_cfg(tmp_path, [corpus_dir], **{"data.tokenizer_extra": "shapez"}))
    assert not list((tmp_path / "cache").glob(".*tmp*"))  # nothing half-written left behind


def test_empty_tokenizer_extra_keeps_older_cache_keys(tmp_path, corpus_dir):
    """Corpora prepared before data.tokenizer_extra and data.site_packages existed keep their key (and cache)."""
    import dataclasses
    import hashlib
    import sys

    from glassgpt.data.shards import cache_key

    cfg = _cfg(tmp_path, [corpus_dir])
    d = dataclasses.asdict(cfg)
    d.pop("cache_dir")
    d.pop("tokenizer_extra")
    d.pop("site_packages")
    for k in ("packaged", "packaged_cap"):  # likewise data.packaged (the bilingual mix) when empty
        d.pop(k)
    h = hashlib.sha256(json.dumps(d, sort_keys=True).encode())
    h.update(sys.version.encode())
    for p in sources.expand_paths(cfg.paths):
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    assert cache_key(cfg) == h.hexdigest()[:16]


def test_site_packages_follow_the_stdlib_and_skip_heldout_copies(tmp_path, monkeypatch):
    """data.site_packages: the installed packages' .py files after the stdlib's, named apart from
    them, a copy of a held-out stdlib test skipped; the installed files join the cache key."""
    from glassgpt.data.shards import cache_key

    site = tmp_path / "site"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    (site / "pkg" / "data.bin").write_bytes(b"\x00\x01")
    heldout = sources._stdlib_files(heldout=True)
    if heldout:
        (site / "pkg" / "copied_test.py").write_bytes(heldout[0].read_bytes())
    monkeypatch.setattr(sources, "site_packages_root", lambda: site)
    stats = sources.SourceStats("s")
    docs = list(sources.training_documents([], stats, site_packages=True))
    names = [d.name for d in docs]
    site_names = [n for n in names if n.startswith("site-packages/")]
    assert site_names == ["site-packages/pkg/mod.py"]
    assert names.index(site_names[0]) == len(names) - 1  # after every stdlib file
    assert len(names) == len(list(sources.training_documents([], sources.SourceStats("t")))) + 1
    if heldout:
        assert stats.skipped.get("identical to a held-out stdlib test") == 1

    cfg = config.load(None, [f"data.cache_dir={tmp_path / 'cache'}"]).data
    plain = cache_key(cfg)
    cfg.site_packages = True
    sources.site_packages_fingerprint.cache_clear()
    with_site = cache_key(cfg)
    (site / "pkg" / "new.py").write_text("x = 2\n")
    sources.site_packages_fingerprint.cache_clear()  # a new process would see the new file
    assert len({plain, with_site, cache_key(cfg)}) == 3
    sources.site_packages_fingerprint.cache_clear()


def test_bigram_reference_matches_counting_by_hand(corpus_dir, tmp_path):
    """shards.bigram_losses: the held-out loss of the train split's bigram counts interpolated with
    its unigram (the best of a few weights), as a direct count gives it; cached beside the corpus."""
    import math

    from glassgpt.data.shards import bigram_losses

    root = prepare(_cfg(tmp_path, [corpus_dir]))
    got = bigram_losses(root)
    corpus = Corpus(root)
    train = np.asarray(corpus.split("train", 1).shards[0]).astype(int).tolist()
    V = corpus.tokenizer.vocab_size
    uni = np.bincount(train, minlength=V) + 0.5
    uni = uni / uni.sum()
    pair, ctx = {}, {}
    for a, b in zip(train, train[1:]):
        pair[a, b] = pair.get((a, b), 0) + 1
        ctx[a] = ctx.get(a, 0) + 1
    held = np.asarray(corpus.split("humaneval", 1).shards[0]).astype(int).tolist()
    want = min(-sum(math.log(lam * pair.get((a, b), 0) / max(ctx.get(a, 0), 1) + (1 - lam) * uni[b])
                    for a, b in zip(held, held[1:])) / (len(held) - 1) for lam in (0.5, 0.7, 0.8, 0.9, 0.95))
    assert got["humaneval"] == pytest.approx(want, rel=1e-9)
    assert (root / "bigram.json").exists() and bigram_losses(root) == got


def test_layers_import_downwards_only():
    """model/ never imports train/ or evals/; data/ never imports train/, evals/ or serve/
    (model/vision.py once imported train/ and evals/, which imported it back)."""
    import ast
    from pathlib import Path

    import glassgpt

    root = Path(glassgpt.__file__).parent
    banned = {"model": ("glassgpt.train", "glassgpt.evals", "glassgpt.serve"),
              "data": ("glassgpt.train", "glassgpt.evals", "glassgpt.serve")}
    bad = []
    for pkg, forbidden in banned.items():
        for f in sorted((root / pkg).glob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                bad += [f"{pkg}/{f.name}: {n}" for n in names if n.startswith(forbidden)]
    assert not bad, bad
    assert (root / "model" / "vision.py").read_text().count("\n") < 260  # encoder and projector only
