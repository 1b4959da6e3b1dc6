"""The frozen teacher of a distillation run (``model.teacher: <run folder>``).

What: a student run trains on the same batches its teacher embeds. The teacher is the newest
checkpoint of a contrastkit run, loaded once (:func:`~contrastkit.train.teacher.load_teacher`),
frozen (no parameter requires gradient) and kept in eval mode; it is not part of the student's
model, so it is neither optimised nor checkpointed. Every step, before the loss, the trainer puts
its embeddings of the step's pair of modalities in the batch fields ``teacher_x`` / ``teacher_y``
(:data:`~contrastkit.losses.distill.DISTILL_FIELDS`), which the ``distill`` loss (alone or as a term)
reads. Checked before any data is read: the folder is a run with a checkpoint, the loss uses the
fields (and a loss that uses them has a teacher), one process, no gradient caching; when the run
starts: the teacher encodes the student's modalities and tokenises its captions to the same ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from contrastkit.core.errors import ConfigError
from contrastkit.losses.base import LossTerm, declared_fields
from contrastkit.losses.distill import DISTILL_FIELDS
from contrastkit.models.dual_encoder import DualEncoder
from contrastkit.train.config import RunConfig
from contrastkit.train.teacher import check_frozen_run, frozen_run

__all__ = ["check_distill", "frozen_teacher", "teacher_fields", "uses_teacher"]


def uses_teacher(cfg: RunConfig) -> bool:
    """Whether the configured loss (or one of its terms) reads the teacher's embeddings."""
    terms = cfg.loss.terms or {cfg.loss.name: LossTerm(params=cfg.loss.params)}
    return any(set(DISTILL_FIELDS) <= declared_fields(name) for name in terms)


def check_distill(cfg: RunConfig) -> None:
    """Refuse a teacher no loss reads, a distillation loss without a teacher, a teacher folder that is
    not a trained run, and the settings the teacher's batch fields do not follow."""
    teacher, used = cfg.model.teacher, uses_teacher(cfg)
    if teacher is None:
        if used:
            raise ConfigError(
                "the loss distills from a teacher but model.teacher is not set: give a contrastkit run folder"
            )
        return
    if not used:
        raise ConfigError(
            f"model.teacher is set but loss {cfg.loss.name if not cfg.loss.terms else list(cfg.loss.terms)} "
            "does not use the teacher's embeddings: use loss distill (alone or as a term)"
        )
    check_frozen_run(cfg, teacher, "model.teacher", "distillation")


def frozen_teacher(
    cfg: RunConfig,
    model: DualEncoder,
    captions: Sequence[Sequence[str]] | None,
    world: int,
    device: torch.device,
) -> DualEncoder | None:
    """The teacher of ``cfg.model.teacher`` on ``device``, frozen and in eval mode (``None``: no teacher)."""
    if cfg.model.teacher is None:
        return None
    if world > 1:
        raise ConfigError(
            "distillation (model.teacher) runs on one process: the teacher's fields are not gathered"
        )
    pair = model.modalities[:2] if len(model.modalities) > 1 else model.modalities
    return frozen_run(cfg.model.teacher, "model.teacher", model, pair, captions, device)


@torch.no_grad()
def teacher_fields(
    teacher: DualEncoder, batch: Mapping[str, torch.Tensor], pair: Sequence[str]
) -> dict[str, torch.Tensor]:
    """``{"teacher_x": …, "teacher_y": …}``: the teacher's embeddings (float32, no gradient) of the
    batch's two modalities ``pair`` (the student's x and y)."""
    teacher.eval()  # whatever a caller did: batch-norm statistics and dropout stay frozen
    if len(pair) == 1:  # one tower: the modality against its view 1, as the trainer's pair loss
        pair = (pair[0], f"{pair[0]}@1")
    x, y = (teacher.encode(m, batch[m]).float() for m in pair)
    return dict(zip(DISTILL_FIELDS, (x, y)))
