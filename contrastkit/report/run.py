"""A run's report page — or two runs side by side (``--compare``).

What a run folder holds and where the page takes it from:

* ``config.yaml`` — shown verbatim (collapsible); with ``--compare`` also the keys whose values
  differ between the two configs (flattened ``section.key`` names).
* ``metrics.jsonl`` — the training scalars (:mod:`contrastkit.train.logger`): curves of every
  quantity logged (:func:`contrastkit.report.curves.plot_runs`), overlaid for two runs.
* The evaluation, first found of: ``eval.json`` (``contrastkit eval RUN``: metrics, model record,
  protocol, versions), ``metrics.json`` (its older form, the protocol holding model and
  versions), ``eval_metrics.json`` (a study run: flat metrics of the study's split, no
  protocol). None: the page says the run has not been evaluated and how to evaluate it; nothing
  is evaluated unless asked (``contrastkit report --evaluate``, :func:`contrastkit.report.build_report`).
* ``similarity.png``, ``plots/<split>/**.png``, ``plots/<split>/errors/failures.json`` and any
  other PNG at the top of the run folder (``wise.png`` …): copied and shown with captions
  (:mod:`contrastkit.report.tables`).

Related: :mod:`contrastkit.report.study` (a study's page links one such page per run).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contrastkit.report.curves import Series, plot_runs, scalar_series
from contrastkit.report.render import Assets, format_value
from contrastkit.report.tables import (
    compare_tables,
    config_diff,
    failures,
    gallery,
    metric_tables,
    protocol_view,
)

__all__ = [
    "EVAL_FILES",
    "RunData",
    "compare_view",
    "has_evaluation",
    "is_run",
    "last_logged",
    "read_run",
    "run_view",
    "study_split",
]

EVAL_FILES = ("eval.json", "metrics.json", "eval_metrics.json")  # in order of preference


@dataclass
class RunData:
    """What the report reads of one run folder (module docstring)."""

    path: Path
    name: str
    config_text: str
    config: Any
    rows: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    source: str  # the file the evaluation came from; "" when not evaluated
    notes: list[str] = field(default_factory=list)

    @property
    def series(self) -> Series:
        return scalar_series(self.rows)


def is_run(path: Path) -> bool:
    """A contrastkit run folder: it holds ``config.yaml``."""
    return (path / "config.yaml").is_file()


def has_evaluation(path: Path) -> bool:
    return any((path / f).is_file() for f in EVAL_FILES)


def _numbers(d: Any) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) for k in d)


def _evaluation(path: Path, split: str) -> tuple[dict[str, Any] | None, str, list[str]]:
    notes: list[str] = []
    for name in EVAL_FILES:
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            notes.append(f"{name} is unreadable ({err}); skipped")
            continue
        if name == "eval_metrics.json":  # a study run: flat {metric: value} of the study's split
            if _numbers(data):
                return {"metrics": {split: data}}, name, notes
        elif isinstance(data, dict) and _numbers(data.get("metrics")):
            metrics = {str(s): m for s, m in data["metrics"].items() if _numbers(m)}
            return {**data, "metrics": metrics}, name, notes
        notes.append(f"{name} does not hold metrics in the expected layout; skipped")
    return None, "", notes


def study_split(path: Path) -> str:
    """The split a study run's ``eval_metrics.json`` measured: from the study's ``report.md``
    (``STUDY/runs/RUN``), else ``"study split"``."""
    report = path.parent.parent / "report.md"
    if path.parent.name == "runs" and report.is_file():
        found = re.search(r"on split `([^`]+)`", report.read_text(encoding="utf-8", errors="replace"))
        if found:
            return found.group(1)
    return "study split"


def read_run(path: Path, split: str | None = None) -> RunData:
    """Read a run folder; ``split`` names the column of a study run's ``eval_metrics.json``
    (default: :func:`study_split`)."""
    from contrastkit.train.logger import read_metrics  # report sits above train

    text = (path / "config.yaml").read_text(encoding="utf-8", errors="replace")
    notes: list[str] = []
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        config = None
        notes.append(f"config.yaml is not valid YAML ({' '.join(str(err).split())}); shown as text")
    evaluation, source, more = _evaluation(path, split or study_split(path))
    return RunData(path, path.name, text, config, read_metrics(path), evaluation, source, notes + more)


def last_logged(rows: list[dict[str, Any]], key: str) -> Any:
    """The last value of ``key`` in a run's ``metrics.jsonl`` rows, as logged (an int stays one)."""
    return next((r[key] for r in reversed(rows) if key in r), None)


def _summary(run: RunData, series: Series) -> list[tuple[str, str]]:
    ckpts = sorted(p.name for p in (run.path / "checkpoints").glob("step_*") if p.is_dir())
    steps = max((int(s[0][-1]) for s in series.values() if len(s[0])), default=None)
    ev = run.evaluation or {}
    evaluated = ev.get("checkpoint") or (ev.get("model") or {}).get("checkpoint")
    rows = [
        ("run folder", str(run.path)),
        ("checkpoints", ", ".join(ckpts) or "none"),
        ("last logged step", format_value(steps)),
        ("final loss", format_value(last_logged(run.rows, "loss"))),
        ("skipped steps", format_value(last_logged(run.rows, "skipped_total"))),
        ("evaluation", run.source or "not evaluated"),
    ]
    return rows + ([("checkpoint evaluated", str(evaluated))] if evaluated else [])


def _figures(run: RunData, assets: Assets, prefix: str) -> tuple[dict[str, str] | None, list[dict[str, str]]]:
    """The similarity matrix, and the other PNGs at the top of the run folder."""
    sim = assets.copy(run.path / "similarity.png", f"{prefix}/similarity.png")
    similarity = {"src": sim, "caption": "image–text similarity of a held-out batch"} if sim else None
    others = []
    for png in sorted(run.path.glob("*.png")):
        link = assets.copy(png, f"{prefix}/{png.name}") if png.name != "similarity.png" else None
        if link:
            others.append({"src": link, "caption": png.stem.replace("_", " ")})
    return similarity, others


def run_view(run: RunData, assets: Assets, prefix: str, anchor: str = "run") -> dict[str, Any]:
    """Everything the page shows of one run (see ``templates/_macros.html.j2``, ``run_sections``)."""
    series = run.series
    curves = None
    if series:
        path, link = assets.target(f"{prefix}/curves.png")
        titles, left_out = plot_runs({run.name: series}, path)
        curves = {"src": link, "panels": titles, "left_out": left_out}
    fails, used = failures(run.path, assets, prefix)
    pics, notes = gallery(run.path, assets, prefix, used)
    similarity, others = _figures(run, assets, prefix)
    ev = run.evaluation
    return {
        "anchor": anchor,
        "name": run.name,
        "path": str(run.path),
        "config_text": run.config_text,
        "summary": _summary(run, series),
        "curves": curves,
        "evaluated": ev is not None,
        "source": run.source,
        "tables": metric_tables(ev["metrics"]) if ev else [],
        "protocol": protocol_view(ev) if ev else None,
        "similarity": similarity,
        "figures": others,
        "gallery": pics,
        "failures": fails,
        "notes": run.notes + notes,
    }


def compare_view(a: RunData, b: RunData, assets: Assets) -> dict[str, Any]:
    """Two runs: their metric tables side by side with ``Δ = B − A``, their curves overlaid, and the
    config keys that differ."""
    la, lb = (a.name, b.name) if a.name != b.name else (f"A: {a.name}", f"B: {b.name}")
    curves = None
    sa, sb = a.series, b.series
    if sa or sb:
        path, link = assets.target("compare/curves.png")
        titles, left_out = plot_runs({la: sa, lb: sb}, path)
        curves = {"src": link, "panels": titles, "left_out": left_out}
    notes = [
        f"{r.name} has not been evaluated: no metrics to compare" for r in (a, b) if r.evaluation is None
    ]
    tables = []
    if a.evaluation is not None and b.evaluation is not None:
        tables = compare_tables(a.evaluation["metrics"], b.evaluation["metrics"])
    return {
        "a": la,
        "b": lb,
        "curves": curves,
        "tables": tables,
        "config_diff": config_diff(a.config, b.config),
        "notes": notes,
    }
