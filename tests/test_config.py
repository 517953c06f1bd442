from pathlib import Path

import pytest

from vtrkit.config import ConfigError, load_config, save_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


def test_defaults_and_overrides():
    cfg = load_config(None, ["model.kind=meanP", "train.batch_size=64", "data.window=[0, 31]"])
    assert cfg.model.kind == "meanP"
    assert cfg.train.batch_size == 64
    assert cfg.data.window == (0.0, 31.0)


def test_unknown_key_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  kindd: xclip\n")
    with pytest.raises(ConfigError, match=r"model\.kindd: unknown key"):
        load_config(path)


def test_wrong_type_named():
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(None, ["train.batch_size=lots"])


def test_bad_literal_named():
    with pytest.raises(ConfigError, match=r"model\.kind"):
        load_config(None, ["model.kind=transformer9000"])


def test_missing_file_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(missing)


def test_override_into_value_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: demo\n")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(path, ["name.x=1"])


def test_malformed_yaml_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_round_trip(tmp_path):
    cfg = load_config(None, ["model.xclip.aggregation=max-mean", "optim.betas=[0.9, 0.99]"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_recipe_loads(path):
    cfg = load_config(path)
    assert cfg.name == path.stem or path.stem == "demo"
