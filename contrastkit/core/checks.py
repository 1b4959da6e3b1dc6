"""Input validation used at the boundaries of losses, models and evaluation.

Every loss calls these before doing arithmetic so that wrong shapes, empty batches and NaN/inf
values fail loudly with the name of the offending argument instead of producing a silent wrong
number.
"""

from __future__ import annotations

import torch

from contrastkit.core.errors import InputError

__all__ = ["check_embeddings", "check_finite", "check_pair", "check_queue", "check_scalar_param"]


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise :class:`InputError` if ``tensor`` holds NaN or inf."""
    if not torch.isfinite(tensor).all():
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise InputError(f"{name} contains {n_bad} non-finite value(s) (NaN or inf)")


def check_embeddings(name: str, x: torch.Tensor) -> None:
    """A batch of embeddings: a floating 2-D tensor ``[N, d]`` with N ≥ 1, d ≥ 1, all finite."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise InputError(f"{name} must have shape [N, d], got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch (N=0)")
    if x.shape[1] == 0:
        raise InputError(f"{name} has embedding dimension 0")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    check_finite(name, x)


def check_pair(x: torch.Tensor, y: torch.Tensor, names: tuple[str, str] = ("x", "y")) -> None:
    """Two paired embedding batches: same N, same d."""
    check_embeddings(names[0], x)
    check_embeddings(names[1], y)
    if x.shape[0] != y.shape[0]:
        raise InputError(
            f"batch size mismatch: {names[0]} has {x.shape[0]} rows, {names[1]} has {y.shape[0]}"
        )
    if x.shape[1] != y.shape[1]:
        raise InputError(
            f"embedding dimension mismatch: {names[0]} has d={x.shape[1]}, {names[1]} has d={y.shape[1]}"
        )


def check_scalar_param(name: str, value: torch.Tensor) -> None:
    """A learnable scalar (temperature, bias): 0-d or one element, finite."""
    if value.numel() != 1:
        raise InputError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
    check_finite(name, value)


def check_queue(queue: torch.Tensor, d: int, name: str = "queue") -> None:
    """A queue (memory bank) of ``[K, d]`` finite floating keys."""
    if not isinstance(queue, torch.Tensor) or queue.ndim != 2 or queue.shape[1] != d:
        shape = tuple(queue.shape) if isinstance(queue, torch.Tensor) else type(queue).__name__
        raise InputError(f"{name} must have shape [K, d] with d={d}, got {shape}")
    if not queue.is_floating_point():
        raise InputError(f"{name} must be a floating tensor, got dtype {queue.dtype}")
    check_finite(name, queue)
