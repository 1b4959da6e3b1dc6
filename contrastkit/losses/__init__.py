"""The objective zoo: pure loss functions over embeddings plus thin modules, selectable by name.

>>> from contrastkit import losses
>>> loss = losses.build("siglip", init_bias=-10.0)
>>> losses.names()
['clip', 'siglip']
"""

from __future__ import annotations

from typing import Any

from contrastkit.losses.base import LOSSES, LossConfig, PairLoss
from contrastkit.losses.clip import CLIPLoss, clip_loss
from contrastkit.losses.siglip import SigLIPLoss, siglip_loss

__all__ = [
    "LOSSES",
    "CLIPLoss",
    "LossConfig",
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
    return LOSSES.build(cfg.name, **cfg.params)


def names() -> list[str]:
    return LOSSES.names()
