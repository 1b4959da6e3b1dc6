"""``contrastkit wise RUN --alphas 0,0.1,…,1``: the WiSE-FT trade-off table and plot.

For each α, the run's interpolated model (:func:`contrastkit.train.wise.wise_models`) is
evaluated zero-shot (top-1) on every class task of the run's evaluation splits and, optionally,
on a *reference* data set (the task whose zero-shot ability fine-tuning should not destroy).
Writes ``<run>/wise.json`` and ``<run>/wise.png`` (accuracy against α, one line per task).
"""

from __future__ import annotations

from pathlib import Path

from contrastkit.core.errors import InputError
from contrastkit.core.io import atomic_write_json, save_png
from contrastkit.core.progress import progress_bar, progress_enabled
from contrastkit.data import build, load_split
from contrastkit.data.pairs import PairSet
from contrastkit.evaluation.tracking import zero_shot_accuracy
from contrastkit.train.trainer import load_run_config
from contrastkit.train.wise import calibration_images, wise_models

__all__ = ["format_wise", "plot_wise", "wise_sweep"]


def _targets(
    run_dir: Path, reference: tuple[str, str] | None, n: int | None
) -> dict[str, tuple[PairSet, str]]:
    cfg = load_run_config(run_dir)
    out = {}
    for split in cfg.data.eval_splits:
        pairs = load_split(cfg.data, split, progress_enabled())
        pairs = pairs if n is None or n >= len(pairs) else pairs.subset(range(n))
        for task in pairs.tasks:
            out[f"{split}/{task}"] = (pairs, task)
    if reference is not None:
        name, split = reference
        # the run's image size: the towers were trained at it (other data parameters stay default)
        size = {k: v for k, v in cfg.data.params.items() if k == "image_size"}
        pairs = build(name, split, **size)
        pairs = pairs if n is None or n >= len(pairs) else pairs.subset(range(n))
        for task in pairs.tasks:
            out[f"reference:{name}/{split}/{task}"] = (pairs, task)
    if not out:
        raise InputError(f"{run_dir}: no class task to evaluate zero-shot (data {cfg.data.name!r})")
    return out


def wise_sweep(
    run_dir: str | Path,
    alphas: list[float],
    reference: tuple[str, str] | None = None,
    n: int | None = None,
    recalibrate: int = 512,
) -> list[dict[str, float]]:
    """One row per α: ``{"alpha": α, "<split>/<task>": top-1, …}``; writes wise.json/.png.
    ``recalibrate``: training images per endpoint run for re-estimating batch-norm statistics of
    the interpolated models (:func:`contrastkit.train.wise.recalibrate_batchnorm`); 0 = off."""
    run_dir = Path(run_dir)
    if not alphas:
        raise InputError("give at least one alpha")
    targets = _targets(run_dir, reference, n)
    rows = []
    calibration = calibration_images(run_dir, recalibrate) if recalibrate > 0 else None
    models = wise_models(run_dir, list(alphas), calibration)
    for a, model in progress_bar(models, f"wise {run_dir.name}", total=len(alphas), unit="alpha"):
        row = {"alpha": float(a)}
        for key, (pairs, task) in targets.items():
            row[key] = float(zero_shot_accuracy(model, pairs, task)["top1"])
        rows.append(row)
    atomic_write_json(run_dir / "wise.json", rows)
    plot_wise(rows, run_dir / "wise.png")
    return rows


def format_wise(rows: list[dict[str, float]]) -> str:
    """The trade-off table: α and zero-shot top-1 per task."""
    keys = [k for k in rows[0] if k != "alpha"]
    head = f"{'alpha':>6}  " + "  ".join(f"{k:>{max(len(k), 7)}}" for k in keys)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['alpha']:>6.2f}  " + "  ".join(f"{r[k]:>{max(len(k), 7)}.3f}" for k in keys))
    return "\n".join(lines)


def plot_wise(rows: list[dict[str, float]], path: str | Path) -> None:
    """Zero-shot top-1 against α, one line per task (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    alphas = [r["alpha"] for r in rows]
    for k in (k for k in rows[0] if k != "alpha"):
        ax.plot(alphas, [r[k] for r in rows], marker="o", label=k)
    ax.set_xlabel("α (0 = initial weights, 1 = fine-tuned)")
    ax.set_ylabel("zero-shot top-1 (fraction correct)")
    ax.set_title("WiSE-FT weight interpolation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_png(fig, path, dpi=120, tight=True)
