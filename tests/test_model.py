import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from glassgpt.config import ModelConfig
from glassgpt.model.flops import count
from glassgpt.model.gpt import GPT, KVCache, build


def _random_model(**kw):
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


@pytest.mark.parametrize("mlp,kv_groups", [("relu2", 1), ("swiglu", 2)])
def test_kv_cache_matches_full_forward(mlp, kv_groups):
    m = _random_model(mlp=mlp, kv_groups=kv_groups).eval()
    idx = torch.randint(0, 300, (2, 20))
    full = m(idx)
    cache = KVCache(m.cfg, 2, 48, "cpu", torch.float32)
    parts = [m(idx[:, :7], cache=cache), m(idx[:, 7:8], cache=cache), m(idx[:, 8:], cache=cache)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    greedy = m.generate(idx[:, :5], 15, temperature=0)
    x = idx[:, :5]
    for _ in range(15):
        x = torch.cat([x, m(x)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, x)


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


@pytest.mark.parametrize("mlp,kv_groups", [("relu2", 1), ("swiglu", 2)])
def test_flops_match_torch_flop_counter(mlp, kv_groups):
    m = _random_model(mlp=mlp, kv_groups=kv_groups)
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
