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
