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
    assert cfg.model.depth == 3 and cfg.train.lr == 0.01 and cfg.train.compile is True
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
