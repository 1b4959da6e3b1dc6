"""The metric against each grid axis (studies.axes) and the report's ``axes`` / ``extra_metrics``."""

import numpy as np
import pytest

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.studies.axes import axes_markdown, axis_lines, plot_axes, value_label
from contrastkit.studies.config import load_study

GRID = {
    "train.batch_size": [64, 512],
    "model.towers.image.params.kwargs.channels": [[32, 64], [64, 128]],
    "data.splits.train.n": [5000, 30000],
}


def points():
    """Every setting in grid order with mean = batch/1000 + width index/10 + n/1e6 (all distinct)."""
    out = []
    for b in GRID["train.batch_size"]:
        for wi, w in enumerate(GRID["model.towers.image.params.kwargs.channels"]):
            for n in GRID["data.splits.train.n"]:
                setting = (
                    ("train.batch_size", b),
                    ("model.towers.image.params.kwargs.channels", w),
                    ("data.splits.train.n", n),
                )
                mean = b / 1000 + wi / 10 + n / 1e6
                out.append((setting, mean, mean - 0.01, mean + 0.02))
    return out


def test_lines_group_the_other_keys_and_order_by_the_axis():
    pts = points()[::-1]  # the order of the points does not matter
    lines = axis_lines(GRID, pts, "train.batch_size")
    assert len(lines) == 4
    for line in lines:
        others = dict(line.others)
        wi = GRID["model.towers.image.params.kwargs.channels"].index(
            others["model.towers.image.params.kwargs.channels"]
        )
        n = others["data.splits.train.n"]
        assert line.values == (64, 512)
        np.testing.assert_allclose(
            line.means, [b / 1000 + wi / 10 + n / 1e6 for b in (64, 512)], rtol=0, atol=0
        )
        np.testing.assert_allclose(line.lows, line.means - 0.01, atol=1e-15)
        np.testing.assert_allclose(line.highs, line.means + 0.02, atol=1e-15)
    assert {line.label for line in lines} == {
        "channels=32+64, n=5000",
        "channels=32+64, n=30000",
        "channels=64+128, n=5000",
        "channels=64+128, n=30000",
    }
    width = axis_lines(GRID, pts, "model.towers.image.params.kwargs.channels")
    assert [line.values for line in width] == [([32, 64], [64, 128])] * 4
    assert value_label({"a": [1, 2], "b": 3}) == "a=1+2+b=3"


def test_markdown_cells_are_the_points(tmp_path):
    text = axes_markdown(GRID, points(), ["data.splits.train.n"])
    assert "| other keys | 5000 | 30000 |" in text
    row = next(r for r in text if r.startswith("| batch_size=512, channels=64+128 |"))
    assert row == "| batch_size=512, channels=64+128 | 0.6170 [0.6070, 0.6370] | 0.6420 [0.6320, 0.6620] |"
    plot_axes(GRID, points(), list(GRID), "zeroshot/shape+color/top1", tmp_path / "axes.png")
    assert (tmp_path / "axes.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_axes_are_clear_errors():
    with pytest.raises(InputError, match="not a grid key"):
        axis_lines(GRID, points(), "train.steps")
    with pytest.raises(InputError, match="has 1 of 2 points"):
        axis_lines(GRID, points()[1:], "data.splits.train.n")
    with pytest.raises(InputError, match="at least one axis"):
        plot_axes(GRID, points(), [], "m", None)


def test_a_study_reports_its_axes_and_extra_metrics(tmp_path):
    """Two one-seed runs: the axis table's cells are each run's mean over the test examples, and
    every extra metric gets its tables and its rows in results.parquet."""
    import pyarrow.parquet as pq

    from contrastkit.studies.study import run_study
    from tests.studies.test_study import write_study

    extra = ["zeroshot/shape/top1", "retrieval/text_to_image_R@5"]
    path = write_study(
        tmp_path,
        grid={"train.batch_size": [16, 32]},
        seeds=[0],
        comparisons=[{"baseline": {"train.batch_size": 16}, "intervention": {"train.batch_size": 32}}],
        dynamics_every=0,
        axes=["train.batch_size"],
        extra_metrics=extra,
    )
    text = run_study(path).read_text()
    root = tmp_path / "studies" / "tiny"
    means = {}
    for bs in (16, 32):
        with np.load(root / "runs" / f"bs{bs}-s0" / "examples.npz") as z:
            means[bs] = {m: float(z[m.replace("/", "|")].mean()) for m in ["zeroshot/color/top1", *extra]}
    row = next(r for r in text.splitlines() if r.startswith("| all |"))
    assert row.startswith(f"| all | {means[16]['zeroshot/color/top1']:.4f} [")
    assert f"| {means[32]['zeroshot/color/top1']:.4f} [" in row
    for m in extra:
        assert f"## Also measured: `{m}`" in text
        assert f"| train.batch_size=16 | {means[16][m]:.4f} |" in text
    assert (root / "axes.png").stat().st_size > 1000
    table = pq.read_table(root / "results.parquet").to_pydict()
    got = {(r, m): v for r, m, v in zip(table["run"], table["metric"], table["value"])}
    assert len(got) == 6
    for m in extra:
        assert got[("bs32-s0", m)] == pytest.approx(means[32][m], abs=1e-12)
    with pytest.raises(ConfigError, match=r"axes \['loss.name'\] are not grid keys"):
        load_study(write_study(tmp_path, axes=["loss.name"], grid={"train.batch_size": [16]}))
    with pytest.raises(ConfigError, match="extra_metrics repeat"):
        load_study(write_study(tmp_path, extra_metrics=["zeroshot/color/top1"]))
