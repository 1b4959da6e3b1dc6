"""Errors the config alone decides come before any data is generated or read, and before a model
is loaded: ``train`` and ``eval`` check the loss, towers, data set, splits, parameters, files and
tasks first. The data builders and loaders are patched to fail, so a late check shows as
``AssertionError: data was read`` instead of the expected config error."""

import dataclasses

import pytest

import contrastkit.evaluation.report as report_mod
import contrastkit.train as train_pkg
import contrastkit.train.session as session_mod
from contrastkit.cli import main
from contrastkit.core.config import from_dict, to_dict
from contrastkit.core.errors import ConfigError, MissingFileError, UnknownNameError
from contrastkit.evaluation import evaluate_model
from contrastkit.train import RunConfig, train


def _data_was_read(*args, **kwargs):
    raise AssertionError("data was read")


def _model_was_loaded(*args, **kwargs):
    raise AssertionError("model was loaded")


def _tiny(tmp_path, **sections) -> RunConfig:
    """The tiny config with whole sections replaced (``loss={...}``), validated like a YAML file."""
    data = to_dict(RunConfig.tiny(out_dir=str(tmp_path / "runs")))
    for key, value in sections.items():
        data[key] = value if not isinstance(value, dict) else {**data.get(key, {}), **value}
    return from_dict(RunConfig, data)


@pytest.fixture
def no_data(monkeypatch):
    monkeypatch.setattr(session_mod, "open_split", _data_was_read)


BASE_DATA = to_dict(RunConfig.tiny()).get("data")


@pytest.mark.parametrize(
    ("sections", "error", "expected"),
    [
        ({"loss": {"name": "infonse"}}, UnknownNameError, "unknown loss 'infonse'"),
        ({"loss": {"params": {"temprature": 0.1}}}, ConfigError, "unknown parameter(s) ['temprature']"),
        ({"loss": {"name": "mv_infonce"}, "scale": {"tile_size": 64}}, ConfigError, "is a MultiLoss"),
        (
            {"model": {"towers": {"image": {"name": "resnet9000"}, "text": {"name": "mlp"}}}},
            UnknownNameError,
            "unknown tower 'resnet9000'",
        ),
        ({"data": {"name": "imagenet"}}, UnknownNameError, "unknown data set 'imagenet'"),
        (
            {"data": {"params": {"image_size": 32, "colour": 1}}},
            ConfigError,
            "unknown parameter(s) ['colour']",
        ),
        (
            {
                "data": {
                    "splits": {**BASE_DATA["splits"], "holdout": {"n": 8}},
                    "eval_splits": ["test", "holdout"],
                }
            },
            ConfigError,
            "data set 'shapes' has no split 'holdout'; available: ['train', 'val', 'test', 'unseen']",
        ),
        (
            {
                "data": {
                    "name": "csv",
                    "params": {"path": "nowhere/pairs.csv"},
                    "splits": {"train": {}, "test": {}},
                    "eval_splits": ["test"],
                }
            },
            MissingFileError,
            "csv source: no file at nowhere/pairs.csv",
        ),
        (
            {"data": {"sources": [{"name": "shapes", "params": {"n": 64}}, {"name": "imagefolder"}]}},
            ConfigError,
            "missing required parameter root",
        ),
    ],
)
def test_train_refuses_bad_config_before_reading_data(tmp_path, no_data, sections, error, expected):
    cfg = _tiny(tmp_path, **sections)
    with pytest.raises(error) as info:
        train(cfg)
    assert expected in str(info.value)
    assert not (tmp_path / "runs" / "tiny").exists()  # no run folder was made either


def test_missing_eval_split_file_is_refused_before_training(tmp_path, no_data):
    """A per-split file of an eval split would otherwise fail only after training (``--eval``)."""
    pairs = tmp_path / "train.csv"
    pairs.write_text("image,caption\n")
    splits = {"train": {"path": str(pairs)}, "test": {"path": str(tmp_path / "test.csv")}}
    data = {"name": "csv", "params": {}, "splits": splits, "eval_splits": ["test"]}
    with pytest.raises(MissingFileError, match=r"csv source: no file at .*test\.csv \(data params path"):
        train(_tiny(tmp_path, data=data))


def test_cli_train_error_is_one_line_before_data(tmp_path, no_data, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: shapes, params: {image_size: 32, colour: 1}}\nout_dir: " + str(tmp_path))
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown parameter(s) ['colour'] for data set 'shapes'")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = RunConfig.tiny(out_dir=str(tmp_path_factory.mktemp("runs")))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2, ckpt_every=2))
    return train(cfg).run_dir


@pytest.fixture
def nothing_loaded(monkeypatch):
    monkeypatch.setattr(report_mod, "load_split", _data_was_read)
    monkeypatch.setattr(train_pkg, "load_run", _model_was_loaded)
    monkeypatch.setattr(report_mod, "hf_encoders", _model_was_loaded)


@pytest.mark.parametrize(
    ("kwargs", "error", "expected"),
    [
        ({"tasks": ["zeroshot", "retrievel"]}, UnknownNameError, "unknown evaluation task 'retrievel'"),
        (
            {"splits": ["test", "tset"]},
            ConfigError,
            "unknown split 'tset'; declared: ['test', 'train', 'unseen']",
        ),
        ({"train_split": "val"}, ConfigError, "unknown split 'val'"),
        (
            {"data": "shapes", "splits": ["test", "holdout"]},
            ConfigError,
            "data set 'shapes' has no split 'holdout'",
        ),
        (
            {"data": "digits", "data_params": {"n": 5}},
            ConfigError,
            "unknown parameter(s) ['n'] for data set 'digits'",
        ),
        (
            {"data": "csv", "data_params": {"path": "no.csv"}},
            MissingFileError,
            "csv source: no file at no.csv",
        ),
        ({"classes": "missing-classes.txt"}, MissingFileError, "class names file not found"),
        ({"templates": "missing-templates.txt"}, MissingFileError, "templates file not found"),
    ],
)
def test_eval_refuses_bad_request_before_loading_anything(run, nothing_loaded, kwargs, error, expected):
    with pytest.raises(error) as info:
        evaluate_model(run, **kwargs)
    assert expected in str(info.value)


def test_eval_of_a_hf_folder_checks_before_loading_the_model(tmp_path, nothing_loaded):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UnknownNameError, match="unknown evaluation task 'zeroshto'"):
        evaluate_model(tmp_path, tasks=["zeroshto"], out_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match="data set 'shapes' has no split 'tets'"):
        evaluate_model(tmp_path, splits=["tets"], out_dir=tmp_path / "out")


def test_cli_eval_unknown_task_is_one_line(run, nothing_loaded, capsys):
    assert main(["eval", str(run), "--tasks", "zeroshot,probes"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown evaluation task 'probes'; available:")
