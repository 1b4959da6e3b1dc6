"""A tiny end-to-end study: runs, report files, resume-by-skipping, and clear errors for bad files."""

import numpy as np
import pytest
import yaml

from contrastkit.core import to_dict
from contrastkit.core.errors import ConfigError
from contrastkit.studies.config import load_study
from contrastkit.studies.study import run_study
from contrastkit.train import RunConfig


def write_study(tmp_path, **changes):
    base = RunConfig.tiny()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(to_dict(base)))
    study = {
        "name": "tiny",
        "base": "base.yaml",
        "overrides": {"train.steps": 6, "train.ckpt_every": 6},
        "grid": {"loss.name": ["clip", "siglip"]},
        "seeds": [0, 1],
        "metric": "zeroshot/color/top1",
        "comparisons": [{"baseline": {"loss.name": "clip"}, "intervention": {"loss.name": "siglip"}}],
        "dynamics_every": 3,
        "nboot": 200,
        "out_dir": str(tmp_path / "studies"),
        **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_tiny_study_end_to_end_and_rerun_skips(tmp_path, capsys):
    path = write_study(tmp_path)
    report = run_study(path)
    root = tmp_path / "studies" / "tiny"
    text = report.read_text()
    assert "## Comparisons" in text and "loss.name=siglip  vs  loss.name=clip" in text
    for f in ("forest.png", "curves.png", "results.parquet"):
        assert (root / f).stat().st_size > 500, f
    import pyarrow.parquet as pq

    table = pq.read_table(root / "results.parquet").to_pydict()
    assert sorted(table["run"]) == ["clip-s0", "clip-s1", "siglip-s0", "siglip-s1"]
    assert all(0.0 <= v <= 1.0 for v in table["value"])
    with np.load(root / "runs" / "clip-s0" / "examples.npz") as z:
        assert z["zeroshot|color|top1"].ndim == 1
    capsys.readouterr()
    run_study(path)  # everything is finished: nothing reruns
    assert "4 already finished, 0 to run" in capsys.readouterr().out


@pytest.mark.parametrize(
    "changes,msg",
    [
        ({"grid": {}}, "non-empty list"),
        ({"grid": {"loss.name": []}}, "non-empty list"),
        ({"seeds": []}, "at least one seed"),
        ({"colour": 1}, r"unknown config key\(s\) \['colour'\]"),
        (
            {"comparisons": [{"baseline": {"loss.nam": "clip"}, "intervention": {"loss.name": "siglip"}}]},
            r"not in the grid",
        ),
    ],
)
def test_bad_study_files(tmp_path, changes, msg):
    with pytest.raises(ConfigError, match=msg):
        load_study(write_study(tmp_path, **changes))


def test_unknown_metric_is_reported(tmp_path):
    path = write_study(tmp_path, metric="zeroshot/flavour/top1", comparisons=[])
    with pytest.raises(Exception, match="failed"):
        run_study(path)


@pytest.mark.parametrize(
    "changes,msg",
    [
        ({"metric": "zeroshoot/shape/top1"}, r"no evaluation task 'zeroshoot'"),
        ({"grid": {"train.batch_sise": [8, 16]}, "comparisons": []}, r"study run .*batch_sise"),
        ({"grid": {"train.batch_size": [0, 16]}, "comparisons": []}, r"study run .*batch_size"),
    ],
)
def test_bad_settings_fail_before_any_training(tmp_path, changes, msg):
    path = write_study(tmp_path, **changes)
    with pytest.raises(ConfigError, match=msg):
        run_study(path)
    assert not list(tmp_path.rglob("metrics.jsonl"))  # nothing was trained


def test_setting_slug_of_dict_and_list_values_is_a_valid_run_name():
    # grid values may be whole blocks (data.sampler, data.sources): their names must be folder-safe
    from contrastkit.studies.config import setting_slug
    from contrastkit.train.rundir import check_run_name

    mix = {"name": "class_mix", "params": {"per_class": 4, "classes_per_batch": 16}}
    assert setting_slug((("data.sampler", mix),)) == "samplerclass_mix+per_class=4+classes_per_batch=16"
    assert setting_slug((("data.sampler", {"name": "random"}), ("loss.name", "clip"))) == "samplerrandom-clip"
    assert setting_slug((("loss.name", "clip"), ("train.batch_size", 32))) == "clip-bs32"  # scalars as before
    long = [{"name": "csv", "params": {"path": "runs/data/noisy/pairs.csv", "caption_columns": ["a", "b"]}}]
    paths = ("x" * 80, "x" * 81)
    slugs = {setting_slug((("data.sources", [{"name": "csv", "params": {"path": p}}]),)) for p in paths}
    assert len(slugs) == 2  # cut to the same prefix, told apart by the hash
    for name in [*slugs, setting_slug((("data.sampler", mix), ("data.sources", long)))]:
        check_run_name(f"{name}-s0")
