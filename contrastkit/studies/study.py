"""``contrastkit study FILE``: plan the runs, run what is missing, write the report."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from contrastkit.core.config import from_dict, to_dict
from contrastkit.core.errors import ConfigError, ContrastkitError
from contrastkit.studies.config import RayConfig, StudyConfig, load_study
from contrastkit.studies.ray_executor import run_all_ray
from contrastkit.studies.report import build_report
from contrastkit.studies.runner import RunSpec, plan_runs, run_all

__all__ = ["check_plan", "run_study", "with_executor"]


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
    for metric in study.metrics:
        family = metric.split("/")[0]
        if family not in EVAL_TASKS:
            raise ConfigError(
                f"study metric {metric!r}: no evaluation task {family!r}; tasks: {EVAL_TASKS.names()}"
            )


def with_executor(
    study: StudyConfig, executor: str | None = None, ray: Mapping[str, Any] | None = None, jobs: int = 1
) -> StudyConfig:
    """``study`` with the executor and ``ray`` keys given on the command line (``None`` values:
    the study file's). Ray options or ``jobs > 1`` that the chosen executor would ignore are errors."""
    changes = {k: v for k, v in (ray or {}).items() if v is not None}
    options = from_dict(RayConfig, {**to_dict(study.ray), **changes}, "ray")
    chosen = executor or study.executor
    if chosen not in ("pool", "ray"):
        raise ConfigError(f"unknown study executor {chosen!r}; use pool (the default) or ray")
    if chosen == "pool" and changes:
        raise ConfigError(f"ray option(s) {sorted(changes)} apply only with --executor ray (executor: ray)")
    if chosen == "ray" and jobs != 1:
        raise ConfigError(
            f"--jobs {jobs} sizes the local process pool; with --executor ray the cluster's free "
            "resources and --ray-cpus-per-run/--ray-gpus-per-run decide how many runs train at once"
        )
    return dataclasses.replace(study, executor=chosen, ray=options)


def run_study(
    path: str | Path,
    jobs: int = 1,
    only: Sequence[str] = (),
    report_only: bool = False,
    executor: str | None = None,
    ray: Mapping[str, Any] | None = None,
) -> Path | None:
    """Run a study file; returns the report path (``None`` when ``only`` ran a subset).

    ``executor``: ``pool`` (local processes, ``jobs`` at a time) or ``ray`` (one Ray task per run,
    :mod:`contrastkit.studies.ray_executor`); ``None``: the study file's ``executor``. ``ray``: keys
    of the study's ``ray`` block to override (``address``, ``cpus_per_run``, ``gpus_per_run``,
    ``memory_per_run``, ``max_retries``)."""
    t0 = time.perf_counter()
    study, base = load_study(path)
    study = with_executor(study, executor, ray, jobs)
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
        if study.executor == "ray":
            failed = run_all_ray(specs_to_run, study, study.ray)
        else:
            failed = run_all(specs_to_run, study, jobs)
        if failed:
            raise ContrastkitError(f"{len(failed)} run(s) failed: {failed}; rerun the study to retry them")
    if only:
        return None
    report = build_report(study, specs, root, wall_seconds=time.perf_counter() - t0)
    print(f"wrote {report}, {root / 'forest.png'}, {root / 'results.parquet'}")
    return report
