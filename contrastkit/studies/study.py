"""``contrastkit study FILE``: plan the runs, run what is missing, write the report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from contrastkit.core.config import from_dict
from contrastkit.core.errors import ConfigError, ContrastkitError
from contrastkit.studies.config import StudyConfig, load_study
from contrastkit.studies.report import build_report
from contrastkit.studies.runner import RunSpec, plan_runs, run_all

__all__ = ["check_plan", "run_study"]


def check_plan(study: StudyConfig, specs: Sequence[RunSpec]) -> None:
    """Fail before any training: every run config must validate (unknown keys, bad values) and
    the metric must belong to an evaluation task family."""
    from contrastkit.evaluation import EVAL_TASKS
    from contrastkit.train import RunConfig

    for spec in specs:
        try:
            from_dict(RunConfig, spec.cfg)
        except ConfigError as exc:
            raise ConfigError(f"study run {spec.name}: {exc}") from exc
    family = study.metric.split("/")[0]
    if family not in EVAL_TASKS:
        raise ConfigError(
            f"study metric {study.metric!r}: no evaluation task {family!r}; tasks: {EVAL_TASKS.names()}"
        )


def run_study(
    path: str | Path, jobs: int = 1, only: Sequence[str] = (), report_only: bool = False
) -> Path | None:
    """Run a study file; returns the report path (``None`` when ``only`` ran a subset)."""
    t0 = time.perf_counter()
    study, base = load_study(path)
    root = Path(study.out_dir) / study.name
    specs = plan_runs(study, base, root)
    check_plan(study, specs)
    if only:
        unknown = sorted(set(only) - {s.name for s in specs})
        if unknown:
            raise ConfigError(f"unknown run(s) {unknown}; this study has: {[s.name for s in specs]}")
        specs_to_run = [s for s in specs if s.name in only]
    else:
        specs_to_run = specs
    if not report_only:
        failed = run_all(specs_to_run, study, jobs)
        if failed:
            raise ContrastkitError(f"{len(failed)} run(s) failed: {failed}; rerun the study to retry them")
    if only:
        return None
    report = build_report(study, specs, root, wall_seconds=time.perf_counter() - t0)
    print(f"wrote {report}, {root / 'forest.png'}, {root / 'results.parquet'}")
    return report
