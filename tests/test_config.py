import dataclasses

import pytest

from glassgpt import config
from glassgpt.errors import ConfigError


def test_presets_load_and_derive_shapes():
    for name in config.preset_names():
        cfg = config.load(name)
        assert cfg.model.d_model % cfg.model.head_dim == 0
        assert cfg.model.n_heads * cfg.model.head_dim == cfg.model.d_model
    assert {"tiny", "cpu", "gpu"} <= set(config.preset_names())


def test_dotted_overrides_are_typed():
    cfg = config.load("tiny", ["model.depth=3", "train.lr=0.01", "train.compile=true", "data.paths=[a, b]"])
    assert cfg.model.depth == 3 and cfg.train.lr == 0.01 and cfg.train.compile == "on"
    assert cfg.data.paths == ["a", "b"]


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'model.depth'"):
        config.load("tiny", ["model.dept=3"])


def test_bad_value_and_unknown_preset():
    with pytest.raises(ConfigError, match="bad value for model.depth"):
        config.load("tiny", ["model.depth=abc"])
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        config.load("tinny")
    with pytest.raises(ConfigError, match="kv_groups"):
        config.load("tiny", ["model.kv_groups=3"])
    with pytest.raises(ConfigError, match=r"model.smear_tokens=0 must be 1 to 8"):
        config.load("tiny", ["model.smear_tokens=0"])


def test_config_file_roundtrip(tmp_path):
    cfg = config.load("tiny", ["model.depth=5"])
    cfg.save(tmp_path / "c.yaml")
    again = config.load(str(tmp_path / "c.yaml"))
    assert again.to_dict() == cfg.to_dict() and again.sha256() == cfg.sha256()


@pytest.mark.parametrize("key,value,msg", [("vision.projector", "conv", "vision.projector must be"),
                                           ("vision.stem", "mlp", "vision.stem must be"),
                                           ("vision.muon_lr", "-0.01", "vision.muon_lr non-negative")])
def test_bad_vision_choices_are_one_line_errors(key, value, msg):
    with pytest.raises(ConfigError, match=msg):
        config.load("vision", [f"{key}={value}"])


def test_ladder_defaults_are_one_table():
    """ladder.plan's keyword defaults are ScalingConfig's fields, and the presets' scaling: sections
    are the ladders the speedrun has always planned (a changed value here changes `make speedrun`)."""
    import inspect

    from glassgpt.scaling import ladder

    sig = inspect.signature(ladder.plan).parameters
    assert {k: sig[k].default for k in config.ScalingConfig().plan_kwargs()} == config.ScalingConfig().plan_kwargs()
    S = config.ScalingConfig
    assert config.load("tiny").scaling == S(max_fraction=0.8, budget_fraction=2.0, n_sizes=5, min_steps=10, width_step=8,
                                           n_boot=50)
    assert config.load("cpu").scaling == S(max_fraction=0.34, budget_fraction=1.0, n_sizes=7, min_steps=20, width_step=8,
                                          line="tokens", ratios=(0.125, 0.25, 0.5, 1.0))
    assert config.load("gpu").scaling == S(n_sizes=5)
    assert config.load("gpu_large").scaling == S(min_steps=100, width_step=32)


def test_scaling_section_leaves_the_run_identity_alone():
    """Ladder options describe how a ladder for this target is planned, not the run: a run's
    config.yaml and sha256 (which ladder directories compare) do not change with them."""
    cfg = config.load("cpu")
    assert "scaling" not in cfg.to_dict()
    assert cfg.sha256() == config.load("cpu", ["scaling.n_sizes=9", "scaling.ratios=0.5,1"]).sha256()
    assert config.load("cpu", ["--scaling.ratios=[0.5, 1]"]).scaling.ratios == (0.5, 1.0)
    assert config.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="scaling.line"):
        config.load("cpu", ["scaling.line=diagonal"])
    with pytest.raises(ConfigError, match="did you mean 'scaling.n_sizes'"):
        config.load("cpu", ["scaling.n_size=5"])


def test_stage_names_the_kind_of_model_a_run_makes():
    from glassgpt import config

    assert config.load("cpu").stage == "base"
    assert config.load("chat_sft").stage == "sft"
    assert config.load("vision").stage == "vision"


def test_the_chat_chains_presets_share_the_base_models_shape_and_corpus():
    """Each stage after `chat` reads the base's corpus with the base's tokenizer and loads its
    weights: a data or model setting changed in one preset alone would build another corpus or
    refuse the parent."""
    from glassgpt import config

    base = config.load("chat")
    for name in ("chat_sft", "align", "vision_chat", "vision_chat_short"):
        cfg = config.load(name)
        assert cfg.data == base.data, name
        shape = (cfg.model.d_model, cfg.model.depth, cfg.model.smear, cfg.model.smear_tokens)
        assert shape == (base.model.d_model, base.model.depth, base.model.smear, base.model.smear_tokens), name


def test_the_vision_stages_text_chat_repeats_what_the_sft_repeats():
    """The vision stage keeps tuning on text chat: without the SFT's repeats of benign look-alikes and
    sensitive requests its chat rows are mostly refusals, and the model learns to refuse benign
    look-alikes (a measured 57% -> 7%, docs/vision.md); the vision presets and the short one agree."""
    from glassgpt import config

    sft = config.load("chat_sft").sft
    full, short = config.load("vision_chat"), config.load("vision_chat_short")
    assert full.sft.repeat == short.sft.repeat == sft.repeat and sft.repeat
    assert dataclasses.replace(full.vision, eval_samples=short.vision.eval_samples) == short.vision
    assert full.sft == short.sft
    for k in ("batch_size", "muon_lr", "adam_lr_mult"):
        assert getattr(full.train, k) == getattr(short.train, k), k


def test_the_encoder_preset_trains_what_the_vision_stage_loads():
    """vision.encoder_from needs the encoder's shape keys equal; the encoder preset trains on every
    image task the stage asks about."""
    from glassgpt import config
    from glassgpt.train.trainer import ENCODER_SHAPE_KEYS

    enc = config.load("vision_encoder").vision
    for name in ("vision_chat", "vision_chat_short"):
        stage = config.load(name).vision
        assert all(getattr(enc, k) == getattr(stage, k) for k in ENCODER_SHAPE_KEYS), name
        assert enc.mix == stage.mix and not enc.chat, name
