"""T-CONTINUAL — class-incremental training in stages, with a rehearsal memory and COCONUT's terms.

Spec form after Cappellazzo et al. 2024, "Continual Contrastive Spoken Language Understanding"
(COCONUT); UNVERIFIED (no public code), every number a parameter. ``continual:`` in a run config
turns the run into ``len(stages)`` ordinary runs in its folder, ``RUN_DIR/stage-<t>/``:

1. stage ``t`` trains on the items of its classes (``stages[t]``, names of the class task
   ``task``) plus, with ``method`` ``replay`` or ``coconut``, ``m`` rows of the rehearsal memory in
   every batch (sampler ``rehearsal``, :mod:`contrastkit.data.rehearsal`); stage ``t ≥ 1`` starts
   from stage ``t−1``'s final weights (and its loss state), with a fresh optimizer and schedule;
   ``train.steps`` is the TOTAL, split evenly over the stages (the remainder to the last);
2. after stage ``t``: the items of its classes are ranked (``selection`` ``random`` or iCaRL
   ``herding`` on stage ``t``'s L2-normalised image embeddings, evaluation transform) and saved as
   ``RUN_DIR/memory/ranking-<t>.npz``; the memory of stage ``t+1``, ``RUN_DIR/memory/memory-<t+1>.npy``,
   holds ``M`` items split evenly over every class seen so far (``M = memory_size``, or
   ``round(memory_fraction · N_train)``, default 1%);
3. ``coconut``: the loss becomes ``coconut`` around the configured pair loss (the main term on all
   rows, ``λ_nsc``·NSC on the rehearsal rows against the previous stage's frozen features,
   ``λ_mm``·the supervised image–text term on the current rows; :mod:`contrastkit.losses.coconut`);
   the teacher is stage ``t−1``'s newest (= final) checkpoint, rebuilt in eval mode by every stage
   session (:func:`stage_teacher`), so it needs no copy of its own. ``finetune``: no memory, the
   configured loss — the baseline that forgets.

Resume: each stage resumes exactly from its own checkpoints; memory files are written once and
the teacher is read from the previous stage's final checkpoint, so ``resume(RUN_DIR)`` continues
at the right stage and step with the same batches, memory and teacher (tested bit for bit). Stage
configs name the memory file and the previous stage by absolute path; resume re-points them at
the run folder where it is now. One process; one indexed source (built-in sets, file tables).
Forgetting is measured by :mod:`contrastkit.evaluation.continual` (``contrastkit continual``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from contrastkit.core.errors import ConfigError
from contrastkit.data.config import SamplerConfig
from contrastkit.data.rehearsal import SELECTIONS
from contrastkit.losses.base import LOSSES, LossConfig, MultiLoss
from contrastkit.train.distributed import DistContext
from contrastkit.train.replay import memory_path, memory_size, stage_dirs, write_memory
from contrastkit.train.stages import StagePlan, resume_staged, train_staged

if TYPE_CHECKING:
    from contrastkit.train.config import RunConfig
    from contrastkit.train.trainer import Callback, TrainResult

__all__ = [
    "METHODS",
    "ContinualConfig",
    "check_continual",
    "is_continual",
    "memory_path",
    "memory_size",
    "resume_continual",
    "stage_config",
    "stage_dirs",
    "train_continual",
]

METHODS = ("finetune", "replay", "coconut")


@dataclass(frozen=True)
class ContinualConfig:
    """``continual:`` (module docstring). ``stages``: class names per stage; ``task``: the class
    task they name (also the batch ``labels``); ``method``: ``finetune`` | ``replay`` | ``coconut``;
    ``memory_fraction`` / ``memory_size`` (items; overrides the fraction); ``selection``:
    ``random`` | ``herding``; ``memory_per_batch``: rehearsal rows per batch (null: the memory's
    share of the pooled data, at least 1); ``lambda_nsc``, ``lambda_mm``, ``nsc_temperature``,
    ``mm_temperature``, ``nsc_negatives`` (``teacher`` | ``student``): the coconut loss;
    ``embed_batch``: images per forward pass when embedding for herding. ``stage``: set by the
    stage loop in each stage's own config (null in the run's)."""

    stages: tuple[tuple[str, ...], ...] = ()
    task: str = "class"
    method: Literal["finetune", "replay", "coconut"] = "coconut"
    memory_fraction: float = 0.01
    memory_size: int | None = None
    selection: Literal["random", "herding"] = "random"
    memory_per_batch: int | None = None
    lambda_nsc: float = 0.1
    lambda_mm: float = 0.1
    nsc_temperature: float = 0.1
    mm_temperature: float = 0.1
    nsc_negatives: Literal["teacher", "student"] = "teacher"
    embed_batch: int = 256
    stage: int | None = None

    def __post_init__(self) -> None:
        if not self.stages or any(not s for s in self.stages):
            raise ConfigError(
                "continual.stages must list at least one stage, each a non-empty list of classes"
            )
        flat = [c for s in self.stages for c in s]
        repeated = sorted({c for c in flat if flat.count(c) > 1})
        if repeated:
            raise ConfigError(f"continual.stages: class(es) {repeated} appear in more than one stage")
        if self.method not in METHODS:
            raise ConfigError(f"continual.method must be one of {list(METHODS)}, got {self.method!r}")
        if self.selection not in SELECTIONS:
            raise ConfigError(
                f"continual.selection must be one of {list(SELECTIONS)}, got {self.selection!r}"
            )
        if self.nsc_negatives not in ("teacher", "student"):
            raise ConfigError(
                f"continual.nsc_negatives must be teacher or student, got {self.nsc_negatives!r}"
            )
        if not 0 <= self.memory_fraction < 1:
            raise ConfigError(f"continual.memory_fraction must be in [0, 1), got {self.memory_fraction}")
        for name in ("memory_size", "memory_per_batch"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"continual.{name} must be >= 0 or null, got {getattr(self, name)}")
        for name in ("lambda_nsc", "lambda_mm"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"continual.{name} must be finite and >= 0, got {getattr(self, name)}")
        for name in ("nsc_temperature", "mm_temperature"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"continual.{name} must be finite and > 0, got {getattr(self, name)}")
        if self.embed_batch < 1:
            raise ConfigError(f"continual.embed_batch must be >= 1, got {self.embed_batch}")
        if self.stage is not None and not 0 <= self.stage < len(self.stages):
            raise ConfigError(
                f"continual.stage must be in 0 … {len(self.stages) - 1} or null, got {self.stage}"
            )

    @property
    def replays(self) -> bool:
        """Whether stages after the first replay a memory."""
        return self.method != "finetune"


def is_continual(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is the folder of a continual run (not one of its stages)."""
    from contrastkit.train.setup import load_run_config

    if not (Path(run_dir) / "config.yaml").is_file():
        return False
    cont = load_run_config(run_dir).continual
    return cont is not None and cont.stage is None


def _cont(cfg: RunConfig) -> ContinualConfig:
    if cfg.continual is None:
        raise ConfigError(f"run {cfg.name!r} has no continual section: it is not a continual run")
    return cfg.continual


def _coconut_loss(cfg: RunConfig, cont: ContinualConfig) -> LossConfig:
    params = {
        "main": cfg.loss.name,
        "main_params": dict(cfg.loss.params),
        "nsc_weight": cont.lambda_nsc,
        "mm_weight": cont.lambda_mm,
        "nsc_temperature": cont.nsc_temperature,
        "mm_temperature": cont.mm_temperature,
        "nsc_negatives": cont.nsc_negatives,
    }
    return LossConfig(name="coconut", params=params)


def stage_config(cfg: RunConfig, run_dir: str | Path, stage: int) -> RunConfig:
    """The ordinary run config of stage ``stage`` of the continual run ``cfg`` in ``run_dir``."""
    cont = _cont(cfg)
    root, n = Path(run_dir), len(cont.stages)
    steps = cfg.train.steps // n + (cfg.train.steps % n if stage == n - 1 else 0)
    if not 0 <= stage < n or steps < 1:
        raise ConfigError(
            f"continual: stage {stage} is not trained (train.steps={cfg.train.steps}, {n} stages)"
        )
    params: dict = {"classes": list(cont.stages[stage]), "task": cont.task, "stage": stage}
    if cont.replays and stage >= 1:
        params["memory"] = str(memory_path(root, stage).resolve())
        if cont.memory_per_batch is not None:
            params["memory_per_batch"] = cont.memory_per_batch
    coconut = cont.method == "coconut"
    data = replace(cfg.data, sampler=SamplerConfig("rehearsal", params), label_task=cont.task)
    first = stage == 0
    train = replace(
        cfg.train,
        steps=steps,
        init_from=cfg.train.init_from if first else str((root / f"stage-{stage - 1}").resolve()),
        init_towers=cfg.train.init_towers if first else (),
    )
    return replace(
        cfg,
        name=f"stage-{stage}",
        out_dir=str(root),
        continual=replace(cont, stage=stage),
        data=data,
        loss=_coconut_loss(cfg, cont) if coconut else cfg.loss,
        train=train,
    )


def check_continual(cfg: RunConfig, world: int = 1) -> None:
    """What ``continual`` refuses before anything is trained."""
    cont = _cont(cfg)
    if world > 1:
        raise ConfigError("continual runs train on one process (the rehearsal rows are not gathered)")
    if cfg.data.sources or cfg.data.name == "webdataset":
        raise ConfigError("continual needs one indexed training set: not data.sources mixtures or webdataset")
    if cfg.data.sampler.name != "random":
        raise ConfigError(
            "continual sets the sampler of each stage; leave data.sampler at random, not "
            f"{cfg.data.sampler.name!r}"
        )
    if cfg.data.label_task not in (None, cont.task):
        raise ConfigError(
            f"continual: data.label_task {cfg.data.label_task!r} differs from continual.task {cont.task!r}"
        )
    cur = cfg.curation
    if cur.mcl is not None or cur.jest is not None or cur.noisy_pairs is not None:
        raise ConfigError(
            "continual does not combine with curation.mcl, curation.jest or curation.noisy_pairs"
        )
    if cfg.train.steps < len(cont.stages):
        raise ConfigError(
            f"continual: train.steps={cfg.train.steps} (the total) cannot give each of "
            f"{len(cont.stages)} stages a step"
        )
    if cont.method == "coconut":
        main = None if cfg.loss.terms else LOSSES.get(cfg.loss.name)
        if main is None or (isinstance(main, type) and issubclass(main, MultiLoss)):
            raise ConfigError(
                "continual.method coconut wraps one image–text pair loss (loss.name), not loss.terms "
                "or a multi-embedding loss"
            )
        if not {"image", "text"} <= set(cfg.model.towers):
            raise ConfigError("continual.method coconut needs an image and a text tower")
    if cont.selection == "herding" and cont.replays and "image" not in cfg.model.towers:
        raise ConfigError(
            "continual.selection herding ranks image embeddings: the model needs an image tower"
        )


def _plan(cfg: RunConfig, root: Path) -> StagePlan:
    """The stages of continual run ``cfg`` in ``root``: a memory written before each stage t ≥ 1
    (methods that replay one)."""
    cont = _cont(cfg)

    def prepare(t: int, ctx: DistContext) -> None:
        if cont.replays:
            write_memory(root, cfg, t, ctx)

    return StagePlan("continual", stage_dirs(root, cont), lambda t: stage_config(cfg, root, t), prepare)


def train_continual(
    cfg: RunConfig, *, overwrite: bool = False, callbacks: Sequence[Callback] = ()
) -> TrainResult:
    """Train every stage of ``cfg`` (``continual`` set) in ``cfg.out_dir/cfg.name``; what
    :func:`contrastkit.train.train` does for such a config. ``TrainResult.step``: steps of all stages."""
    check = lambda world: check_continual(cfg, world)  # noqa: E731
    return train_staged(cfg, lambda root: _plan(cfg, root), check, overwrite, callbacks)


def resume_continual(
    run_dir: str | Path, *, callbacks: Sequence[Callback] = (), steps: int | None = None
) -> TrainResult:
    """Continue a continual run at the stage and step where it stopped (stages resume exactly)."""
    from contrastkit.train.setup import load_run_config

    root = Path(run_dir)
    cfg = load_run_config(root)
    check = lambda world: check_continual(cfg, world)  # noqa: E731
    return resume_staged(root, cfg, _plan(cfg, root), check, steps, callbacks)
