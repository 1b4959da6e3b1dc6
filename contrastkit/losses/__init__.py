"""The objective zoo: pure loss functions over embeddings plus thin modules, selectable by name.

>>> from contrastkit import losses
>>> loss = losses.build("siglip", init_bias=-10.0)
>>> "supcon" in losses.names()
True

Importing this package registers every family (one module per family, pure function + module).
"""

from __future__ import annotations

from typing import Any

from contrastkit.losses.base import LOSSES, LossConfig, LossTerm, PairLoss
from contrastkit.losses.clip import CLIPLoss, clip_loss
from contrastkit.losses.composite import CompositeLoss
from contrastkit.losses.siglip import SigLIPLoss, siglip_loss

# Register every loss family (each module's @LOSSES.register runs at import).
from contrastkit.losses import (  # noqa: F401  isort: skip
    amcl,
    auc,
    class_prompts,
    classification,
    clustered,
    coconut,
    collossl,
    conditioned,
    dcl,
    distill,
    extra_negatives,
    generative,
    geometry,
    hard_negatives,
    infonce,
    kernel,
    labels,
    late_interaction,
    macl,
    margin,
    mlcd,
    mixup,
    mmp,
    mochi,
    momentum,
    multimodal,
    multiview,
    partial_labels,
    parts,
    prompt_views,
    self_distill,
    soft_targets,
    split_caption,
    ssl,
    supcon,
    swav,
    tcl,
    temperature,
    whitening,
    zerovl,
)

__all__ = [
    "LOSSES",
    "CLIPLoss",
    "CompositeLoss",
    "LossConfig",
    "LossTerm",
    "PairLoss",
    "SigLIPLoss",
    "build",
    "clip_loss",
    "from_config",
    "names",
    "siglip_loss",
]


def build(name: str, **params: Any) -> PairLoss:
    """Build the loss module registered as ``name``; unknown names/parameters raise clearly."""
    return LOSSES.build(name, **params)


def from_config(cfg: LossConfig) -> PairLoss:
    """The loss of a config: one registered loss, or a :class:`CompositeLoss` of ``cfg.terms``."""
    if not cfg.terms:
        return LOSSES.build(cfg.name, **cfg.params)
    terms = {}
    for name, term in cfg.terms.items():
        t = term if isinstance(term, LossTerm) else LossTerm(weight=float(term))
        terms[name] = (t.weight, LOSSES.build(name, **t.params))
    return CompositeLoss(terms)


def names() -> list[str]:
    return LOSSES.names()
