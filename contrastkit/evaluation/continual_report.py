"""E-CONTINUAL, the report: several continual runs grouped by setting, as JSON, markdown and a plot.

:func:`continual_report` evaluates each run (:func:`contrastkit.evaluation.continual.continual_summary`:
accuracy matrix, average accuracy, forgetting, WiSE-FT rows), groups the runs by setting
(:func:`setting_labels`: the config values that differ between the runs, ``continual.method=coconut``
as the study report names a setting; runs that differ in nothing but the seed: the run folder name
without its ``-s<seed>`` suffix), averages each setting over its runs and writes
``continual.json`` (every number, NaN as null), ``continual.md`` (:func:`format_continual`: one row
per setting and WiSE-FT α, then each setting's mean accuracy matrix) and ``continual.png``
(:func:`plot_continual`: accuracy on each stage's classes over the stages, one panel per setting).
What ``contrastkit continual`` writes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.core.config import load_yaml
from contrastkit.core.errors import InputError
from contrastkit.core.io import atomic_write_json, atomic_write_text, save_png
from contrastkit.evaluation.continual import clean_json, continual_summary

__all__ = ["continual_report", "format_continual", "plot_continual", "setting_labels"]


def continual_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    split: str = "test",
    candidates: str = "seen",
    wise: Sequence[float] = (0.5,),
    n: int | None = None,
    recalibrate: int = 512,
    wise_from: str = "initial",
) -> dict[str, Any]:
    """Evaluate ``run_dirs`` (:func:`continual_summary`), group them by setting and write
    ``continual.json``, ``continual.md`` and ``continual.png`` into ``out_dir``."""
    if not run_dirs:
        raise InputError("give at least one continual run folder")
    runs = [continual_summary(d, split, candidates, wise, n, recalibrate, wise_from) for d in run_dirs]
    for r, label in zip(runs, setting_labels(run_dirs)):
        r["setting"] = label or r["setting"]
    settings: dict[str, list[dict]] = {}
    for r in runs:
        settings.setdefault(r["setting"], []).append(r)
    groups = {name: _group(rs) for name, rs in settings.items()}
    report = {
        "split": split,
        "candidates": candidates,
        "wise_from": wise_from,
        "runs": runs,
        "settings": groups,
    }
    report = clean_json(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "continual.json", report)
    atomic_write_text(out / "continual.md", format_continual(report))
    plot_continual(report, out / "continual.png")
    return report


# Keys that name a run rather than its setting: a study's seeds of one setting differ in these.
_NOT_SETTING = frozenset({"name", "out_dir", "train.seed", "train.threads", "train.progress"})


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def setting_labels(run_dirs: Sequence[str | Path]) -> list[str | None]:
    """Each run's setting as the study report writes it: the config keys (dotted, in config order)
    whose values differ between the runs' ``config.yaml``, ``key=value`` joined by ", " (a study's
    ``continual.method=coconut``); name, out_dir, train.seed, train.threads and train.progress do
    not count. ``None`` for every run when nothing else differs (one run, or the seeds of one
    setting): the caller keeps the folder name."""
    flat = [_flat(load_yaml(Path(d) / "config.yaml")) for d in run_dirs]
    keys = [k for k in dict.fromkeys(k for f in flat for k in f) if k not in _NOT_SETTING]
    missing = object()
    differ = [k for k in keys if len({repr(f.get(k, missing)) for f in flat}) > 1]
    if not differ:
        return [None] * len(flat)
    return [", ".join(f"{k}={f.get(k, '–')}" for k in differ) for f in flat]


def _group(runs: list[dict]) -> dict[str, Any]:
    """Mean over the runs of one setting, and the per-run values."""
    mats = np.stack([np.asarray(r["matrix"], dtype=np.float64) for r in runs])
    per = {k: [r[k] for r in runs] for k in ("average_accuracy", "average_forgetting")}
    wise = []
    for i, w in enumerate(runs[0]["wise"]):
        ws = [r["wise"][i] for r in runs]
        wise.append({
            "alpha": w["alpha"],
            "accuracies": np.mean([x["accuracies"] for x in ws], 0).tolist(),
            **{k: float(np.mean([x[k] for x in ws])) for k in ("average_accuracy", "average_forgetting")},
            **{f"{k}_per_run": [x[k] for x in ws] for k in ("average_accuracy", "average_forgetting")},
        })  # fmt: skip
    return {
        "runs": [Path(r["run"]).name for r in runs],
        "seeds": [r["seed"] for r in runs],
        "method": runs[0]["method"],
        "matrix": np.mean(mats, 0).tolist(),
        **{k: float(np.mean(v)) for k, v in per.items()},
        **{f"{k}_per_run": v for k, v in per.items()},
        "wise": wise,
    }


_FROM = {"initial": "initial weights", "first_stage": "stage 0's model"}


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cell(mean: float | None, per: Sequence[float | None]) -> str:
    return _num(mean) + (f" ({', '.join(_num(p) for p in per)})" if len(per) > 1 else "")


def format_continual(report: dict[str, Any]) -> str:
    """The markdown tables of a :func:`continual_report`: one row per setting (and WiSE-FT α), then
    the mean accuracy matrix of each setting."""
    lines = [
        f"Zero-shot top-1 on the `{report['split']}` split, predictions among the `{report['candidates']}` "
        "classes; mean over runs (per-run values in parentheses).",
        "",
        "| setting | runs | final average accuracy | average forgetting "
        "| final accuracy per stage's classes |",
        "|---|---:|---|---|---|",
    ]
    for name, g in report["settings"].items():
        final = g["matrix"][-1]
        lines.append(
            f"| {name} | {len(g['runs'])} | {_cell(g['average_accuracy'], g['average_accuracy_per_run'])} | "
            f"{_cell(g['average_forgetting'], g['average_forgetting_per_run'])} | "
            + " / ".join(_num(x, 2) for x in final)
            + " |"
        )
        for w in g["wise"]:
            lines.append(
                f"| {name} + WiSE-FT α={w['alpha']:g} (θ₀: {_FROM[report['wise_from']]}) "
                f"| {len(g['runs'])} | "
                f"{_cell(w['average_accuracy'], w['average_accuracy_per_run'])} | "
                f"{_cell(w['average_forgetting'], w['average_forgetting_per_run'])} | "
                + " / ".join(_num(x, 2) for x in w["accuracies"])
                + " |"
            )
    for name, g in report["settings"].items():
        n = len(g["matrix"])
        lines += ["", f"Accuracy matrix of **{name}** (row: after stage l; column: stage j's classes):", ""]
        lines.append("| after stage | " + " | ".join(f"j={j}" for j in range(n)) + " |")
        lines.append("|---:|" + "---:|" * n)
        for t, row in enumerate(g["matrix"]):
            lines.append(
                f"| {t} | " + " | ".join(_num(x, 3) if j <= t else "" for j, x in enumerate(row)) + " |"
            )
    return "\n".join(lines) + "\n"


def plot_continual(report: dict[str, Any], path: str | Path) -> None:
    """One panel per setting: accuracy on each stage's classes (a line per stage j, from stage j on)
    over the stages, mean over runs; WiSE-FT's final accuracies (the α nearest 0.5) as diamonds right
    of the last stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = report["settings"]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.4), sharey=True, squeeze=False)
    for ax, (name, g) in zip(axes[0], groups.items()):
        a = np.asarray(g["matrix"], dtype=np.float64)
        n = len(a)
        shown = min(g["wise"], key=lambda w: abs(w["alpha"] - 0.5)) if g["wise"] else None  # α nearest 0.5
        for j in range(n):
            colour = plt.cm.viridis(j / max(n - 1, 1))
            ax.plot(range(j, n), a[j:, j], marker="o", ms=3, color=colour, label=f"stage {j}'s classes")
            if shown is not None:
                ax.plot([n - 0.6], [shown["accuracies"][j]], marker="D", ms=4, color=colour, ls="none")
        title = name
        if shown is not None:
            title += f"\n(◆ WiSE-FT α={shown['alpha']:g}, θ₀: {_FROM[report['wise_from']]})"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("after stage")
        ax.set_xticks(range(n))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("zero-shot top-1 (fraction correct)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="lower center", ncol=len(names), bbox_to_anchor=(0.5, -0.14))
    save_png(fig, path, dpi=120, tight=True)
