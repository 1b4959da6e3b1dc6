"""T-CONTINUAL, the memory and the teacher: what a continual stage replays and contrasts with.

Files of a continual run (:mod:`contrastkit.train.continual`), each written once, atomically, by the
stage loop before the stage that needs it: ``RUN_DIR/memory/ranking-<t>.npz`` (per class of stage
``t``, its items in memory order: ``random`` or iCaRL ``herding`` on stage ``t``'s final model's
L2-normalised image embeddings, evaluation transform; :mod:`contrastkit.data.rehearsal`) and
``RUN_DIR/memory/memory-<t>.npy`` (the item indices stage ``t`` replays: ``M`` items split evenly
over the classes of stages ``0 … t−1``, each class's first ``quota`` ranked items). The teacher of
a coconut stage ``t ≥ 1`` (:class:`StageTeacher`) is stage ``t−1``'s final checkpoint, rebuilt in eval
mode by every session of stage ``t``, fresh or resumed, so resume needs no copy of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.core.io import atomic_path
from contrastkit.core.runtime import resolve_device
from contrastkit.data.pairs import PairSet
from contrastkit.data.rehearsal import REHEARSAL_KEY, assemble_memory, select_class
from contrastkit.data.table import PairTable
from contrastkit.losses.coconut import TEACHER_KEY
from contrastkit.train.distributed import DistContext

if TYPE_CHECKING:
    from contrastkit.models.dual_encoder import DualEncoder
    from contrastkit.train.config import RunConfig
    from contrastkit.train.continual import ContinualConfig

__all__ = [
    "StageTeacher",
    "memory_path",
    "memory_size",
    "stage_dirs",
    "stage_teacher",
    "write_memory",
]


def _cont(cfg: RunConfig) -> ContinualConfig:
    if cfg.continual is None:
        raise ConfigError(f"run {cfg.name!r} has no continual section: it is not a continual run")
    return cfg.continual


def stage_dirs(run_dir: str | Path, cont: ContinualConfig) -> list[Path]:
    """The run folder of every stage: ``RUN_DIR/stage-<t>``."""
    return [Path(run_dir) / f"stage-{t}" for t in range(len(cont.stages))]


def memory_path(run_dir: str | Path, stage: int) -> Path:
    """The memory (item indices) stage ``stage`` (>= 1) replays."""
    return Path(run_dir) / "memory" / f"memory-{stage}.npy"


def _ranking_path(run_dir: Path, stage: int) -> Path:
    return run_dir / "memory" / f"ranking-{stage}.npz"


def memory_size(cont: ContinualConfig, n_train: int) -> int:
    """``M``: ``memory_size``, else ``round(memory_fraction · n_train)``; 0 for ``finetune``."""
    if not cont.replays:
        return 0
    return cont.memory_size if cont.memory_size is not None else round(cont.memory_fraction * n_train)


def _save(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


def _features(
    root: Path, cfg: RunConfig, stage: int, source: PairSet | PairTable, items: np.ndarray
) -> np.ndarray:
    """Stage ``stage``'s L2-normalised image embeddings of ``items`` (what herding ranks)."""
    from contrastkit.train.multistage import embed_images
    from contrastkit.train.trainer import load_run

    cont = _cont(cfg)
    model = load_run(stage_dirs(root, cont)[stage])[1].to(resolve_device(cfg.train.device))
    if isinstance(source, PairSet):
        return embed_images(model, source.subset(items), cfg.data.image, cont.embed_batch)
    return embed_images(model, source, cfg.data.image, cont.embed_batch)[items]


def _rank_stage(root: Path, cfg: RunConfig, stage: int, source: PairSet | PairTable, size: int) -> None:
    """Rank the items of stage ``stage``'s classes for the memory (once; module docstring, step 2)."""
    cont = _cont(cfg)
    task = source.tasks[cont.task]
    seen = sum(len(s) for s in cont.stages[: stage + 1])
    k = math.ceil(size / seen)  # the largest quota this class will ever have
    ids = [task.classnames.index(name) for name in cont.stages[stage]]
    members = {c: np.flatnonzero(task.labels == c) for c in ids}
    every = np.concatenate(list(members.values()))
    feats = _features(root, cfg, stage, source, every) if cont.selection == "herding" else None
    ranked, at = {}, 0  # the stage's items in one pass with its final model, sliced per class
    for c, items in members.items():
        f = None if feats is None else feats[at : at + len(items)]
        ranked[str(c)] = select_class(items, k, cont.selection, seed=cfg.train.seed, label=c, features=f)
        at += len(items)
    _save(_ranking_path(root, stage), lambda fh: np.savez(fh, **ranked))


def write_memory(root: Path, cfg: RunConfig, stage: int, ctx: DistContext) -> None:
    """Write the memory stage ``stage`` replays (ranking stage ``stage−1`` first) unless it exists."""
    cont = _cont(cfg)
    if ctx.main and not memory_path(root, stage).is_file():
        from contrastkit.data import open_split

        source = open_split(cfg.data, cfg.data.train_split)
        if not isinstance(source, (PairSet, PairTable)):
            raise ConfigError(f"continual needs an indexed training set, got {type(source).__name__}")
        if cont.task not in source.tasks:
            raise ConfigError(
                f"continual.task {cont.task!r} is not a task of the data; it has {sorted(source.tasks)}"
            )
        size = memory_size(cont, len(source))
        if not _ranking_path(root, stage - 1).is_file():
            _rank_stage(root, cfg, stage - 1, source, size)
        rankings: dict[int, np.ndarray] = {}
        for s in range(stage):
            with np.load(_ranking_path(root, s)) as z:
                rankings.update({int(c): z[c] for c in z.files})
        names = source.tasks[cont.task].classnames
        seen = [names.index(c) for s in cont.stages[:stage] for c in s]
        memory = assemble_memory(rankings, seen, size)
        _save(memory_path(root, stage), lambda fh: np.save(fh, memory))
    ctx.barrier()


class StageTeacher:
    """The previous stage's model, frozen in eval mode: the features the NSC term contrasts with.

    :meth:`embed` gives ``{"image:teacher": [B, d]}`` row-aligned with the batch: the teacher's
    image embeddings of the ``rehearsal`` rows, zeros elsewhere (never read)."""

    def __init__(self, model: DualEncoder, checkpoint: Path) -> None:
        self.model, self.checkpoint = model.eval().requires_grad_(False), checkpoint

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows = batch.get(REHEARSAL_KEY)
        images = batch["image"]
        if rows is None or not bool(rows.any()):
            return {}
        feats = self.model.encode("image", images[rows]).float()
        out = feats.new_zeros(len(images), feats.shape[1])
        out[rows] = feats
        return {TEACHER_KEY: out}


def stage_teacher(cfg: RunConfig, device: torch.device) -> StageTeacher | None:
    """The teacher of a coconut stage ``t ≥ 1``: stage ``t−1``'s final checkpoint (``train.init_from``
    of the stage config), rebuilt the same on a fresh start and on resume; ``None`` otherwise."""
    cont = cfg.continual
    if cont is None or not cont.stage or cont.method != "coconut" or cont.lambda_nsc == 0:
        return None
    from contrastkit.models.dual_encoder import build_model
    from contrastkit.train.checkpoint import latest_checkpoint, load_weights
    from contrastkit.train.setup import load_run_config

    source = Path(str(cfg.train.init_from))
    ckpt = latest_checkpoint(source, fallback=False)  # the previous stage is finished: its final one
    model = build_model(load_run_config(source).model, assets_dir=source / "assets")
    load_weights(ckpt, model)
    return StageTeacher(model.to(device), ckpt)
