"""A study's metric against each grid axis: one panel per axis, one line per combination of the
other axes, the mean over seeds with its Multi-Bootstrap interval as error bars.

Protocol: for grid key ``k`` (a study's ``axes``), the settings are grouped by their values of the
other grid keys; each group is one line whose points are the group's settings in the grid order
of ``k``. A point is what the report's settings table shows for that setting: the plain mean over
seeds and the percentile interval of the per-setting Multi-Bootstrap (seeds × examples). Numeric
axes (all values int/float) are placed at their values, on a log₂ scale when all are positive and
span a factor of 4 or more (batch sizes, data sizes); any other axis (lists, dicts, strings) is
categorical, in grid order. Exactness: the points are the report's numbers, copied, not refitted.
Related: :mod:`contrastkit.studies.report` (calls :func:`plot_axes` and :func:`axes_markdown` for a
study's ``axes``), :mod:`contrastkit.studies.multibootstrap`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.core.errors import InputError
from contrastkit.core.io import save_png
from contrastkit.studies.config import Setting

__all__ = ["AxisLine", "Point", "axes_markdown", "axis_lines", "plot_axes", "value_label"]

Point = tuple[Setting, float, float, float]  # (setting, mean over seeds, CI low, CI high)


@dataclass(frozen=True)
class AxisLine:
    """One line of an axis panel: the settings that share ``others`` (the other keys' values),
    ordered by the axis value."""

    others: tuple[tuple[str, Any], ...]
    values: tuple[Any, ...]
    means: np.ndarray
    lows: np.ndarray
    highs: np.ndarray

    @property
    def label(self) -> str:
        return ", ".join(f"{k.rsplit('.', 1)[-1]}={value_label(v)}" for k, v in self.others) or "all"


def value_label(value: Any) -> str:
    """Short text of a grid value: lists and dicts flattened with ``+`` (``[32, 64]`` → ``32+64``)."""
    if isinstance(value, dict):
        return "+".join(f"{k}={value_label(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "+".join(value_label(v) for v in value)
    return str(value)


def axis_lines(grid: dict[str, list[Any]], points: Sequence[Point], key: str) -> list[AxisLine]:
    """The lines of the panel of grid key ``key``; ``points`` holds one entry per setting."""
    if key not in grid:
        raise InputError(f"axis {key!r} is not a grid key {sorted(grid)}")
    lines: list[AxisLine] = []
    groups: list[tuple[tuple[tuple[str, Any], ...], list[Point]]] = []  # values may be unhashable
    for point in points:
        others = tuple((k, v) for k, v in point[0] if k != key)
        for known, members in groups:
            if known == others:
                members.append(point)
                break
        else:
            groups.append((others, [point]))
    for others, members in groups:
        order = {repr(v): i for i, v in enumerate(grid[key])}
        members = sorted(members, key=lambda p: order[repr(dict(p[0])[key])])
        if len(members) != len(grid[key]):
            raise InputError(f"axis {key!r}: the line {others} has {len(members)} of {len(grid[key])} points")
        lines.append(
            AxisLine(
                others,
                tuple(dict(p[0])[key] for p in members),
                np.array([p[1] for p in members], dtype=float),
                np.array([p[2] for p in members], dtype=float),
                np.array([p[3] for p in members], dtype=float),
            )
        )
    return lines


def _positions(values: Sequence[Any]) -> tuple[np.ndarray, bool]:
    """x positions of the axis values and whether the axis is numeric."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        return np.array(values, dtype=float), True
    return np.arange(len(values), dtype=float), False


def plot_axes(
    grid: dict[str, list[Any]], points: Sequence[Point], keys: Sequence[str], metric: str, path: Path
) -> None:
    """One panel per key in ``keys``: the metric (mean over seeds, error bar = the interval)
    against that key, one line per combination of the other keys; written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not keys:
        raise InputError("plot_axes needs at least one axis")
    fig, axs = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 4.0), squeeze=False, layout="constrained")
    for ax, key in zip(axs[0], keys):
        lines = axis_lines(grid, points, key)
        x, numeric = _positions(grid[key])
        n = len(lines)
        for i, line in enumerate(lines):
            # dodge the lines a little so that their error bars do not hide each other
            shift = (i - (n - 1) / 2) * 0.04
            xs = x * 2**shift if numeric and (x > 0).all() else x + shift
            err = np.vstack([line.means - line.lows, line.highs - line.means])
            ax.errorbar(xs, line.means, yerr=err, marker="o", capsize=3, color=f"C{i}", label=line.label)
        if numeric and (x > 0).all() and x.max() / x.min() >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(x, [value_label(v) for v in grid[key]], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle("mean over seeds, error bar = Multi-Bootstrap interval", fontsize=9)
    save_png(fig, path, dpi=120)


def axes_markdown(grid: dict[str, list[Any]], points: Sequence[Point], keys: Sequence[str]) -> list[str]:
    """One markdown table per key: a row per line, a column per axis value, cells
    ``mean [low, high]``."""
    out: list[str] = []
    for key in keys:
        lines = axis_lines(grid, points, key)
        head = [value_label(v) for v in grid[key]]
        out += ["", f"`{key}`:", "", "| other keys | " + " | ".join(head) + " |"]
        out.append("|---|" + "---:|" * len(head))
        for line in lines:
            cells = [f"{m:.4f} [{lo:.4f}, {hi:.4f}]" for m, lo, hi in zip(line.means, line.lows, line.highs)]
            out.append(f"| {line.label} | " + " | ".join(cells) + " |")
    return out
