"""The study report: per-setting estimates, comparisons with Multi-Bootstrap CIs and p-values,
learning curves with bands over seeds — ``report.md``, PNG plots and ``results.parquet``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.core.errors import ContrastkitError, InputError
from contrastkit.core.io import atomic_path, atomic_write_text
from contrastkit.studies.config import Setting, StudyConfig
from contrastkit.studies.multibootstrap import BootstrapResult, Runs, multibootstrap
from contrastkit.studies.runner import RunSpec

__all__ = ["build_report", "load_scores"]


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


def _label(setting: Setting) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting)


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
    return base_s[0], expt_s[0], res


def _per_setting(study: StudyConfig, specs: Sequence[RunSpec], scores) -> dict[Setting, BootstrapResult]:
    out = {}
    for setting in study.settings():
        rows = [s for s in specs if s.setting == setting]
        sc = np.stack([scores[r.name] for r in rows])
        seeds = [r.seed for r in rows]
        both = Runs(seeds + seeds, [False] * len(rows) + [True] * len(rows), np.concatenate([sc, sc]))
        out[setting] = multibootstrap(both, paired=True, nboot=study.nboot, level=study.level)
    return out


def _forest(comparisons, path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, max(2.8, 0.6 * len(comparisons) + 1.6)))
    for i, (_, res) in enumerate(comparisons):
        d = res.delta
        ax.errorbar(d.mean, i, xerr=[[d.mean - d.low], [d.high - d.mean]], fmt="o", capsize=4, color="C0")
        ax.text(d.high, i + 0.18, f" p={res.p_value:.3g}", fontsize=8)
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(range(len(comparisons)), [label for label, _ in comparisons], fontsize=8)
    ax.set_xlabel(
        f"difference in {metric} (intervention − baseline), {int(100 * comparisons[0][1].level)}% CI"
    )
    ax.set_title("Multi-Bootstrap comparisons (seeds × examples)", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


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
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel(study.metric)
        ax.set_title("learning dynamics: mean over seeds, band = min–max", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return drawn


def _parquet(specs: Sequence[RunSpec], scores, study: StudyConfig, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list[Any]] = {"run": [], "seed": [], "metric": [], "value": [], "n_examples": []}
    for k in study.grid:
        cols[k] = []
    for s in specs:
        cols["run"].append(s.name)
        cols["seed"].append(s.seed)
        cols["metric"].append(study.metric)
        cols["value"].append(float(scores[s.name].mean()))
        cols["n_examples"].append(int(scores[s.name].size))
        for k, v in s.setting:
            cols[k].append(str(v))
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(cols), str(tmp))


def build_report(
    study: StudyConfig, specs: Sequence[RunSpec], root: Path, wall_seconds: float | None = None
) -> Path:
    """Write report.md, forest.png, curves.png and results.parquet under ``root``."""
    t0 = time.perf_counter()
    scores = {s.name: load_scores(s, study.metric) for s in specs}
    per_setting = _per_setting(study, specs, scores)
    comps = []
    for c in study.comparisons:
        b, e, res = _compare(study, specs, c, scores)
        comps.append((f"{_label(e)}  vs  {_label(b)}", res))
    if comps:
        _forest(comps, root / "forest.png", study.metric)
    has_curves = _curves(study, specs, root / "curves.png")
    _parquet(specs, scores, study, root / "results.parquet")
    lines = [
        f"# Study `{study.name}`",
        "",
        f"Metric: `{study.metric}` on split `{study.split}` ({next(iter(scores.values())).size} examples); "
        f"seeds {list(study.seeds)}; Multi-Bootstrap over seeds × examples, {study.nboot} replicates, "
        f"{int(100 * study.level)}% percentile intervals; p = one-sided share of replicates on the "
        f"wrong side (floored at 1/{study.nboot}).",
        "",
    ]
    lines += [
        "## Settings",
        "",
        f"| setting | mean over seeds | {int(100 * study.level)}% CI | per-seed values |",
        "|---|---:|---|---|",
    ]
    for setting, res in per_setting.items():
        vals = ", ".join(f"{scores[s.name].mean():.3f}" for s in specs if s.setting == setting)
        ci = f"[{res.base.low:.4f}, {res.base.high:.4f}]"
        lines.append(f"| {_label(setting)} | {res.base.mean:.4f} | {ci} | {vals} |")
    if comps:
        lines += [
            "",
            "## Comparisons",
            "",
            "| intervention vs baseline | δ | CI | p | paired |",
            "|---|---:|---|---:|---|",
        ]
        for label, res in comps:
            d = res.delta
            lines.append(
                f"| {label} | {d.mean:+.4f} | [{d.low:+.4f}, {d.high:+.4f}] | {res.p_value:.4g} | "
                f"{'yes' if res.paired else 'no'} ({res.n_seeds[0]} seeds) |"
            )
        lines += ["", "![forest plot](forest.png)"]
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
