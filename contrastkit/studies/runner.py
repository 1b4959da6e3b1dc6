"""Run every (setting, seed) of a study — in parallel processes, skipping finished runs.

Each run is an ordinary contrastkit run folder under ``<out_dir>/<study>/runs/<slug>-s<seed>/``
(so ``contrastkit train --resume`` / ``contrastkit eval`` work on it), plus ``examples.npz`` with the
per-example scores of the study's split (what the Multi-Bootstrap resamples). A run is finished
when that file exists; an interrupted run is resumed from its newest checkpoint; so a killed study
restarts where it stopped.

Spreading a study over a cluster: every run is independent — launch
``contrastkit study FILE --only <slug>-s<seed>`` (or the underlying ``contrastkit train``) per
run on any machine sharing the folder, then ``contrastkit study FILE --report-only``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.core.config import from_dict
from contrastkit.core.errors import ContrastkitError
from contrastkit.core.io import atomic_path, atomic_write_json
from contrastkit.core.progress import progress_bar, progress_default
from contrastkit.studies.config import Setting, StudyConfig, run_config_dict, setting_slug

__all__ = ["RunSpec", "execute_run", "plan_runs", "run_all"]


@dataclass(frozen=True)
class RunSpec:
    setting: Setting
    seed: int
    name: str
    run_dir: Path
    cfg: dict[str, Any]

    @property
    def done(self) -> bool:
        return (self.run_dir / "examples.npz").is_file()


def plan_runs(study: StudyConfig, base: dict[str, Any], root: Path) -> list[RunSpec]:
    specs = []
    for setting in study.settings():
        for seed in study.seeds:
            name = f"{setting_slug(setting)}-s{seed}"
            cfg = run_config_dict(base, setting, seed, name, str(root / "runs"))
            specs.append(RunSpec(setting, seed, name, root / "runs" / name, cfg))
    return specs


def _dynamics_callback(study: StudyConfig, cfg, every: int):
    """Log the study metric on (up to 500 examples of) the split every ``every`` steps."""
    from contrastkit.data import load_split
    from contrastkit.evaluation import evaluate_examples, model_encoders

    pairs = load_split(cfg.data, study.split)
    pairs = pairs.subset(np.arange(min(len(pairs), 500)))
    family = study.metric.split("/")[0]

    def fn(step: int, model) -> dict[str, float]:
        _, ex = evaluate_examples(model_encoders(model), pairs, [family])
        return {f"dynamics/{study.metric}": float(ex[study.metric].mean())}

    return (every, fn)


def execute_run(spec: RunSpec, study: StudyConfig, threads: int) -> dict[str, Any]:
    """Train (or resume) one run, then save its per-example scores. Returns a summary row."""
    from contrastkit.data import load_split
    from contrastkit.evaluation import TASKS, evaluate_examples
    from contrastkit.evaluation.multistage import run_encoders
    from contrastkit.train import RunConfig, resume, train

    cfg = from_dict(RunConfig, spec.cfg)
    if cfg.train.threads:  # the run config's cap (train.threads: 1 on a shared machine) holds:
        threads = min(threads, cfg.train.threads)  # oversubscribed OpenMP threads stall each other
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads, progress=False))
    callbacks = [_dynamics_callback(study, cfg, study.dynamics_every)] if study.dynamics_every else []
    if (spec.run_dir / "config.yaml").is_file():  # resume: from its newest intact checkpoint, or step 0
        result = resume(spec.run_dir, callbacks=callbacks)
    else:
        result = train(cfg, overwrite=True, callbacks=callbacks)
    enc = run_encoders(spec.run_dir)[3]  # a multistage run: its stages concatenated
    families = [m.split("/")[0] for m in study.metrics]  # their tasks, even if not default (winoground)
    tasks = (*TASKS, *(f for f in dict.fromkeys(families) if f not in TASKS))
    metrics, examples = evaluate_examples(enc, load_split(cfg.data, study.split), tasks)
    lacking = [m for m in study.metrics if m not in examples]
    if lacking:
        raise ContrastkitError(f"metric(s) {lacking} not produced; available: {sorted(examples)}")
    atomic_write_json(spec.run_dir / "eval_metrics.json", metrics)
    with atomic_path(spec.run_dir / "examples.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k.replace("/", "|"): v for k, v in examples.items()})
    return {"name": spec.name, "seconds": result.seconds, study.metric: metrics.get(study.metric)}


def _worker(spec: RunSpec, study: StudyConfig, threads: int) -> tuple[str, str | None]:
    try:
        with progress_default(False):  # as train.progress=False here: only the study's bar shows
            execute_run(spec, study, threads)
        return spec.name, None
    except Exception:  # reported by the parent; the other runs go on
        return spec.name, traceback.format_exc()


def run_all(specs: Sequence[RunSpec], study: StudyConfig, jobs: int = 1) -> list[str]:
    """Run the unfinished specs, ``jobs`` at a time; returns the names that failed."""
    todo = [s for s in specs if not s.done]
    skipped = len(specs) - len(todo)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // max(jobs, 1))
    print(
        f"study {study.name}: {len(specs)} runs, {skipped} already finished, {len(todo)} to run "
        f"({jobs} at a time, {threads} thread(s) each at most; a run's train.threads caps it)"
    )
    failed = []
    bar = progress_bar(None, f"study {study.name}", total=len(todo), unit="run")
    if jobs <= 1:
        results = (_worker(s, study, threads) for s in todo)
        for name, err in results:
            bar.update(1)
            if err:
                failed.append(name)
                print(f"run {name} failed:\n{err}")
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_worker, s, study, threads) for s in todo]
            for fut in as_completed(futures):
                name, err = fut.result()
                bar.update(1)
                if err:
                    failed.append(name)
                    print(f"run {name} failed:\n{err}")
    bar.close()
    return failed
