"""Sy-CON's past model from an earlier run (``model.previous: <run folder>``, ``loss: sycon``).

What: the ``sycon`` loss (:mod:`contrastkit.losses.auc`) contrasts the current embeddings ``x, y`` of
a batch with a frozen past model's embeddings ``x̄, ȳ`` of the same batch (batch fields ``past_x``,
``past_y``). The past model is the newest checkpoint of a contrastkit run, loaded once with
:func:`~contrastkit.train.teacher.load_teacher` (as distillation's ``model.teacher`` and b3's
teacher are), frozen (no parameter requires gradient) and kept in eval mode. It is not part of the
trained model: not optimised, not in the checkpoints (the run's ``config.yaml`` records its path;
resume loads it again). Every step, before the loss, the trainer puts its embeddings of the step's
pair of inputs — the same two keys the pair loss contrasts (the model's first two modalities; a
one-tower model: the modality and its view 1, or views 0 and 1) — in ``past_x`` / ``past_y``
(:func:`~contrastkit.train.distill.teacher_fields`, float32, no gradient).

``pred_x`` / ``pred_y`` (the stability term's current → past-space predictor) are not filled: the
models here have no such predictor, and the loss's default is the identity predictor ``g_i = x_i``.

Checked before any data is read (:func:`check_previous`): the folder is a run with an intact
checkpoint, the loss reads the past fields and a loss that reads them has a previous run, no gradient
caching or tiling (the dense loss). When the run starts (:func:`frozen_previous`): one process (the
fields are not gathered), the previous model encodes this run's pair of modalities and tokenises
its captions to the same ids (it reads this run's token ids).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from contrastkit.core.errors import ConfigError
from contrastkit.losses.base import LossTerm, declared_fields
from contrastkit.models.dual_encoder import DualEncoder
from contrastkit.train.config import RunConfig
from contrastkit.train.distill import teacher_fields
from contrastkit.train.teacher import check_frozen_run, frozen_run

__all__ = ["PAST_FIELDS", "check_previous", "frozen_previous", "past_fields", "uses_previous"]

PAST_FIELDS = ("past_x", "past_y")


def uses_previous(cfg: RunConfig) -> bool:
    """Whether the configured loss (or one of its terms) reads the past model's embeddings."""
    terms = cfg.loss.terms or {cfg.loss.name: LossTerm(params=cfg.loss.params)}
    return any(set(PAST_FIELDS) <= declared_fields(name) for name in terms)


def check_previous(cfg: RunConfig) -> None:
    """Refuse a previous run no loss reads, a Sy-CON loss without one, a folder that is not a
    trained run, and gradient caching or tiling."""
    previous, used = cfg.model.previous, uses_previous(cfg)
    if previous is None:
        if used:
            raise ConfigError(
                "loss sycon needs the past model's embeddings (past_x, past_y): set model.previous to "
                "the folder of the earlier contrastkit run"
            )
        return
    if not used:
        what = list(cfg.loss.terms) if cfg.loss.terms else cfg.loss.name
        raise ConfigError(
            f"model.previous is set but loss {what} does not use the past model's embeddings: use sycon"
        )
    check_frozen_run(cfg, previous, "model.previous", "model.previous (sycon)")


def frozen_previous(
    cfg: RunConfig,
    model: DualEncoder,
    captions: Sequence[Sequence[str]] | None,
    world: int,
    device: torch.device,
) -> DualEncoder | None:
    """The model of ``cfg.model.previous`` on ``device``, frozen and in eval mode (``None``: unset)."""
    if cfg.model.previous is None:
        return None
    if world > 1:
        raise ConfigError("model.previous (sycon) runs on one process: the past embeddings are not gathered")
    needed = model.modalities[:2]  # a one-tower model: its views go through the same tower
    hint = " (e.g. continue from that run: train.init_from)"
    return frozen_run(cfg.model.previous, "model.previous", model, needed, captions, device, hint)


def past_fields(
    previous: DualEncoder, batch: Mapping[str, torch.Tensor], pair: Sequence[str]
) -> dict[str, torch.Tensor]:
    """``{"past_x": …, "past_y": …}``: the previous model's eval-mode embeddings (float32, no
    gradient) of the batch inputs ``pair`` — the keys the trainer's pair loss contrasts."""
    x, y = teacher_fields(previous, batch, pair).values()
    return dict(zip(PAST_FIELDS, (x, y)))
