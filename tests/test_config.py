"""Typed config: presets load, overrides apply with types, unknown keys and wrong types name the key."""

from pathlib import Path

import pytest

from kamado.config import RunConfig, apply_overrides, from_dict, load_config
from kamado.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("name", ["tiny", "small", "1b", "8b", "100b"])
def test_every_preset_loads_and_validates(name):
    cfg = load_config(RECIPES / f"{name}.toml")
    assert cfg.name == name
    assert cfg.data.seq_len <= cfg.model.max_seq_len


def test_dotted_overrides_are_parsed_as_toml_values():
    cfg = load_config(
        RECIPES / "tiny.toml",
        ["--optim.lr=3e-4", "--model.qk_norm=false", "--train.steps=7", "--name=x", "--optim.betas=[0.8, 0.9]"],
    )
    assert cfg.optim.lr == 3e-4 and cfg.model.qk_norm is False and cfg.train.steps == 7 and cfg.name == "x"
    assert cfg.optim.betas == (0.8, 0.9)


def test_unknown_key_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'"):
        load_config(RECIPES / "tiny.toml", ["--optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'"):
        from_dict(RunConfig, {"modle": {}})


def test_wrong_type_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.steps"):
        load_config(RECIPES / "tiny.toml", ["--train.steps=many"])
    with pytest.raises(ConfigError, match=r"model\.qk_norm"):
        from_dict(RunConfig, {"model": {"qk_norm": 1}})


def test_inconsistent_shape_is_rejected():
    with pytest.raises(ConfigError, match="n_kv_heads"):
        load_config(RECIPES / "small.toml", ["--model.n_kv_heads=3"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nd_model = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_override_must_have_a_value():
    with pytest.raises(ConfigError, match=r"--section\.key=value"):
        apply_overrides({}, ["--optim.lr"])
