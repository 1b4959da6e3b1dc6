"""Training curves of the report, drawn with matplotlib from ``metrics.jsonl``.

* :func:`scalar_series`: every numeric scalar a run logged, as ``(steps, values)`` sorted by step
  (a string such as ``skip_reason`` and booleans are left out; rows logged by callbacks at the
  same step as the trainer's row are merged by key, so nothing is dropped).
* :func:`plot_runs`: one panel per quantity — loss, logit scale, logit bias, learning rate,
  skipped steps, skipped samples, data wait next to the step's compute time, gradient norm,
  throughput, then every other key the run logged (``dynamics/*``, JEST scores, auxiliary loss
  terms) — with several runs overlaid in one panel (``--compare``). A quantity no run logged has
  no panel; more than ``max_panels`` quantities: the rest are named on the page.
* :func:`plot_settings`: for a study, the same quantities per setting: the mean over seeds as a
  line and the min–max over seeds as a band, on the steps every seed logged (the band of the
  study's own ``curves.png``, :mod:`contrastkit.studies.report`).

Figures are 100 dpi PNGs written atomically; axes are in the logged units (steps: optimizer
updates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.core.io import save_png

__all__ = ["Series", "panels", "plot_runs", "plot_settings", "scalar_series"]

Series = dict[str, tuple[np.ndarray, np.ndarray]]
_KNOWN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss",)),
    ("logit scale", ("logit_scale",)),
    ("logit bias", ("logit_bias",)),
    ("learning rate", ("lr",)),
    ("skipped steps (total)", ("skipped_total",)),
    ("skipped samples", ("skipped_samples",)),
    ("data wait vs step compute (s)", ("data_time", "step_time")),
    ("gradient norm", ("grad_norm",)),
    ("throughput (samples/s)", ("samples_per_s",)),
)
# per-setting study curves leave out what describes the machine, not the training
_MACHINE = {"data_time", "step_time", "samples_per_s", "skipped_total", "skipped_samples"}
_STYLES = ("-", "--", ":", "-.")


def scalar_series(rows: Sequence[Mapping[str, Any]]) -> Series:
    """``{key: (steps, values)}`` of every finite-or-NaN numeric value in ``rows``."""
    points: dict[str, dict[int, float]] = {}
    for row in rows:
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, int | float):
            continue
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            points.setdefault(key, {})[int(step)] = float(value)
    out: Series = {}
    for key, pts in points.items():
        steps = np.array(sorted(pts), dtype=np.int64)
        out[key] = steps, np.array([pts[s] for s in steps], dtype=np.float64)
    return out


def panels(keys: Sequence[str], max_panels: int = 18) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """``(panels, left out)``: the known groups first (module docstring), then one panel per
    other key in name order; ``skipped/<reason>`` counts join the skipped-samples panel."""
    present = set(keys)
    out: list[tuple[str, list[str]]] = []
    used: set[str] = set()
    for title, group in _KNOWN:
        members = [k for k in group if k in present]
        if group == ("skipped_samples",):
            members += sorted(k for k in present if k.startswith("skipped/"))
        if members:
            out.append((title, members))
            used.update(members)
    out += [(k, [k]) for k in sorted(present - used)]
    return out[:max_panels], [k for _, ks in out[max_panels:] for k in ks]


def _grid(n: int) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 2.9 * rows), squeeze=False, dpi=100)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    save_png(fig, path, dpi=None)


def plot_runs(runs: Mapping[str, Series], path: Path, max_panels: int = 18) -> tuple[list[str], list[str]]:
    """Curves of one run, or of several overlaid (colour: run; line style: key within a panel).
    Returns ``(panel titles, keys left out)``; no file when no run logged anything."""
    keys = sorted({k for s in runs.values() for k in s})
    chosen, left_out = panels(keys, max_panels)
    if not chosen:
        return [], left_out
    fig, axes = _grid(len(chosen))
    several = len(runs) > 1
    for ax, (title, members) in zip(axes, chosen):
        for i, (label, series) in enumerate(runs.items()):
            for j, key in enumerate(members):
                if key not in series:
                    continue
                steps, values = series[key]
                name = ", ".join(p for p in (label if several else "", key if len(members) > 1 else "") if p)
                ax.plot(steps, values, _STYLES[j % len(_STYLES)], color=f"C{i}", lw=1.2, label=name or None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if several or len(members) > 1:
            ax.legend(fontsize=6)
    _save(fig, path)
    return [t for t, _ in chosen], left_out


def plot_settings(settings: Mapping[str, Sequence[Series]], path: Path, max_panels: int = 9) -> list[str]:
    """Per setting (colour) the mean over its seeds (line) and the min–max band, for each logged
    quantity but the machine's timings and skip counts. Returns the keys drawn."""
    keys = sorted({k for runs in settings.values() for s in runs for k in s} - _MACHINE)
    keys = [k for k in ("loss", "logit_scale", "logit_bias", "lr", "grad_norm") if k in keys] + [
        k for k in keys if k not in ("loss", "logit_scale", "logit_bias", "lr", "grad_norm")
    ]
    drawn: list[tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]] = []
    for key in keys[:max_panels]:
        lines = []
        for label, runs in settings.items():
            series = [s[key] for s in runs if key in s]
            if not series:
                continue
            common = sorted(set.intersection(*(set(st.tolist()) for st, _ in series)))
            if not common:
                continue
            vals = np.stack([v[np.searchsorted(st, common)] for st, v in series])
            lines.append((f"{label} (n={len(series)})", np.array(common), vals))
        if lines:
            drawn.append((key, lines))
    if not drawn:
        return []
    fig, axes = _grid(len(drawn))
    for ax, (key, lines) in zip(axes, drawn):
        for i, (label, steps, vals) in enumerate(lines):
            ax.plot(steps, vals.mean(0), color=f"C{i}", lw=1.2, label=label)
            ax.fill_between(steps, vals.min(0), vals.max(0), color=f"C{i}", alpha=0.2, lw=0)
        ax.set_title(f"{key}: mean over seeds, band = min–max", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    _save(fig, path)
    return [k for k, _ in drawn]
