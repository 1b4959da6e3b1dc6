"""Parameters of named components are typed (issue 13 item 7).

``Registry.build`` validates ``loss.params``, ``model.towers.*.params`` and ``data.params`` against
the builder's signature (types and range annotations): a bad value is a one-line ``ConfigError``
naming the key, the value and what is allowed; valid values reach the builder unchanged.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Protocol

import numpy as np
import pytest
import torch

from contrastkit.core import from_dict, load_yaml
from contrastkit.core.errors import ConfigError
from contrastkit.core.registry import Fraction, Positive, PositiveInt, Registry, check_params
from contrastkit.data import DATASETS, SOURCES
from contrastkit.losses import LOSSES
from contrastkit.models import TOWERS
from contrastkit.models.towers import TowerContext

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["a red circle", "a blue square", "a green triangle left of a red circle"] * 4


def one_line_error(build, *args, **params) -> str:
    with pytest.raises(ConfigError) as err:
        build(*args, **params)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------ the examples


@pytest.mark.parametrize(
    "build,params,key,value,allowed",
    [
        (
            LOSSES.build,
            {"name": "clip", "init_temperature": "abc"},
            "init_temperature",
            "'abc'",
            "number > 0",
        ),
        (LOSSES.build, {"name": "clip", "init_temperature": 0.0}, "init_temperature", "0.0", "> 0"),
        (LOSSES.build, {"name": "siglip", "init_scale": -1.0}, "init_scale", "-1.0", "> 0"),
        (LOSSES.build, {"name": "moco2", "dim": 8, "queue_size": 0}, "queue_size", "0", ">= 1"),
        (LOSSES.build, {"name": "supcon", "variant": "both"}, "variant", "'both'", "one of 'out', 'in'"),
        (TOWERS.build, {"name": "hf_text", "hidden_size": 0}, "hidden_size", "0", "integer >= 1"),
        (TOWERS.build, {"name": "hf_text", "dropout": 2.0}, "dropout", "2.0", "in [0, 1)"),
        (TOWERS.build, {"name": "hf_text", "max_length": 0}, "max_length", "0", "integer >= 1"),
        (TOWERS.build, {"name": "hf_text", "layers": 1.5}, "layers", "1.5", "an integer"),
        (TOWERS.build, {"name": "hf_text", "pooling": "max"}, "pooling", "'max'", "one of 'cls', 'mean'"),
        (TOWERS.build, {"name": "mlp", "input_dim": "45"}, "input_dim", "'45'", "an integer"),
        (
            DATASETS.build,
            {"name": "shapes", "split": "train", "image_size": "big"},
            "image_size",
            "'big'",
            "[16, 256]",
        ),
        (DATASETS.build, {"name": "shapes", "split": "train", "n": 0}, "n", "0", ">= 1"),
        (
            DATASETS.build,
            {"name": "emoji", "split": "train", "test_fraction": 1.0},
            "test_fraction",
            "1.0",
            "[0, 1)",
        ),
        (DATASETS.build, {"name": "digits", "split": "train", "seed": -1}, "seed", "-1", ">= 0"),
    ],
)
def test_bad_value_is_one_line_naming_key_value_and_what_is_allowed(build, params, key, value, allowed):
    msg = one_line_error(build, **params)
    assert f"parameter {key} must be" in msg and f"got {value}" in msg and allowed in msg, msg
    assert msg.startswith(("loss '", "tower '", "data set '")), msg


def test_hidden_size_must_be_a_multiple_of_heads():
    msg = one_line_error(TOWERS.build, "hf_text", hidden_size=32, heads=3, context=TowerContext(texts=TEXTS))
    assert "hidden_size=32" in msg and "heads=3" in msg and "multiple" in msg


@pytest.mark.parametrize("key", ["channels", "layers"])
def test_timm_stage_sizes_must_be_positive(key):
    kwargs = {"layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256], key: [-1, 1, 1, 1]}
    msg = one_line_error(TOWERS.build, "timm", arch="resnet18", kwargs=kwargs)
    assert f"kwargs.{key}" in msg and "[-1, 1, 1, 1]" in msg and "positive integer" in msg


def test_timm_kwargs_the_architecture_rejects_are_a_config_error():
    msg = one_line_error(TOWERS.build, "timm", arch="resnet18", kwargs={"no_such_option": 1})
    assert "no_such_option" in msg


@pytest.mark.parametrize(
    "name,missing",
    [("mochi", "dim, n_hard, n_mix, n_mix_query, warmup_steps"), ("moco2", "dim"), ("tcl", "dim")],
)
def test_required_parameters_are_named(name, missing):
    msg = one_line_error(LOSSES.build, name)
    assert msg.startswith(f"loss {name!r}: missing required parameter") and msg.endswith(missing), msg


def test_required_tower_and_source_parameters_are_named():
    assert one_line_error(TOWERS.build, "hf_pretrained").endswith("missing required parameter path")
    msg = one_line_error(SOURCES.build, "csv", split="train")
    assert msg == "data source 'csv': missing required parameter path"


def test_several_problems_give_one_line_each():
    with pytest.raises(ConfigError) as err:
        LOSSES.build("tcl", queue_size=0, alpha=2.0)
    lines = str(err.value).splitlines()
    assert len(lines) == 3, lines
    assert lines[0] == "loss 'tcl': missing required parameter dim"
    assert any("queue_size" in line for line in lines) and any("alpha" in line for line in lines)


def test_file_sources_check_the_table_parameters():
    msg = one_line_error(SOURCES.build, "csv", split="train", path="x.csv", limit=0)
    assert "parameter limit must be an integer >= 1, got 0" in msg
    msg = one_line_error(SOURCES.build, "parquet", split="train", path="x.parquet", caption_column="c")
    assert "unknown parameter(s) ['caption_column']" in msg and "caption_columns" in msg
    msg = one_line_error(SOURCES.build, "tsv", split="train", path="x.tsv", caption_columns="caption")
    assert "caption_columns must be a list of strings" in msg


# --------------------------------------------------------------------------------- through the CLI


@pytest.mark.parametrize(
    "override,expected",
    [
        ("loss.params.init_temperature=abc", "parameter init_temperature must be a number > 0, got 'abc'"),
        ("model.towers.text.params.heads=3", "hidden_size=128 must be a multiple of heads=3"),
        ("model.towers.text.params.dropout=2.0", "parameter dropout must be in [0, 1), got 2.0"),
        ("model.towers.text.params.pooling=max", "pooling must be one of 'cls', 'mean', got 'max'"),
        ("data.params.image_size=big", "parameter image_size must be an integer in [16, 256], got 'big'"),
        ("model.towers.image.params.kwargs.channels=[-1,64,128,256]", "kwargs.channels"),
        ("loss.name=moco2", "loss 'moco2': missing required parameter dim"),
    ],
)
def test_cli_reports_one_error_line(override, expected, tmp_path, capsys):
    from contrastkit.cli import main

    argv = ["train", "--config", str(ROOT / "configs" / "shapes-clip.yaml"), "--overwrite"]
    for item in (
        f"out_dir={tmp_path}",
        "train.steps=1",
        "train.batch_size=8",
        "train.device=cpu",
        "train.threads=1",
        "train.progress=false",
        "train.tensorboard=false",
        "data.splits.train.n=16",
        override,
    ):
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0] and "Traceback" not in err, err


# ------------------------------------------------------------- valid configs behave exactly as before


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], torch.nn.parameter.UninitializedParameter):  # lazy: shapes come later
            assert isinstance(sb[k], torch.nn.parameter.UninitializedParameter)
            continue
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_builds_with_its_defaults_as_before(name):
    fn = LOSSES.get(name)
    required = [
        n
        for n, p in inspect.signature(fn).parameters.items()
        if p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
    ]
    if required:
        assert "missing required parameter" in one_line_error(LOSSES.build, name)
        return
    torch.manual_seed(0)
    built = LOSSES.build(name)
    torch.manual_seed(0)
    direct = fn()
    assert type(built) is type(direct)
    _same_state(built, direct)


def test_every_tower_builds_with_its_defaults_as_before():
    ctx = TowerContext(texts=TEXTS)
    built_any = []
    for name in TOWERS:
        fn = TOWERS.get(name)
        try:
            torch.manual_seed(0)
            direct = fn(context=ctx)
        except (TypeError, ValueError, KeyError):  # needs parameters (weights, a path, input_dim…)
            with pytest.raises((ConfigError, ValueError)):
                TOWERS.build(name, context=ctx)
            continue
        torch.manual_seed(0)
        built = TOWERS.build(name, context=ctx)
        assert type(built) is type(direct)
        _same_state(built, direct)
        built_any.append(name)
    assert {"timm", "hf_text"} <= set(built_any)
    torch.manual_seed(0)
    a = TOWERS.build("mlp", input_dim=45)
    torch.manual_seed(0)
    _same_state(a, TOWERS.get("mlp")(input_dim=45))


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_data_set_builds_with_its_defaults_as_before(name, tmp_path):
    fn = DATASETS.get(name)
    extra = {"n": 64} if name == "shapes" else {}
    if name == "vectors":  # reads the user's file: one made here
        np.save(tmp_path / "v.npy", np.eye(3, dtype=np.float32))
        (tmp_path / "c.txt").write_text("a\nb\nc\n")
        extra = {"path": str(tmp_path / "v.npy"), "captions": str(tmp_path / "c.txt")}
    built, direct = DATASETS.build(name, split="train", **extra), fn(split="train", **extra)
    assert built.captions == direct.captions and built.modalities == direct.modalities
    assert built.images is None or torch.equal(built.images, direct.images)
    for m, values in direct.signals.items():  # sets without images: their signals
        assert torch.equal(built.signals[m], values)


def test_valid_values_reach_the_builder_unchanged_or_as_needed():
    reg: Registry[dict] = Registry("thing")

    @reg.register("t")
    def build_t(
        temperature: Positive = 0.1,
        size: PositiveInt = 1,
        drop: Fraction = 0.0,
        pair: tuple[int, int] = (1, 2),
        names: list[str] | None = None,
        anything=None,
        context: object = None,
        **rest,
    ) -> dict:
        return dict(temperature=temperature, size=size, drop=drop, pair=pair, names=names, rest=rest)

    names = ["a", "b"]
    got = reg.build("t", temperature=1, size=np.int64(3), drop=0.5, names=names, pair=[3, 4], extra=object())
    assert got["temperature"] == 1 and type(got["temperature"]) is int  # 1 for a float: passed as is
    assert type(got["size"]) is np.int64  # a numpy integer is an integer
    assert reg.build("t", temperature=torch.tensor(0.5))["temperature"].ndim == 0  # a 0-d tensor too
    assert got["names"] is names  # the original object
    assert got["pair"] == (3, 4)  # a YAML list for a tuple: converted
    assert "extra" in got["rest"]  # **kwargs: not checked
    assert reg.build("t", temperature="1e-4")["temperature"] == 1e-4  # YAML 1.1 reads 1e-4 as a string
    assert reg.build("t", context=object(), anything=object())["size"] == 1  # unchecked parameters
    with pytest.raises(
        ConfigError, match=r"^thing 't': parameter pair must be a list of 2 items, got \[1\]$"
    ):
        reg.build("t", pair=[1])
    with pytest.raises(ConfigError, match="parameter size must be an integer >= 1, got True"):
        reg.build("t", size=True)


class _Proto(Protocol):
    def encode(self) -> None: ...


def test_annotations_that_cannot_be_resolved_or_validated_are_not_checked():
    def builder(x: NoSuchType = 1, y: int = 2, z: _Proto | None = None) -> tuple:  # noqa: F821
        return x, y, z

    got = check_params(builder, {"x": "anything", "y": 3, "z": 4}, "thing 'b'")
    assert got == {"x": "anything", "y": 3, "z": 4}
    with pytest.raises(ConfigError, match="parameter y must be an integer, got 'z'"):
        check_params(builder, {"y": "z"}, "thing 'b'")


CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("study-"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_build_their_components(path):
    from contrastkit.losses import from_config
    from contrastkit.train import RunConfig

    cfg = from_dict(RunConfig, load_yaml(path))
    if cfg.loss.terms:
        pytest.skip("composite loss")
    from_config(cfg.loss)
    built: dict = {}  # in config order: a tower sharing an earlier one's weights finds it
    # training images held in memory, as the session passes for a built-in set (FuseLIP fits on them)
    images = torch.randint(
        0, 256, (64, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    for modality, tower in cfg.model.towers.items():
        ctx = TowerContext(texts=TEXTS, towers=dict(built), images=images)
        if tower.name in ("timm_pretrained", "hf_pretrained", "cached_text"):
            check_params(TOWERS.get(tower.name), dict(tower.params), f"tower {tower.name!r}")
        else:  # a weights file made by another run first (qformer's frozen tower) may be absent here
            params = {k: v for k, v in tower.params.items() if k != "weights"}
            built[modality] = TOWERS.build(tower.name, context=ctx, **params)
    for split in cfg.data.splits:
        params = cfg.data.split_params(split)
        if cfg.data.name in SOURCES or cfg.data.name == "vectors":  # files: check the parameters only
            registry = SOURCES if cfg.data.name in SOURCES else DATASETS
            check_params(registry.get(cfg.data.name), {"split": split, **params}, cfg.data.name)
        else:
            if cfg.data.name == "shapes":
                params["n"] = min(params.get("n", 64), 64)
            DATASETS.build(cfg.data.name, split=split, **params)


def test_a_timm_architecture_that_builds_but_cannot_run_is_a_config_error():
    """Found by the CLI fuzz: a 2-stage ResNet builds in timm and fails at its first forward."""
    from contrastkit.core.errors import ConfigError
    from contrastkit.models import TOWERS

    with pytest.raises(ConfigError, match=r"builds but does not run \(AttributeError"):
        TOWERS.build("timm", arch="resnet18", kwargs={"layers": [1, 2]})
    tower = TOWERS.build(
        "timm", arch="resnet18", kwargs={"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]}
    )
    assert tower.training  # the dry run leaves the mode as it was


STUDIES = sorted((ROOT / "configs").glob("study-*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_shipped_study_configs_load_and_every_run_config_validates(path, tmp_path):
    """Every shipped study file loads, and each of its (setting, seed) run configs validates, as
    ``contrastkit study`` checks before training (GPU and Ray studies included: nothing runs)."""
    from contrastkit.studies.config import load_study
    from contrastkit.studies.runner import plan_runs
    from contrastkit.studies.study import check_plan

    study, base = load_study(path)
    specs = plan_runs(study, base, tmp_path / study.name)
    check_plan(study, specs)
    assert len(specs) == len(study.settings()) * len(study.seeds)
    assert len({s.name for s in specs}) == len(specs)  # distinct run folders
