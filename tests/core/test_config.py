"""Typed configs: unknown keys, wrong types and bad files are clear errors; YAML round trips."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from contrastkit.core import apply_overrides, from_dict, load_yaml, to_dict
from contrastkit.core.errors import ConfigError, MissingFileError
from contrastkit.demo import demo_config
from contrastkit.train import RunConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_unknown_key_names_it_and_the_valid_keys():
    with pytest.raises(
        ConfigError, match=r"unknown config key\(s\) \['stpes'\] in train; valid keys: .*'steps'"
    ):
        from_dict(RunConfig, {"train": {"stpes": 3}})


def test_wrong_types_are_rejected_with_their_location():
    with pytest.raises(ConfigError, match="train.steps: expected an integer"):
        from_dict(RunConfig, {"train": {"steps": "many"}})
    with pytest.raises(ConfigError, match="train.precision: 'fp8' is not one of"):
        from_dict(RunConfig, {"train": {"precision": "fp8"}})
    with pytest.raises(ConfigError, match="optim.betas: expected 2 items"):
        from_dict(RunConfig, {"optim": {"betas": [0.9]}})


def test_range_checks():
    with pytest.raises(ConfigError, match="optim.lr must be > 0"):
        from_dict(RunConfig, {"optim": {"lr": 0}})
    with pytest.raises(ConfigError, match="not declared in data.splits"):
        from_dict(RunConfig, {"data": {"eval_splits": ["nope"]}})


def test_round_trip_through_yaml():
    cfg = RunConfig.tiny()
    again = from_dict(RunConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
    assert again == cfg
    assert again.optim.betas == (0.9, 0.98)


def test_overrides_parse_yaml_values_and_nest():
    data = apply_overrides(
        {}, ["train.steps=12", "optim.lr=1e-4", "loss.name=siglip", "train.progress=false"]
    )
    cfg = from_dict(RunConfig, data)
    assert (cfg.train.steps, cfg.optim.lr, cfg.loss.name, cfg.train.progress) == (12, 1e-4, "siglip", False)
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        apply_overrides({}, ["train.steps"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(MissingFileError, match="config file not found"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(bad)


def test_shipped_configs_parse_and_clip_config_is_the_demo():
    clip = from_dict(RunConfig, load_yaml(CONFIGS / "shapes-clip.yaml"))
    siglip = from_dict(RunConfig, load_yaml(CONFIGS / "shapes-siglip.yaml"))
    assert clip == dataclasses.replace(demo_config(out_dir="runs"), name="shapes-clip")
    assert siglip.loss.name == "siglip"
    # the SigLIP config pins channels_last off (its README numbers predate the default): else the same run
    train = dataclasses.replace(siglip.train, channels_last=clip.train.channels_last)
    assert not siglip.train.channels_last and clip.train.channels_last
    assert dataclasses.replace(siglip, name=clip.name, loss=clip.loss, train=train) == clip
