"""The class prompts a ``class_prompts`` run encodes every step (CoOp's cross-entropy objective).

The loss (:mod:`contrastkit.losses.class_prompts`) classifies each image against the text
embeddings of one prompt per class of ``data.label_task``. The prompts' token ids are made once, at
the start of a run, from the training set's class names and the loss's ``template`` (tokenised by
the model, so a ``model.towers.text.prompt`` context is put in front of each); the trainer encodes
them with the text tower every step (:func:`contrastkit.train.forward.embed_batch`) as the
embeddings ``classes``, so the context's gradient comes through every class's prompt. With
gradient caching (``scale.chunk_size``) the batch's images and captions run in chunks and the K
prompts once beside them, with an ordinary graph that ``loss.backward()`` goes through; that graph
(one batch of K prompts) is not part of ``scale.graph_memory``'s budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from contrastkit.core.errors import ConfigError
from contrastkit.data.loading import task_classnames
from contrastkit.losses.base import LOSSES, PairLoss

if TYPE_CHECKING:
    from contrastkit.data import Source
    from contrastkit.models import DualEncoder
    from contrastkit.train.config import RunConfig

__all__ = ["check_class_prompts", "class_prompt_ids", "reads_class_prompts"]


def reads_class_prompts(loss_name: str) -> bool:
    """Whether registered loss ``loss_name`` reads the class prompts' embeddings."""
    return loss_name in LOSSES.names() and getattr(LOSSES.get(loss_name), "reads_class_prompts", False)


def check_class_prompts(cfg: RunConfig) -> None:
    """Config-time checks of a ``class_prompts`` run: its labels, its towers, no terms."""
    if any(reads_class_prompts(name) for name in cfg.loss.terms):
        raise ConfigError("class_prompts is a loss of its own, not a term of loss.terms: use loss.name")
    if cfg.loss.terms or not reads_class_prompts(cfg.loss.name):
        return
    if cfg.data.label_task is None:
        raise ConfigError(
            "loss class_prompts classifies images by class: set data.label_task (e.g. shape+color)"
        )
    missing = [m for m in ("image", "text") if m not in cfg.model.towers]
    if missing:
        raise ConfigError(f"loss class_prompts needs image and text towers; model.towers lacks {missing}")


def class_prompt_ids(
    cfg: RunConfig, loss: PairLoss, model: DualEncoder, train_set: Source, device: torch.device
) -> torch.Tensor | None:
    """Token ids ``[K, L]`` of the K class prompts of a ``class_prompts`` run (``None`` for any
    other loss); every rank encodes all of them (the loss's ``shared_inputs``)."""
    if not getattr(loss, "reads_class_prompts", False):
        return None
    names = task_classnames(train_set, cfg.data.label_task, "loss class_prompts")
    return model.tokenize(loss.prompts(list(names))).to(device)  # type: ignore[operator]
