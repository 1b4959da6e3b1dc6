"""Typed configuration of the memory and distribution tricks of a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contrastkit.core.errors import ConfigError, InputError

__all__ = ["ScaleConfig"]


@dataclass(frozen=True)
class ScaleConfig:
    """How a contrastive batch larger than memory is computed — never *what* is computed.

    ``tile_size``: compute the loss in tiles of this many rows/columns (S-INFCL); ``null`` = dense.
    Losses with a tiled form: CLIP, SigLIP, the InfoNCE family of ``scale.tiled_zoo`` and
    ``scale.tiled_more`` (XMC, LLaVE, Kernel-InfoNCE; MoCo v2's queue).
    ``chunk_size``: run the towers on this many samples at a time with gradient caching
    (S-GRADCACHE); ``null`` = the whole batch at once. The last chunk's graph is always kept.
    ``keep_chunks``: the first pass also keeps the graphs of the last this many chunks of every
    modality, which the second pass then does not re-run (faster, more memory); ``null`` = 0.
    ``partial_chunks``: the this many chunks before those keep a partial graph — the outputs of
    products, convolutions and attention, the elementwise work recomputed in pass 2
    (``scale.partial_graph``); a tower that refuses them (train-mode BatchNorm) gets none, with a
    warning; ``null`` = 0. Not with ``train.dist_wrapper: fsdp``.
    ``graph_memory``: instead of both, a budget such as ``2GiB`` for those graphs, spent per
    modality by time saved per byte (``scale.graph_plan``: bytes and times measured on the first
    batch; the plan is printed). Not with FSDP. Gradients are the same whichever graphs are kept.
    ``dist_loss`` (several processes, e.g. under ``torchrun``): ``local`` — gather embeddings with
    gradients, each rank computes its rows (exact, O(bN) logits); ``global`` — every rank the full
    N×N loss (exact); ``ring`` — blocks passed round a ring of ranks, no N-row gather (exact):
    for CLIP the Inf-CL ring, running log-sum-exps carried with the blocks, each block pair in
    tiles of ``tile_size`` (default 2048), memory O(b·d + tile²) per rank; for SigLIP its ring
    exchange, O(b²) (no ``tile_size``); other losses have no ring form (an error).
    ``batch_size`` stays the global contrastive batch; each rank embeds ``batch_size / world``.
    """

    tile_size: int | None = None
    chunk_size: int | None = None
    keep_chunks: int | None = None
    partial_chunks: int | None = None
    graph_memory: str | None = None
    dist_loss: Literal["local", "global", "ring"] = "local"

    def __post_init__(self) -> None:
        for name in ("tile_size", "chunk_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"scale.{name} must be >= 1 or null, got {v}")
        counts = {"keep_chunks": self.keep_chunks, "partial_chunks": self.partial_chunks}
        for name, k in counts.items():
            if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
                raise ConfigError(f"scale.{name} must be an integer >= 0 or null, got {k!r}")
            if k is not None and self.graph_memory is not None:
                raise ConfigError(f"scale.{name} and scale.graph_memory both set: give one of them")
        if any(k is not None for k in counts.values()) or self.graph_memory is not None:
            if self.chunk_size is None:
                raise ConfigError(
                    "scale.keep_chunks / partial_chunks / graph_memory need scale.chunk_size "
                    "(gradient caching)"
                )
        if self.graph_memory is not None:
            self.graph_bytes()

    def graph_bytes(self) -> int | None:
        """``graph_memory`` in bytes (``None`` if unset)."""
        if self.graph_memory is None:
            return None
        from contrastkit.scale.planner import parse_bytes  # lazy: the planner imports torch

        try:
            budget = parse_bytes(str(self.graph_memory))
        except (InputError, ValueError, OverflowError) as e:  # OverflowError: "1e400" is inf
            raise ConfigError(f"scale.graph_memory: cannot read a memory size ({e})") from None
        if budget < 0:
            raise ConfigError(f"scale.graph_memory must be >= 0, got {self.graph_memory!r}")
        return budget
