"""The study report: per-setting estimates, comparisons with Multi-Bootstrap CIs and p-values,
learning curves with bands over seeds, the metric against each of the study's ``axes``
(:mod:`contrastkit.studies.axes`), the same tables for its ``extra_metrics`` — ``report.md``, PNG
plots and ``results.parquet``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.core.errors import ContrastkitError, InputError
from contrastkit.core.io import atomic_path, atomic_write_text, save_png
from contrastkit.core.progress import progress_bar
from contrastkit.studies.axes import axes_markdown, plot_axes, value_label
from contrastkit.studies.config import Setting, StudyConfig
from contrastkit.studies.multibootstrap import BootstrapResult, Runs, multibootstrap, seed_means
from contrastkit.studies.runner import RunSpec

__all__ = ["build_report", "load_scores", "plot_label"]


def load_scores(spec: RunSpec, metric: str) -> np.ndarray:
    path = spec.run_dir / "examples.npz"
    if not path.is_file():
        raise ContrastkitError(f"run {spec.name} has no per-example scores ({path}); run the study first")
    with np.load(path, allow_pickle=False) as z:
        key = metric.replace("/", "|")
        if key not in z:
            raise InputError(
                f"metric {metric!r} not in {path}; available: {sorted(k.replace('|', '/') for k in z)}"
            )
        return z[key]


def _unit(metric: str) -> str:
    """Axis unit of a per-example metric: top-k and recall@K scores are 0/1 hits, so their means
    are fractions of the examples; anything else is in the metric's own units."""
    last = metric.rsplit("/", 1)[-1]
    return "fraction of examples" if last.startswith("top") or "R@" in last else "metric units"


def _label(setting: Setting) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting)


def plot_label(baseline: Setting, intervention: Setting) -> str:
    """A comparison as the forest plot names it: the keys that change as ``key: before → after``,
    then the keys both settings share (``at key=value, …``); keys by their last dotted part and
    values as :func:`~contrastkit.studies.axes.value_label` writes them, so a grid over long
    config paths still leaves the plot its width (the tables keep the full names)."""
    before = dict(baseline)
    short = lambda k: k.rsplit(".", 1)[-1]  # noqa: E731
    changed = [k for k, v in intervention if k not in before or before[k] != v]
    head = "; ".join(
        f"{short(k)}: {value_label(before.get(k))} → {value_label(v)}"
        for k, v in intervention
        if k in changed
    )
    shared = ", ".join(f"{short(k)}={value_label(v)}" for k, v in intervention if k not in changed)
    return head + (f"\nat {shared}" if shared else "")


def _compare(study: StudyConfig, specs: Sequence[RunSpec], c, scores: dict[str, np.ndarray]):
    base_s = study.matching({**c.where, **c.baseline})
    expt_s = study.matching({**c.where, **c.intervention})
    if len(base_s) != 1 or len(expt_s) != 1:
        raise InputError(
            f"comparison {c.baseline} vs {c.intervention} where {c.where} must each match exactly one "
            f"setting; matched {len(base_s)} and {len(expt_s)} — add keys to 'where'"
        )
    rows = [s for s in specs if s.setting in (base_s[0], expt_s[0])]
    runs = Runs(
        [r.seed for r in rows],
        [r.setting == expt_s[0] for r in rows],
        np.stack([scores[r.name] for r in rows]),
    )
    res = multibootstrap(
        runs,
        paired=c.paired,
        nboot=study.nboot,
        level=study.level,
        expect_negative_effect=c.expect_negative_effect,
    )
    plain_b, plain_e = seed_means(runs, paired=c.paired)
    return base_s[0], expt_s[0], Estimate(plain_e - plain_b, res)


@dataclass(frozen=True)
class Estimate:
    """A setting's value or a comparison's δ: the plain mean over seeds (``plain``) next to the
    Multi-Bootstrap result, whose ``.mean`` is the mean of the replicates — an estimate of
    ``plain`` up to resampling noise, reported as "bootstrap estimate" so the two are not confused."""

    plain: float
    boot: BootstrapResult


def _per_setting(study: StudyConfig, specs: Sequence[RunSpec], scores) -> list[tuple[Setting, Estimate]]:
    out = []  # a list, not a dict: a setting value may be a dict (data.sampler: {...}), unhashable
    for setting in progress_bar(study.settings(), "report: settings", unit="setting"):  # bootstraps
        rows = [s for s in specs if s.setting == setting]
        sc = np.stack([scores[r.name] for r in rows])
        seeds = [r.seed for r in rows]
        both = Runs(seeds + seeds, [False] * len(rows) + [True] * len(rows), np.concatenate([sc, sc]))
        res = multibootstrap(both, paired=True, nboot=study.nboot, level=study.level)
        out.append((setting, Estimate(seed_means(both, paired=True)[0], res)))
    return out


def _forest(comparisons: Sequence[tuple[str, Estimate]], path: Path, metric: str) -> None:
    """One row per comparison: the interval (bar), δ as the plain mean over seeds (dot) and as the
    bootstrap estimate (cross), the p-value at the right edge inside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    n = len(comparisons)
    level = round(100 * comparisons[0][1].boot.level)
    fig, ax = plt.subplots(figsize=(7.5, 0.7 * n + 1.9), layout="constrained")
    for i, (_, est) in enumerate(comparisons):
        d, first = est.boot.delta, i == 0
        mid, half = (d.low + d.high) / 2, (d.high - d.low) / 2
        ci_label = f"{level}% Multi-Bootstrap interval" if first else None
        ax.errorbar(mid, i, xerr=half, fmt="none", capsize=4, color="C0", lw=2, label=ci_label)
        ax.plot(est.plain, i, "o", color="C0", label="δ: mean over seeds" if first else None)
        ax.plot(d.mean, i, "x", color="C3", label="δ: bootstrap estimate" if first else None)
    # fixed limits: the rows fill the height whatever their number (autoscaling a single row
    # left half the axes blank), and the right 30% of the x range stays free for the p-values
    lo = min(0.0, *(e.boot.delta.low for _, e in comparisons))
    hi = max(0.0, *(e.boot.delta.high for _, e in comparisons))
    span = (hi - lo) or 1e-3
    ax.set_xlim(lo - 0.05 * span, hi + 0.45 * span)
    ax.set_ylim(n - 0.5, -0.5)  # first comparison on top
    at_right = blended_transform_factory(ax.transAxes, ax.transData)
    for i, (_, est) in enumerate(comparisons):
        p = f"p = {est.boot.p_value:.3g}"
        ax.text(0.98, i, p, transform=at_right, ha="right", va="center", fontsize=8)
    ax.axvline(0, color="grey", lw=1, ls="--")
    labels = [label.replace("  vs  ", "\nvs  ") for label, _ in comparisons]  # full "A  vs  B" names
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_ylabel("intervention vs baseline")
    ax.set_xlabel(f"δ = intervention − baseline\n{metric} ({_unit(metric)})")
    # over the figure, not the axes: long setting labels push the axes right and an axes title
    # centred on them ran off the figure's right edge
    fig.suptitle("Multi-Bootstrap comparisons (seeds × examples), one-sided p", fontsize=10)
    fig.legend(loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    save_png(fig, path, dpi=120)


def _curves(study: StudyConfig, specs: Sequence[RunSpec], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from contrastkit.train.logger import read_metrics

    key = f"dynamics/{study.metric}"
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    drawn = False
    for i, setting in enumerate(study.settings()):
        series = []
        for r in (s for s in specs if s.setting == setting):
            pts = {row["step"]: row[key] for row in read_metrics(r.run_dir) if key in row}
            if pts:
                series.append(pts)
        steps = sorted(set.intersection(*(set(p) for p in series))) if series else []
        if not steps:
            continue
        vals = np.array([[p[s] for s in steps] for p in series])
        ax.plot(steps, vals.mean(0), color=f"C{i}", label=f"{_label(setting)} (n={len(series)})")
        ax.fill_between(steps, vals.min(0), vals.max(0), color=f"C{i}", alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("training step (optimizer updates)")
    ax.set_ylabel(f"{study.metric} ({_unit(study.metric)})")
    ax.set_title("learning dynamics: mean over seeds, band = min–max", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)
    return True


def _parquet(specs: Sequence[RunSpec], by_metric: dict[str, dict], study: StudyConfig, path: Path) -> None:
    """One row per (run, metric): the study's metric, then its extra metrics."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list[Any]] = {"run": [], "seed": [], "metric": [], "value": [], "n_examples": []}
    for k in study.grid:
        cols[k] = []
    for metric, scores in by_metric.items():
        for s in specs:
            cols["run"].append(s.name)
            cols["seed"].append(s.seed)
            cols["metric"].append(metric)
            cols["value"].append(float(scores[s.name].mean()))
            cols["n_examples"].append(int(scores[s.name].size))
            for k, v in s.setting:
                cols[k].append(str(v))
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(cols), str(tmp))


_TERMS = (
    "*Mean over seeds*: the plain average of the per-seed values (each seed's mean over all "
    "examples). *Bootstrap estimate*: the mean of the {nboot} Multi-Bootstrap replicates; it "
    "estimates the same quantity and differs from the plain mean by resampling noise only. "
    "*CI*: the percentile interval of the replicates."
)


def _settings_table(
    study: StudyConfig, specs, scores, per_setting: list[tuple[Setting, Estimate]], title: str = "## Settings"
) -> list[str]:
    lines = [
        title,
        "",
        _TERMS.format(nboot=study.nboot),
        "",
        f"| setting | mean over seeds | bootstrap estimate | {round(100 * study.level)}% bootstrap CI "
        "| per-seed values |",
        "|---|---:|---:|---|---|",
    ]
    for setting, est in per_setting:
        vals = ", ".join(f"{scores[s.name].mean():.4f}" for s in specs if s.setting == setting)
        b = est.boot.base
        lines.append(
            f"| {_label(setting)} | {est.plain:.4f} | {b.mean:.4f} | [{b.low:.4f}, {b.high:.4f}] | {vals} |"
        )
    return lines


def _comparisons_table(
    study: StudyConfig, comps: Sequence[tuple[str, Estimate]], title: str = "## Comparisons"
) -> list[str]:
    lines = [
        "",
        title,
        "",
        "δ = intervention − baseline; mean over seeds, bootstrap estimate and CI as above "
        "(paired: over the seeds both settings ran).",
        "",
        f"| intervention vs baseline | δ mean over seeds | δ bootstrap estimate | "
        f"{round(100 * study.level)}% bootstrap CI | p (one-sided) | paired |",
        "|---|---:|---:|---|---:|---|",
    ]
    for label, est in comps:
        res, d = est.boot, est.boot.delta
        lines.append(
            f"| {label} | {est.plain:+.4f} | {d.mean:+.4f} | [{d.low:+.4f}, {d.high:+.4f}] | "
            f"{res.p_value:.4g} | {'yes' if res.paired else 'no'} ({res.n_seeds[0]} seeds) |"
        )
    return lines


_AXES_TEXT = (
    "Each cell: the mean over seeds [the per-setting bootstrap interval], as in the settings table; "
    "one row per combination of the other grid keys."
)


def _analyse(study: StudyConfig, specs: Sequence[RunSpec], metric: str):
    """Per-example scores of every run, per-setting estimates and the comparisons, for ``metric``."""
    scores = {s.name: load_scores(s, metric) for s in progress_bar(specs, "report: scores", unit="run")}
    per_setting = _per_setting(study, specs, scores)
    comps, short = [], []
    for c in progress_bar(study.comparisons, "report: comparisons", unit="comparison"):
        b, e, est = _compare(study, specs, c, scores)
        comps.append((f"{_label(e)}  vs  {_label(b)}", est))
        short.append(plot_label(b, e))
    return scores, per_setting, comps, short


def build_report(
    study: StudyConfig, specs: Sequence[RunSpec], root: Path, wall_seconds: float | None = None
) -> Path:
    """Write report.md, forest.png, curves.png, axes.png (with ``axes``) and results.parquet under
    ``root``; ``extra_metrics`` get their own settings and comparisons tables."""
    t0 = time.perf_counter()
    scores, per_setting, comps, short = _analyse(study, specs, study.metric)
    if comps:
        named = [(label, est) for label, (_, est) in zip(short, comps, strict=True)]
        _forest(named, root / "forest.png", study.metric)
    has_curves = _curves(study, specs, root / "curves.png")
    extras = {m: _analyse(study, specs, m) for m in study.extra_metrics}
    by_metric = {study.metric: scores, **{m: extras[m][0] for m in extras}}
    _parquet(specs, by_metric, study, root / "results.parquet")
    lines = [
        f"# Study `{study.name}`",
        "",
        f"Metric: `{study.metric}` on split `{study.split}` ({next(iter(scores.values())).size} examples); "
        f"seeds {list(study.seeds)}; Multi-Bootstrap over seeds × examples, {study.nboot} replicates, "
        f"{int(100 * study.level)}% percentile intervals; p = one-sided share of replicates on the "
        f"wrong side (floored at 1/{study.nboot}).",
        "",
    ]
    lines += _settings_table(study, specs, scores, per_setting)
    if comps:
        lines += _comparisons_table(study, comps)
        lines += ["", "![forest plot](forest.png)"]
    if study.axes:
        points = [(st, e.plain, e.boot.base.low, e.boot.base.high) for st, e in per_setting]
        plot_axes(study.grid, points, study.axes, study.metric, root / "axes.png")
        lines += ["", "## The metric against each axis", "", _AXES_TEXT]
        lines += [*axes_markdown(study.grid, points, study.axes), "", "![axes](axes.png)"]
    for metric, (m_scores, m_settings, m_comps, _) in extras.items():
        lines += ["", f"## Also measured: `{metric}`", ""]
        lines += _settings_table(study, specs, m_scores, m_settings, title="### Settings")
        if m_comps:
            lines += _comparisons_table(study, m_comps, title="### Comparisons")
    if has_curves:
        lines += [
            "",
            "## Learning dynamics",
            "",
            f"`{study.metric}` during training, on the first ≤ 500 examples of `{study.split}` "
            "(so the last point can differ a little from the table above, which uses the whole split).",
            "",
            "![curves](curves.png)",
        ]
    lines += [
        "",
        "## Reproduce and scale out",
        "",
        "Every run is an independent contrastkit run folder under `runs/`; "
        "`contrastkit study FILE --jobs N` runs N at a time and skips finished runs. On a cluster, "
        "launch one `contrastkit study FILE --only RUN` per run (or `contrastkit train --config ...`, "
        "itself multi-process with `torchrun`) on machines sharing this folder, then "
        "`contrastkit study FILE --report-only`.",
        "",
    ]
    if wall_seconds is not None:
        lines.append(
            f"Wall time of this study invocation: {wall_seconds / 60:.1f} min "
            f"(report {time.perf_counter() - t0:.1f} s)."
        )
    atomic_write_text(root / "report.md", "\n".join(lines) + "\n")
    return root / "report.md"
