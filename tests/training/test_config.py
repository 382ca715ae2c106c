import pytest
import yaml

from training.config import ConfigError, load_config, save_config


def test_preset_and_overrides(tmp_path):
    cfg = load_config("smoke", ["train.batch_size=8", "data.train=['a.tar', 'b.tar']", "loss.kind=siglip"])
    assert cfg.train.batch_size == 8
    assert cfg.data.train == ("a.tar", "b.tar")
    assert cfg.loss.kind == "siglip"
    assert cfg.model.arch == "cf-micro-vit"  # from the preset
    save_config(cfg, tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["train"]["batch_size"] == 8


@pytest.mark.parametrize(
    "override, match",
    [("train.batchsize=3", "unknown config key"), ("train.batch_size=abc", "expected int"), ("nodots", "key=value")],
)
def test_bad_overrides_are_clear_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("smoke", [override])


def test_missing_preset():
    with pytest.raises(ConfigError, match="shipped presets"):
        load_config("nope")
