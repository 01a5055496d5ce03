import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from glassgpt.config import ModelConfig
from glassgpt.model.flops import count
from glassgpt.model.gpt import GPT, KVCache, build


def _random_model(**kw):
    if not isinstance(kw.get("smear", False), bool):  # smear=k: a smear of the k previous tokens
        kw["smear_tokens"], kw["smear"] = kw["smear"], True
    cfg = ModelConfig(**{"depth": 2, "vocab_size": 300, "seq_len": 48, "head_dim": 16, "aspect": 32, **kw})
    m = build(cfg, seed=0)
    with torch.no_grad():  # init zeroes the residual projections; randomise so tests see every path
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m


def test_built_on_meta_then_initialised():
    with torch.device("meta"):
        m = GPT(ModelConfig(depth=2, vocab_size=300, seq_len=16, head_dim=16, aspect=32))
    assert m.wte.weight.is_meta
    m.to_empty(device="cpu")
    m.init_weights(seed=3)
    assert torch.isfinite(m.wte.weight).all() and (m.blocks[0].attn.c_proj.weight == 0).all()
    same = build(m.cfg, seed=3)
    assert torch.equal(same.lm_head.weight, m.lm_head.weight)


VARIANTS = [("relu2", 1, False), ("swiglu", 2, False), ("relu2", 1, True), ("relu2", 1, 2)]  # mlp, kv_groups, smear (2: two tokens)


@pytest.mark.parametrize("mlp,kv_groups,smear", VARIANTS)
def test_kv_cache_matches_full_forward(mlp, kv_groups, smear):
    m = _random_model(mlp=mlp, kv_groups=kv_groups, smear=smear).eval()
    idx = torch.randint(0, 300, (2, 20))
    full = m(idx)
    cache = KVCache(m.cfg, 2, 48, "cpu", torch.float32)
    parts = [m(idx[:, :7], cache=cache), m(idx[:, 7:8], cache=cache, starts=[7, 7]),
             m(idx[:, 8:], cache=cache, starts=[8, 8])]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


@pytest.mark.parametrize("mlp,kv_groups,smear", VARIANTS)
def test_kv_cache_rows_at_their_own_slots_and_positions(mlp, kv_groups, smear):
    """Rows of one call sit in any slots at different lengths (continuous batching): each
    row's logits equal a plain forward of that row's own sequence."""
    m = _random_model(mlp=mlp, kv_groups=kv_groups, smear=smear).eval()
    a, b = torch.randint(0, 300, (1, 12)), torch.randint(0, 300, (1, 9))
    cache = KVCache(m.cfg, 4, 48, "cpu", torch.float32)
    m(a[:, :10], cache=cache, slots=[3])
    m(b[:, :5], cache=cache, slots=[1])
    # a continues at 10 in slot 3, b at 5 in slot 1 (a gathered read), two tokens each
    out = m(torch.cat([a[:, 10:], b[:, 5:7]]), cache=cache, slots=[3, 1], starts=[10, 5])
    assert torch.allclose(out[0], m(a)[0, 10:], atol=1e-5)
    assert torch.allclose(out[1], m(b[:, :7])[0, 5:], atol=1e-5)
    cache.copy_slot(1, 2, 7)  # consecutive slots 1, 2 (a slice read): b's prefix shared
    last = m(torch.cat([b[:, 7:8], b[:, 7:8]]), cache=cache, slots=[1, 2], starts=[7, 7], last=True)
    assert last.shape == (2, 300)
    assert torch.allclose(last, m(b[:, :8])[:, -1].expand(2, -1), atol=1e-5)
    with pytest.raises(ValueError, match="exceeds the cache"):
        m(b, cache=KVCache(m.cfg, 1, 8, "cpu", torch.float32))


def test_image_embeddings_spliced_at_image_positions():
    m = _random_model(image_token_id=299).eval()
    idx = torch.tensor([[1, 299, 299, 5, 6]])
    emb = torch.randn(2, m.cfg.d_model)
    out = m(idx, image_embeds=emb)
    assert not torch.allclose(out, m(idx))
    assert torch.allclose(out[:, 0], m(idx)[:, 0], atol=1e-6)  # causal: position 0 is before the images
    with pytest.raises(ValueError, match="does not match"):
        m(idx, image_embeds=torch.randn(3, m.cfg.d_model))


def test_gqa_has_fewer_kv_params():
    a, b = count(ModelConfig(depth=2, vocab_size=300, aspect=64, kv_groups=1)), count(ModelConfig(depth=2, vocab_size=300, aspect=64, kv_groups=2))
    assert b.params < a.params


@pytest.mark.parametrize("mlp,kv_groups,smear", VARIANTS)
def test_flops_match_torch_flop_counter(mlp, kv_groups, smear):
    m = _random_model(mlp=mlp, kv_groups=kv_groups, smear=smear)
    B, T = 2, 48
    idx = torch.randint(0, 300, (B, T))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        m(idx, idx).backward()
    assert fc.get_total_flops() == count(m.cfg).flops_per_token * B * T
    n = sum(p.numel() for p in m.parameters())
    c = count(m.cfg)
    assert c.params == n and c.params_non_embedding == n - m.wte.weight.numel()
    # the scaling fits' N: the blocks alone, neither embedding nor LM head
    assert c.params_blocks == sum(p.numel() for p in m.blocks.parameters())


def test_context_overflow_is_an_error():
    m = _random_model()
    with pytest.raises(ValueError, match="context window"):
        m(torch.zeros(1, 49, dtype=torch.long))


def test_loss_scores_only_target_positions_like_full_logits():
    # The head runs only where targets are not -1 (image rows score just their answers); the
    # loss must equal cross-entropy over the full logits, for both reductions, with gradients.
    m = _random_model()
    idx = torch.randint(0, 300, (3, 20))
    y = torch.randint(0, 300, (3, 20))
    y[0, :15] = -1
    y[2, 5:9] = -1
    full = torch.nn.functional.cross_entropy(m(idx).flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none").view(3, 20)
    per = m(idx, y, reduction="none")
    assert per.shape == (3, 20) and torch.allclose(per, full, atol=1e-5) and (per[y == -1] == 0).all()
    mean = m(idx, y)
    assert torch.allclose(mean, full[y != -1].mean(), atol=1e-5)
    mean.backward()
    assert m.lm_head.weight.grad is not None and torch.isfinite(m.lm_head.weight.grad).all()


def test_chunked_head_and_loss_match_the_whole(monkeypatch):
    """Above CE_CHUNK target tokens the head and loss run in recomputed chunks: same loss, same
    gradients, same per-token losses, ignored targets (-1) still skipped."""
    import glassgpt.model.gpt as gpt
    from glassgpt.config import ModelConfig

    model = gpt.build(ModelConfig(depth=2, aspect=32, head_dim=16, seq_len=64, vocab_size=97), seed=1)
    x, y = torch.randint(0, 97, (4, 64)), torch.randint(0, 97, (4, 64))
    y[0, :5] = -1
    results = []
    for chunk in (10 ** 9, 50):
        monkeypatch.setattr(gpt, "CE_CHUNK", chunk)
        model.zero_grad()
        loss = model(x, y)
        loss.backward()
        per = model(x, y, reduction="none")
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()], per.detach()))
    (l0, g0, p0), (l1, g1, p1) = results
    torch.testing.assert_close(l1, l0)
    torch.testing.assert_close(p1, p0)
    assert p1[0, :5].eq(0).all()
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_recomputed_blocks_on_long_rows_give_the_same_loss_and_gradients(monkeypatch):
    """Rows of RECOMPUTE_ROWS tokens or more recompute each block in the backward (activation
    checkpointing), with document masking too: the same loss and gradients as keeping activations;
    no grad (eval) or shorter rows keep the plain path."""
    import glassgpt.model.gpt as gpt
    from glassgpt.config import ModelConfig

    model = gpt.build(ModelConfig(depth=2, aspect=32, head_dim=16, seq_len=64, vocab_size=97, smear=True), seed=1)
    x, y = torch.randint(0, 97, (2, 64)), torch.randint(0, 97, (2, 64))
    docs = torch.zeros(2, 64, dtype=torch.long)
    docs[:, 40:] = 1
    calls = []
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, _c=torch.utils.checkpoint.checkpoint, **k:
                        calls.append(1) or _c(*a, **k))
    results = []
    for rows in (10 ** 9, 64):
        monkeypatch.setattr(gpt, "RECOMPUTE_ROWS", rows)
        model.zero_grad()
        loss = model(x, y, docs=docs)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()], len(calls)))
    (l0, g0, n0), (l1, g1, n1) = results
    assert n0 == 0 and n1 == 2  # one checkpoint per block, only when rows are long enough
    torch.testing.assert_close(l1, l0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        model(x, y)
    assert len(calls) == 2


def test_smear_carries_the_previous_token_and_starts_as_the_plain_model():
    plain = _random_model()
    smear = build(ModelConfig(**{**plain.cfg.__dict__, "smear": True}), seed=0)
    assert (smear.smear.weight == 0).all()  # zero at init: a plain model's weights load unchanged
    smear.load_state_dict(plain.state_dict(), strict=False)
    idx = torch.randint(0, 300, (2, 12))
    assert torch.allclose(smear(idx), plain(idx), atol=1e-6)
    with torch.no_grad():
        smear.smear.weight.normal_(0, 0.2)
    a, b = idx.clone(), idx.clone()
    b[:, 5] = (b[:, 5] + 1) % 300
    # changing token 5 changes position 6's input directly (not only through attention)
    one_layer = _random_model(depth=1, smear=True)
    with torch.no_grad():
        for blk in one_layer.blocks:
            blk.attn.c_proj.weight.zero_()  # no attention: position 6 sees only its own input
    la, lb = one_layer(a), one_layer(b)
    assert not torch.allclose(la[:, 6], lb[:, 6]) and torch.allclose(la[:, 7], lb[:, 7], atol=1e-6)


def test_a_two_token_smear_carries_the_two_tokens_before_each_position():
    """smear_tokens=2: position 7's input depends on tokens 5 and 6 directly (no attention), position 8's
    not on token 5."""
    m = _random_model(depth=1, smear=2)
    assert m.smear.weight.shape == (m.cfg.d_model, 2 * m.cfg.d_model)
    with torch.no_grad():
        m.blocks[0].attn.c_proj.weight.zero_()  # no attention: a position sees only its own input
    a = torch.randint(0, 300, (2, 12))
    b = a.clone()
    b[:, 5] = (b[:, 5] + 1) % 300
    la, lb = m(a), m(b)
    assert not torch.allclose(la[:, 6], lb[:, 6]) and not torch.allclose(la[:, 7], lb[:, 7])
    assert torch.allclose(la[:, 8], lb[:, 8], atol=1e-6)


@pytest.mark.parametrize("smear", [True, 2])
def test_smear_stops_at_document_boundaries(smear):
    """With document masking a document scores as it would alone: its first tokens do not see the
    tokens before it."""
    m = _random_model(smear=smear).eval()
    x, y = torch.randint(0, 300, (1, 7)), torch.randint(0, 300, (1, 9))
    row = torch.cat([x, y], 1)
    docs = torch.tensor([[0] * 7 + [1] * 9])
    together = m(row, docs=docs)
    assert torch.allclose(together[:, 7:], m(y), atol=1e-5) and torch.allclose(together[:, :7], m(x), atol=1e-5)
