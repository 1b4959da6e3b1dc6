"""Typed configuration of the memory and distribution tricks of a run."""

from __future__ import annotations

from dataclasses import dataclass

from contrastkit.core.errors import ConfigError

__all__ = ["ScaleConfig"]


@dataclass(frozen=True)
class ScaleConfig:
    """How a contrastive batch larger than memory is computed — never *what* is computed.

    ``tile_size``: compute the loss in tiles of this many rows/columns (S-INFCL); ``null`` = dense.
    ``chunk_size``: run the towers on this many samples at a time with gradient caching
    (S-GRADCACHE); ``null`` = the whole batch at once.
    """

    tile_size: int | None = None
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("tile_size", "chunk_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"scale.{name} must be >= 1 or null, got {v}")
