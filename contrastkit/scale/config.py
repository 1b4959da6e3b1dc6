"""Typed configuration of the memory and distribution tricks of a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contrastkit.core.errors import ConfigError

__all__ = ["ScaleConfig"]


@dataclass(frozen=True)
class ScaleConfig:
    """How a contrastive batch larger than memory is computed — never *what* is computed.

    ``tile_size``: compute the loss in tiles of this many rows/columns (S-INFCL); ``null`` = dense.
    Losses with a tiled form: CLIP, SigLIP and the InfoNCE family of ``scale.tiled_zoo``.
    ``chunk_size``: run the towers on this many samples at a time with gradient caching
    (S-GRADCACHE); ``null`` = the whole batch at once.
    ``dist_loss`` (several processes, e.g. under ``torchrun``): ``local`` — gather embeddings with
    gradients, each rank computes its rows (exact, O(bN) logits); ``global`` — every rank the full
    N×N loss (exact); ``ring`` — SigLIP's ring exchange (exact, O(b²), SigLIP only).
    ``batch_size`` stays the global contrastive batch; each rank embeds ``batch_size / world``.
    """

    tile_size: int | None = None
    chunk_size: int | None = None
    dist_loss: Literal["local", "global", "ring"] = "local"

    def __post_init__(self) -> None:
        for name in ("tile_size", "chunk_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"scale.{name} must be >= 1 or null, got {v}")
