"""The driver shared by runs made of stages (``curation.mcl``: multistage MCL; ``continual``:
class-incremental stages): one run folder holding ordinary run folders ``stage-0``, ``stage-1``, …
trained one after another, each stage starting from the previous one's weights.

A staged run says what differs through a :class:`StagePlan` — its stage folders, which stages are
given rather than trained, what to write before stage t (MCL's group file, a rehearsal memory) and
stage t's run config — and this module does the rest the same way for both: the run folder and its
lock, refusing an existing folder unless resumed or overwritten, resuming each stage exactly where
it stopped (a stage whose folder exists resumes; the others start), re-pointing a moved folder's
saved paths (:func:`~contrastkit.train.rundir.reanchor_stage`), and one :class:`TrainResult` over
all stages (steps, skipped samples and seconds summed; the last stage's loss).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from contrastkit.core.config import to_dict
from contrastkit.core.errors import ConfigError
from contrastkit.core.io import check_writable_dir
from contrastkit.core.runtime import resolve_device
from contrastkit.train.distributed import DistContext, init_from_env
from contrastkit.train.rundir import RunLock, reanchor_stage, run_folder, start_folder

if TYPE_CHECKING:  # train.config imports the staged runs' configs: no cycle at run time
    from contrastkit.train.config import RunConfig
    from contrastkit.train.trainer import Callback, TrainResult

__all__ = ["StagePlan", "resume_staged", "run_stages", "train_staged"]


@dataclass(frozen=True)
class StagePlan:
    """What a staged run (``kind``: its name in messages) does at each stage ``t``: ``folders`` (one
    per stage), ``given(t)`` (a stage not trained here: MCL's ``stage0``), ``prepare(t, ctx)``
    (before every stage t ≥ 1: write its group file or memory) and ``config(t)`` (its run config)."""

    kind: str
    folders: Sequence[Path]
    config: Callable[[int], RunConfig]
    prepare: Callable[[int, DistContext], None]
    given: Callable[[int], bool] = lambda t: False


def run_stages(plan: StagePlan, root: Path, ctx: DistContext, callbacks: Sequence[Callback]) -> TrainResult:
    """Train or resume every stage of ``plan`` in order; one result for the whole run."""
    from contrastkit.train.trainer import TrainResult, resume, train

    results = []
    for t, folder in enumerate(plan.folders):
        if plan.given(t):
            continue  # a given run: not trained again
        if t >= 1:
            plan.prepare(t, ctx)
        if (folder / "config.yaml").is_file():
            if t >= 1:  # a moved run folder: its saved config points at the old files
                reanchor_stage(folder, plan.config(t), ctx)
            results.append(resume(folder, callbacks=callbacks))
        else:
            results.append(train(plan.config(t), overwrite=True, callbacks=callbacks))
    last = results[-1] if results else None
    return TrainResult(
        root,
        sum(r.step for r in results),
        last.last_loss if last else math.nan,
        sum(r.skipped for r in results),
        sum(r.seconds for r in results),
        already_finished=all(r.already_finished for r in results),
    )


def train_staged(
    cfg: RunConfig,
    plan: Callable[[Path], StagePlan],
    check: Callable[[int], None],
    overwrite: bool,
    callbacks: Sequence[Callback],
) -> TrainResult:
    """Start staged run ``cfg`` in ``cfg.out_dir/cfg.name`` (``check(world)`` first); ``plan(root)``
    gives its stages. An existing folder is refused unless ``overwrite``."""
    root = run_folder(cfg.out_dir, cfg.name)
    ctx = init_from_env(resolve_device(cfg.train.device))
    check(ctx.world)
    if ctx.main:
        check_writable_dir(cfg.out_dir)
    stages = plan(root)
    with RunLock(root) if ctx.main else nullcontext():
        message = (
            f"{stages.kind} run folder {root} already exists; resume it (contrastkit train --resume "
            f"{root}), pick another name (--name), or start it again with --overwrite"
        )
        config_yaml = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        start_folder(root, config_yaml, ctx, (root / "config.yaml").exists(), overwrite, message)
        return run_stages(stages, root, ctx, callbacks)


def resume_staged(
    root: Path,
    cfg: RunConfig,
    plan: StagePlan,
    check: Callable[[int], None],
    steps: int | None,
    callbacks: Sequence[Callback],
) -> TrainResult:
    """Continue staged run ``root`` (config ``cfg``) at the stage and step where it stopped. A new
    ``train.steps`` is refused: the stages' step budgets are fixed when the run starts."""
    if steps is not None:
        raise ConfigError(
            f"a {plan.kind} run cannot be given a new train.steps on resume; start a new run instead"
        )
    ctx = init_from_env(resolve_device(cfg.train.device))
    check(ctx.world)
    with RunLock(root) if ctx.main else nullcontext():
        if not (plan.folders[0].exists() or plan.given(0)):
            warnings.warn(f"{root} has no stage yet: starting it from stage 0", stacklevel=2)
        return run_stages(plan, root, ctx, callbacks)
