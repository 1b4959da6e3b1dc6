"""Every figure the library writes, rendered on tiny data: a non-blank PNG, a title, labelled axes,
a legend when several labelled series share an Axes, and the study forest plot's layout."""

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from contrastkit.data.inspect import _plot_histograms, _plot_samples
from contrastkit.evaluation.geometry import plot_modality_projection, plot_spectrum
from contrastkit.evaluation.plots import plot_similarity
from contrastkit.evaluation.wise import plot_wise
from contrastkit.studies.config import StudyConfig
from contrastkit.studies.multibootstrap import Runs, multibootstrap
from contrastkit.studies.report import Estimate, _curves, _forest
from contrastkit.studies.runner import RunSpec


@pytest.fixture
def saved(monkeypatch):
    """The figures passed to ``savefig`` (the library closes them, but they stay inspectable);
    figures saved with ``bbox_inches="tight"`` are cropped to their content, the others are not."""
    figs: list[Figure] = []
    original = Figure.savefig

    def record(self, *args, **kwargs):
        self.saved_tight = kwargs.get("bbox_inches") == "tight"
        figs.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figs


def _check_png(path) -> None:
    assert path.stat().st_size > 3000, path.stat().st_size
    img = matplotlib.image.imread(path)[..., :3]
    ink = np.mean(np.any(img < 0.9, axis=-1))  # share of non-white pixels
    assert ink > 0.02, ink


def _check_axes(fig: Figure, images_only: bool = False) -> None:
    """Data Axes (not colorbars, not axis-off image tiles) need title, x/y labels, legend if >1 series."""
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
    data_axes = [a for a in fig.axes if a.axison and a.get_label() != "<colorbar>"]
    assert images_only or data_axes
    canvas = FigureCanvasAgg(fig)  # pyplot closed the figure: draw it again, as saved
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in data_axes:
        if not fig.saved_tight:  # nothing (tick or axis labels, title) cut off at the figure edge
            assert _inside(ax.get_tightbbox(renderer), fig.bbox), ax.get_tightbbox(renderer)
        assert ax.get_title() or suptitle, ax
        assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), (ax.get_xlabel(), ax.get_ylabel())
        _, labels = ax.get_legend_handles_labels()
        if len(labels) > 1:
            assert ax.get_legend() is not None or fig.legends, labels
    if images_only:
        assert suptitle


def _render(saved, path, images_only=False) -> Figure:
    assert len(saved) == 1, len(saved)
    _check_png(path)
    _check_axes(saved[0], images_only)
    return saved[0]


def test_wise(tmp_path, saved):
    rows = [{"alpha": a, "shapes": 0.2 + 0.5 * a, "digits": 0.9 - 0.3 * a} for a in (0.0, 0.5, 1.0)]
    plot_wise(rows, tmp_path / "w.png")
    _render(saved, tmp_path / "w.png")


def test_similarity(tmp_path, saved):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8, generator=g)
    plot_similarity(images, ["a", "b", "c", "d"], torch.rand(4, 4, generator=g), tmp_path / "s.png")
    fig = _render(saved, tmp_path / "s.png")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("caption j (text embedding)", "image i (thumbnail)")


def test_geometry_spectrum_and_gap(tmp_path, saved):
    g = torch.Generator().manual_seed(0)
    # unit-norm like real embeddings: decimal tick labels (−0.50) are wide enough to push an
    # untightened y label off the figure
    x = torch.nn.functional.normalize(torch.randn(30, 5, generator=g), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(30, 5, generator=g) + 1.0, dim=-1)
    plot_spectrum({"image": np.array([4.0, 2.0, 1.0]), "text": np.array([3.0, 1.0, 0.1])}, tmp_path / "a.png")
    plot_modality_projection(x, y, tmp_path / "b.png", title="toy")
    _check_png(tmp_path / "a.png")
    _check_png(tmp_path / "b.png")
    for fig in saved:
        _check_axes(fig)
    gap = saved[1].axes[0]
    assert gap.get_title() == "toy: PCA of image ∪ text embeddings (X: centroids)"
    assert gap.get_xlabel().startswith("PC 1, ") and gap.get_ylabel().startswith("PC 2, ")
    assert gap.get_legend_handles_labels()[1] == [
        "image",
        "image centroid",
        "text",
        "text centroid",
        "modality gap",
    ]


def test_inspect_histograms_and_samples(tmp_path, saved):
    hist = {
        "histogram": {"edges": [1.0, 2.0, 3.0, 4.0], "counts": [2, 5, 1]},
        "median": 2,
        "min": 1,
        "max": 4,
    }
    _plot_histograms(
        {"caption_words": hist, "image_short_side": hist, "source": "toy", "rows": 8}, tmp_path / "h.png"
    )
    fig = _render(saved, tmp_path / "h.png")
    assert [a.get_ylabel() for a in fig.axes] == ["number of captions", "number of images"]
    saved.clear()
    tiles = [(torch.rand(3, 8, 8), "a red square"), (None, "no image")]
    _plot_samples(tiles, tmp_path / "t.png", "toy")
    _render(saved, tmp_path / "t.png", images_only=True)


def _estimate(shift: float, seed: int) -> Estimate:
    r = np.random.RandomState(seed)
    scores = np.stack(
        [(r.rand(40) < p).astype(float) for p in (0.4, 0.5, 0.45, 0.4 + shift, 0.5 + shift, 0.5)]
    )
    res = multibootstrap(Runs([0, 1, 2] * 2, [False] * 3 + [True] * 3, scores), paired=True, nboot=200)
    return Estimate(float(scores[3:].mean() - scores[:3].mean()), res)


def _inside(inner, outer, tol: float = 1.0) -> bool:
    return (
        inner.x0 >= outer.x0 - tol
        and inner.x1 <= outer.x1 + tol
        and inner.y0 >= outer.y0 - tol
        and inner.y1 <= outer.y1 + tol
    )


@pytest.mark.parametrize("n", [1, 3])
def test_forest_layout(tmp_path, saved, n):
    # the demo study's long labels and metric name: the layout must still keep them in the figure
    label = "loss.name=siglip, train.batch_size={0}  vs  loss.name=clip, train.batch_size={0}"
    comps = [(label.format(8 * (i + 1)), _estimate(0.2, i)) for i in range(n)]
    _forest(comps, tmp_path / "f.png", "zeroshot/shape+color/top1")
    fig = _render(saved, tmp_path / "f.png")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "δ = intervention − baseline\nzeroshot/shape+color/top1 (fraction of examples)"
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == [
        "95% Multi-Bootstrap interval",
        "δ: bootstrap estimate",
        "δ: mean over seeds",
    ]
    canvas = FigureCanvasAgg(fig)  # pyplot closed the figure: draw it again, as saved
    canvas.draw()
    renderer = canvas.get_renderer()
    ax_box = ax.get_window_extent(renderer)
    p_texts = [t for t in ax.texts if t.get_text().startswith("p = ")]
    assert len(p_texts) == n
    for t in p_texts:  # the p-values sit inside the axes
        assert _inside(t.get_window_extent(renderer), ax_box), t.get_text()
    # and nothing drawn (tick labels, axis labels, title, p-values, legend) spills over the edge
    for artist in (ax, *fig.legends):
        assert _inside(artist.get_tightbbox(renderer), fig.bbox), artist
    # the rows fill the axes: the first row's bar is in the top half's middle, not squeezed
    # into one half of the axes by autoscaling, and each interval spans a real share of the width
    to_axes = ax.transAxes.inverted().transform
    for i, (_, est) in enumerate(comps):
        d = est.boot.delta
        (x0, y), (x1, _) = to_axes(ax.transData.transform([(d.low, i), (d.high, i)]))
        assert abs(y - (1 - (i + 0.5) / n)) < 1e-6, y
        assert 0.0 <= x0 < x1 <= 0.75 and x1 - x0 > 0.15, (x0, x1)


def test_study_curves(tmp_path, saved):
    study = StudyConfig(
        name="t",
        base="b.yaml",
        grid={"loss.name": ["clip", "siglip"]},
        seeds=(0, 1),
        metric="zeroshot/color/top1",
    )
    specs = []
    for setting in study.settings():
        for seed in study.seeds:
            run_dir = tmp_path / f"{setting[0][1]}-s{seed}"
            run_dir.mkdir()
            rows = [{"step": s, "dynamics/zeroshot/color/top1": 0.1 * s + 0.05 * seed} for s in (0, 3, 6)]
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            specs.append(RunSpec(setting, seed, run_dir.name, run_dir, {}))
    assert _curves(study, specs, tmp_path / "c.png")
    fig = _render(saved, tmp_path / "c.png")
    assert fig.axes[0].get_ylabel() == "zeroshot/color/top1 (fraction of examples)"
    assert fig.axes[0].get_legend_handles_labels()[1] == ["loss.name=clip (n=2)", "loss.name=siglip (n=2)"]
