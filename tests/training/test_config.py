import pytest
import yaml

from clipforge.configfile import ConfigError
from clipforge.training.config import load_config, save_config


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
    [
        ("train.batchsize=3", r"unknown config key\(s\) \['train.batchsize'\]"),
        ("train.batch_size=abc", "train.batch_size: expected int"),
        ("nodots", "key=value"),
        ("data.train=[oops", "not valid YAML"),
        ("train.batch_size=0", "at least 1"),
        ("train.samples=-1", "at least 1"),
        ("data.workers=-2", "at least 0"),
        ("train.log_every=0", "at least 1"),
    ],
)
def test_bad_overrides_are_clear_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("smoke", [override])


def test_missing_preset():
    with pytest.raises(ConfigError, match="shipped presets"):
        load_config("nope")


def test_invalid_yaml_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(str(bad))
    assert "\n" not in str(info.value)


def test_an_empty_config_file_is_refused(tmp_path):
    """It trained every default without a word."""
    (tmp_path / "empty.yaml").write_text("\n# nothing here\n")
    with pytest.raises(ConfigError, match="empty"):
        load_config(str(tmp_path / "empty.yaml"))
