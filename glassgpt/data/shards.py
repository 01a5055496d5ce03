"""Tokenize a corpus once into memory-mapped token shards; stream BOS-aligned rows.

Layout of a prepared corpus (a cache directory named by a hash of its inputs):
    tokenizer.json
    manifest.json                  sources, counts, sha256 of the shard set
    <split>_00000.bin ...           token ids (uint16, or uint32 for vocabularies > 65536)
    <split>_00000.docs.npy ...      offsets of document starts (each begins with <|bos|>)
Splits: `train`, `val` (a deterministic document-level split of the training sources) and
one per held-out set (`stdlib_tests`, `humaneval`), which are never trained on.

Rows are BOS-aligned: every document starts at the start of a row, and a document longer
than a row continues in the following rows (row starts = doc start + k·T), so no token is
dropped. A row is T+1 tokens (inputs and shifted targets). Reading goes through np.memmap,
so memory stays bounded whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from glassgpt.config import DATA_OPTIONAL, DataConfig
from glassgpt.data import images, packaged, retrieval, sft, sources
from glassgpt.data.tokenizer import Tokenizer, train_from_documents
from glassgpt.errors import DataError

log = logging.getLogger(__name__)


is_val = sources.is_val  # deterministic document-level split by a hash of the document's name


# --- the bilingual mix: packaged text beside the code ----------------------------------------------
def packaged_specs(cfg: DataConfig) -> list[tuple[str, int]]:
    """(source name, byte cap or 0) for each data.packaged entry ("name" or "name:BYTES")."""
    out = []
    for entry in cfg.packaged:
        name, _, cap = str(entry).partition(":")
        out.append((name, int(cap) if cap else cfg.packaged_cap))
    return out


@dataclass(frozen=True)
class Derived:
    """A data.packaged source built by code from fetched packages."""
    language: str
    needs: tuple[str, ...]  # the packages it reads (each must be fetched)
    documents: Callable[[float, int], Iterable]  # (data.val_fraction, byte cap or 0) -> its documents
    settings: Callable[[], list]  # what its documents depend on besides the packages: part of the corpus hash
    optional: tuple[str, ...] = ()  # packages it reads when fetched (hashed too)


def _facts(name: str) -> Derived:
    # a byte cap is a number of renderings: facts-en:3000000 states each fact ~44 times, not 8. The
    # held-out split is reported as its own language: recall of taught statements is not prose, and
    # how much of it the mix holds is a recipe setting that would move the en/zh figures.
    return Derived("facts", sft.FACT_NEEDS,
                   lambda fraction, cap: sft.fact_documents(name, renderings=None if cap else sft.FACT_RENDERINGS),
                   lambda: [sft.FACT_RENDERINGS, sft.FACTS_PER_DOC], optional=("cccedict",))


DERIVED = {**{name: _facts(name) for name in sft.FACT_SOURCES},
           retrieval.NAME: Derived("en", retrieval.NEEDS,
                                   lambda fraction, cap: retrieval.documents(_training_texts(retrieval.NEEDS, fraction)),
                                   retrieval.fingerprint),
           # its held-out split is reported as its own language: copied text is not prose
           retrieval.DRILLS: Derived("copy", retrieval.DRILL_NEEDS,
                                     lambda fraction, cap: retrieval.drill_documents([_training_texts([n], fraction)
                                                                                 for n in retrieval.DRILL_NEEDS]),
                                     retrieval.drill_fingerprint)}


def packaged_language(name: str) -> str:
    if name in DERIVED:
        return DERIVED[name].language
    if name in packaged.LONG_ZH:
        return "zh"
    return {"pretrain-zh": "zh"}.get(packaged.SOURCES[name].kind, "en") if name in packaged.SOURCES else "en"


def _needs(name: str) -> tuple[str, ...]:
    """The fetched packages a data.packaged entry reads: itself, or a derived source's inputs."""
    return DERIVED[name].needs if name in DERIVED else (name,)


def _documents(name: str, fraction: float, cap: int = 0):
    return DERIVED[name].documents(fraction, cap) if name in DERIVED else packaged.documents(name)


def _training_texts(names, fraction: float) -> list[str]:
    """The texts of these sources' training documents only: a derived source built on them must not
    carry their held-out documents into training. The fallback held-out document (the lowest hash,
    packaged_val_names) is left out whatever the cap, since a cap can change which one it is."""
    out = []
    for name in names:
        docs = list(packaged.documents(name))
        val = packaged_val_names(docs, fraction) | {min((d.name for d in docs), key=_crc, default="")}
        out += [d.text for d in docs if d.name not in val]
    return out


def _crc(name: str) -> int:
    return zlib.crc32(name.encode())


def _packaged_docs(name: str, cap: int, fraction: float, stats: sources.SourceStats | None = None):
    """A packaged source's documents until `cap` UTF-8 bytes are read (0: all), counted into stats.
    Bytes, not characters: a Chinese character is three of them, and the mix is balanced in bytes."""
    seen = 0
    for d in _documents(name, fraction, cap):
        if cap and seen >= cap:
            return
        n = len(d.text.encode("utf-8"))
        seen += n
        if stats is not None:
            stats.files += 1
            stats.documents += 1
            stats.bytes += n
        yield d


def _interleave(streams):
    """Documents from several streams, always from the one that has given the fewest bytes so far:
    a tokenizer budget smaller than the mix then sees every source in equal measure (code first,
    then all the Chinese, would leave the BPE without Chinese merges)."""
    live = [[0, i, iter(s)] for i, s in enumerate(streams)]
    while live:
        live.sort(key=lambda e: (e[0], e[1]))
        entry = live[0]
        d = next(entry[2], None)
        if d is None:
            live.pop(0)
            continue
        entry[0] += len(d.text.encode("utf-8"))
        yield d


def packaged_val_names(docs, fraction: float) -> set[str]:
    """The held-out documents of one packaged source: those the name hash picks, or, where it picks
    none (a capped source of a few 64 KB documents), the one whose hash is lowest, so every source
    has a held-out set whenever it has two documents."""
    names = [d.name for d in docs]
    val = {n for n in names if is_val(n, fraction)}
    if not val and len(names) >= 2:
        val = {min(names, key=_crc)}
    return val


def check_packaged(cfg: DataConfig) -> None:
    """Every data.packaged source known, readable as text and fetched, before any work starts:
    one line naming `glassgpt data fetch NAME` for the first that is not."""
    for name, _ in packaged_specs(cfg):
        if name in DERIVED:
            pass
        elif name not in packaged.SOURCES:
            known = ", ".join(sorted(DERIVED))
            raise DataError(f"data.packaged: unknown source '{name}'; `glassgpt data list` shows them (derived: {known})")
        elif packaged.SOURCES[name].reader is None:
            raise DataError(f"data.packaged: source '{name}' is not pretraining text (it has no document reader)")
        for need in _needs(name):
            if packaged.manifest(need) is None:
                what = f"source {name}" if need == name else f"source {name} needs {need}, which"
                raise DataError(f"data.packaged: {what} is not fetched; run `glassgpt data fetch {need}`")


def bytes_per_token(tok: Tokenizer, texts) -> float:
    """UTF-8 bytes per token of these texts: how much the BPE compresses a language."""
    texts = list(texts)
    n = sum(len(ids) for ids in tok.encode_batch(texts))
    return sum(len(t.encode("utf-8")) for t in texts) / max(1, n)


def cache_key(cfg: DataConfig) -> str:
    """Everything that determines the prepared corpus: config and the input files' identity."""
    d = asdict(cfg)
    d.pop("cache_dir")
    for k in ("tokenizer_extra", "site_packages"):
        if not d[k]:
            d.pop(k)  # so corpora prepared before the field existed stay valid
    for k, default in DATA_OPTIONAL.items():
        if d[k] == default:
            d.pop(k)
    h = hashlib.sha256(json.dumps(d, sort_keys=True).encode())
    if cfg.packaged:  # a re-fetched package (new Debian point release) is a new corpus
        check_packaged(cfg)
        for name, _ in packaged_specs(cfg):
            for need in _needs(name) + (DERIVED[name].optional if name in DERIVED else ()):
                m = packaged.manifest(need) or {}
                h.update(json.dumps([need, m.get("version"), [f.get("sha256") for f in m.get("files", [])]]).encode())
            if name in DERIVED:  # built by code: the code's settings are part of the corpus
                h.update(json.dumps([name, *DERIVED[name].settings()]).encode())
    h.update(sys.version.encode())
    if cfg.tokenizer_extra:
        h.update(f"task texts v{images.TASK_TEXTS_VERSION}".encode())
    if cfg.paths:
        for p in sources.expand_paths(cfg.paths):
            st = p.stat()
            h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        h.update(str(sources.stdlib_root()).encode())
        if cfg.site_packages:
            h.update(sources.site_packages_fingerprint().encode())
    return h.hexdigest()[:16]


class _ShardWriter:
    def __init__(self, root: Path, split: str, dtype, shard_tokens: int):
        self.root, self.split, self.dtype, self.shard_tokens = root, split, dtype, shard_tokens
        self.files: list[dict] = []
        self._open()
        self.tokens = self.documents = self.bytes = 0

    def _open(self):
        name = f"{self.split}_{len(self.files):05d}"
        self.name = name
        self.f = open(self.root / f"{name}.bin", "wb")
        self.pos = 0
        self.docs: list[int] = []

    def _close(self):
        self.f.close()
        np.save(self.root / f"{self.name}.docs.npy", np.asarray(self.docs, dtype=np.int64))
        self.files.append({"bin": f"{self.name}.bin", "docs": f"{self.name}.docs.npy", "tokens": self.pos})

    def add(self, ids: list[int], n_bytes: int):
        if self.pos and self.pos + len(ids) > self.shard_tokens:
            self._close()
            self._open()
        self.docs.append(self.pos)
        np.asarray(ids, dtype=self.dtype).tofile(self.f)
        self.pos += len(ids)
        self.tokens += len(ids)
        self.documents += 1
        self.bytes += n_bytes

    def finish(self) -> dict:
        self._close()
        if self.files and self.files[-1]["tokens"] == 0:  # drop an empty trailing shard
            last = self.files.pop()
            (self.root / last["bin"]).unlink()
            (self.root / last["docs"]).unlink()
        return {"files": self.files, "tokens": self.tokens, "documents": self.documents, "bytes": self.bytes}


def _capped(docs, max_bytes: int):
    seen = 0
    for d in docs:
        if max_bytes and seen >= max_bytes:
            return
        seen += len(d.text)
        yield d


def _tokenize_into(docs, tok: Tokenizer, pick, batch_docs: int = 256):
    batch = []

    def flush():
        for d, ids in zip(batch, tok.encode_batch([d.text for d in batch])):
            pick(d).add([tok.bos_id] + ids, len(d.text.encode("utf-8")))
        batch.clear()

    for d in docs:
        batch.append(d)
        if len(batch) >= batch_docs:
            flush()
    if batch:
        flush()


def prepare(cfg: DataConfig, progress: bool = True, tokenizer: Path | None = None) -> Path:
    """Tokenizer + shards for this data config, built once and cached. Returns the directory.

    `tokenizer` (a tokenizer.json): tokenize with it instead of training one (a new training
    stage keeps its parent's token ids); data.vocab_size and the tokenizer_* keys are then unused."""
    key = cache_key(cfg)
    if tokenizer is not None:
        own = Path(cfg.cache_dir) / key / "tokenizer.json"
        given = Path(tokenizer).read_bytes()
        if not (own.exists() and own.read_bytes() == given):  # else the corpus is already this tokenizer's
            key = hashlib.sha256((key + hashlib.sha256(given).hexdigest()).encode()).hexdigest()[:16]
    root = Path(cfg.cache_dir) / key
    if (root / "manifest.json").exists():
        return root
    tmp = Path(cfg.cache_dir) / f".{key}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _build(cfg, tmp, tokenizer)
        if root.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written corpus
        raise
    return root


def _build(cfg: DataConfig, root: Path, tokenizer: Path | None = None) -> None:
    t0 = time.time()
    if tokenizer is not None:
        tok = Tokenizer.load(Path(tokenizer))
        tok.save(root / "tokenizer.json")
        log.info("tokenizing with %s (%d tokens)", tokenizer, tok.vocab_size)
        return _shards(cfg, root, tok, None, t0)
    tok_stats = sources.SourceStats("tokenizer")
    log.info("training a %d-token BPE on up to %.1f MB", cfg.vocab_size, cfg.tokenizer_bytes / 1e6)
    code = _capped(sources.training_documents(cfg.paths, tok_stats, cfg.site_packages), cfg.max_bytes)
    if cfg.packaged:
        code = _interleave([code] + [_packaged_docs(n, cap, cfg.val_fraction) for n, cap in packaged_specs(cfg)])
    # (a tiny packaged source's fallback held-out document, packaged_val_names, may be seen here: by the BPE only)
    train_texts = (d.text for d in code if not is_val(d.name, cfg.val_fraction))
    # A code BPE cuts task words into pieces (" circle" = ' c' 'ir' 'c' 'le'), and gathering them is a
    # hop a 2-layer LM must spend before it can look the object up in the image. The image tasks' text
    # is most of a vision run's stream, so the tokenizer learns it too (4,000 samples a source: every
    # task word one token at vocab 1,024). It did not fix shapes' binding on its own (docs/devlog.md).
    extra = images.task_texts(cfg.tokenizer_extra) if cfg.tokenizer_extra else ()
    tok = train_from_documents(train_texts, cfg.vocab_size, cfg.tokenizer_bytes, extra=extra)
    if tok_stats.documents == 0:
        raise DataError(f"no usable text in {' '.join(cfg.paths) or 'the standard library'} "
                        f"(skipped: {tok_stats.skipped or 'none'})")
    tok.save(root / "tokenizer.json")
    _shards(cfg, root, tok, tok_stats.documents, t0)


def _shards(cfg: DataConfig, root: Path, tok: Tokenizer, tok_documents: int | None, t0: float) -> None:
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32

    splits, source_stats = {}, []
    stats = sources.SourceStats("files" if cfg.paths else "stdlib+site-packages" if cfg.site_packages else "stdlib")
    train_w = _ShardWriter(root, "train", dtype, cfg.shard_tokens)
    val_w = _ShardWriter(root, "val", dtype, cfg.shard_tokens)
    docs = _capped(sources.training_documents(cfg.paths, stats, cfg.site_packages), cfg.max_bytes)
    _tokenize_into(docs, tok, lambda d: val_w if is_val(d.name, cfg.val_fraction) else train_w)
    source_stats.append(asdict(stats))
    languages = {"val": "code"}
    # Packaged text: its training documents join `train`; each source's held-out documents are a
    # split of their own (val_<name>), evaluated like any held-out set, so bits per byte are per source.
    val_ws = {}
    for name, cap in packaged_specs(cfg):
        pstats = sources.SourceStats(f"packaged:{name}")
        val_ws[name] = _ShardWriter(root, f"val_{name}", dtype, cfg.shard_tokens)
        languages[f"val_{name}"] = packaged_language(name)
        docs = list(_packaged_docs(name, cap, cfg.val_fraction, pstats))  # capped: a few MB at most
        val = packaged_val_names(docs, cfg.val_fraction)
        _tokenize_into(docs, tok, lambda d, w=val_ws[name]: w if d.name in val else train_w)
        source_stats.append({**asdict(pstats), "cap_bytes": cap, "language": packaged_language(name)})
    splits["train"], splits["val"] = train_w.finish(), val_w.finish()
    for name, w in val_ws.items():
        splits[f"val_{name}"] = w.finish()
    if splits["train"]["tokens"] == 0:
        raise DataError("every document landed in the validation split; lower data.val_fraction")
    for name in cfg.heldout:
        if name not in sources.HELDOUT_SETS:
            raise DataError(f"unknown held-out set '{name}'; known: {', '.join(sources.HELDOUT_SETS)}")
        if name == "stdlib_tests" and not sources.stdlib_tests_available():
            log.warning("held-out set stdlib_tests skipped: this Python ships no test/ directory")
            source_stats.append({"name": name, "skipped": "this Python ships no stdlib test/ directory"})
            continue
        hstats = sources.SourceStats(name)
        w = _ShardWriter(root, name, dtype, cfg.shard_tokens)
        _tokenize_into(_capped(sources.HELDOUT_SETS[name](hstats), cfg.max_bytes), tok, lambda d: w)
        splits[name] = w.finish()
        source_stats.append(asdict(hstats))
        languages[name] = "code"

    sha = hashlib.sha256()
    for split in splits.values():
        for f in split["files"]:
            with open(root / f["bin"], "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    sha.update(chunk)
    manifest = {
        "data_config": asdict(cfg),
        "tokenizer": {"vocab_size": tok.vocab_size, "trained_on_documents": tok_documents},
        "dtype": np.dtype(dtype).name,
        "sources": source_stats,
        "splits": splits,
        "shards_sha256": sha.hexdigest(),
        "seconds": round(time.time() - t0, 2),
    }
    if cfg.packaged:  # (absent otherwise: code-only manifests stay as they were)
        manifest["languages"] = languages
        manifest["tokenizer"]["bytes_per_token"] = {
            s: round(v["bytes"] / max(1, v["tokens"] - v["documents"]), 3) for s, v in splits.items() if v["tokens"]}
    for k, default in DATA_OPTIONAL.items():
        if manifest["data_config"][k] == default:
            manifest["data_config"].pop(k)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log.info("corpus ready: %s train tokens, %s val tokens (%.1fs)", f"{splits['train']['tokens']:,}",
             f"{splits['val']['tokens']:,}", time.time() - t0)


def bigram_losses(root: Path, max_tokens: int = 50_000_000) -> dict[str, float]:
    """Held-out loss (nats/token) of a count-based bigram model of the train split (interpolated
    with the unigram, the best of a few weights): the regime check's reference — a rung that barely
    beats it has learned token-pair statistics only. Cached in the corpus directory."""
    root = Path(root)
    cache = root / "bigram.json"
    if cache.exists():
        return json.loads(cache.read_text())
    m = json.loads((root / "manifest.json").read_text())
    V, dtype = m["tokenizer"]["vocab_size"], np.dtype(m["dtype"])

    def tokens(split: str, cap: int) -> np.ndarray:
        parts, n = [], 0
        for f in m["splits"][split]["files"]:
            if n >= cap:
                break
            parts.append(np.fromfile(root / f["bin"], dtype=dtype, count=cap - n).astype(np.int64))
            n += len(parts[-1])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    train = tokens("train", max_tokens)
    if len(train) < 2:
        return {}
    unigram = np.bincount(train, minlength=V) + 0.5
    unigram = unigram / unigram.sum()
    pairs, counts = np.unique(train[:-1] * V + train[1:], return_counts=True)
    context = np.bincount(train[:-1], minlength=V)
    out = {}
    for split in m["splits"]:
        x = tokens(split, max_tokens)
        if split == "train" or len(x) < 2:
            continue
        q = x[:-1] * V + x[1:]
        i = np.minimum(np.searchsorted(pairs, q), len(pairs) - 1)
        p_pair = np.where(pairs[i] == q, counts[i], 0) / np.maximum(context[x[:-1]], 1)
        out[split] = min(float(-np.log(lam * p_pair + (1 - lam) * unigram[x[1:]]).mean()) for lam in (0.5, 0.7, 0.8, 0.9, 0.95))
    cache.write_text(json.dumps(out, indent=1))
    return out


class Corpus:
    """A prepared corpus directory: its tokenizer, manifest and token splits."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest = json.loads((self.root / "manifest.json").read_text())
        self.tokenizer = Tokenizer.load(self.root / "tokenizer.json")
        self.dtype = np.dtype(self.manifest["dtype"])

    @property
    def heldout_sets(self) -> list[str]:
        return [s for s in self.manifest["splits"] if s != "train"]

    def split(self, name: str, seq_len: int) -> "TokenRows":
        if name not in self.manifest["splits"]:
            raise DataError(f"split '{name}' not in corpus {self.root}")
        return TokenRows(self.root, self.manifest["splits"][name], self.dtype, seq_len)


class TokenRows:
    """BOS-aligned rows of T+1 tokens over a split's memory-mapped shards."""

    def __init__(self, root: Path, split: dict, dtype, seq_len: int):
        self.T = seq_len
        self.shards = [np.memmap(root / f["bin"], dtype=dtype, mode="r") for f in split["files"] if f["tokens"]]
        starts = []
        for s, f in enumerate(f for f in split["files"] if f["tokens"]):
            n = f["tokens"]
            if n < seq_len + 1:
                continue
            docs = np.load(root / f["docs"])
            ends = np.append(docs[1:], n)
            for a, b in zip(docs, ends):
                p = np.arange(a, b, seq_len, dtype=np.int64)
                starts.append(np.stack([np.full_like(p, s), np.minimum(p, n - seq_len - 1)], 1))
        self.rows = np.concatenate(starts) if starts else np.zeros((0, 2), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, indices) -> np.ndarray:
        out = np.empty((len(indices), self.T + 1), dtype=np.int64)
        for j, i in enumerate(indices):
            s, p = self.rows[i]
            out[j] = self.shards[s][p : p + self.T + 1]
        return out


class Loader:
    """Deterministic batches: the global batch at step k is a pure function of (seed, k),
    so resuming needs only the step, and rank r of W takes its slice of the global batch
    (the same rows a single process would see, split W ways)."""

    def __init__(self, rows: TokenRows, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if len(rows) < batch_size * world:
            raise DataError(f"the corpus has {len(rows)} rows of {rows.T + 1} tokens, fewer than one global batch "
                            f"of {batch_size * world}; add data or lower train.batch_size / model.seq_len")
        self.rows, self.B, self.seed, self.rank, self.world = rows, batch_size, seed, rank, world
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
            self._perm_epoch = epoch
        return self._perm

    def batch(self, index: int) -> np.ndarray:
        """The index-th micro-batch of this rank: [B, T+1] int64."""
        n = len(self.rows)
        first = (index * self.world + self.rank) * self.B
        ids = [(self._order((first + j) // n))[(first + j) % n] for j in range(self.B)]
        return self.rows.get(ids)
