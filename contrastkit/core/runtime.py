"""Process-level settings: thread count, device, seeding, and RNG state capture for exact resume."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from contrastkit.core.errors import ConfigError

__all__ = [
    "MAX_SEED",
    "check_device_name",
    "check_seed",
    "check_threads",
    "get_rng_state",
    "resolve_device",
    "seed_everything",
    "set_rng_state",
    "set_threads",
]

# NumPy's legacy seed and SeedSequence take only non-negative integers and the legacy seed at most
# 2**32 - 1; torch.manual_seed at most 2**64 - 1, and the trainer's per-step seed
# (seed·1_000_003 + step)·1_009 + rank must stay below that: with seed < 2**32 it does (< 2**62).
MAX_SEED = 2**32 - 1


def check_seed(seed: int, what: str = "train.seed") -> int:
    """``seed`` if it is an integer in ``[0, MAX_SEED]``; else a :class:`ConfigError` naming ``what``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{what} must be an integer in [0, 2**32 - 1 = {MAX_SEED}], got {seed!r}")
    return seed


def check_threads(n: int, what: str = "train.threads") -> int:
    """The thread count ``n`` stands for (``0``: one per available core), refusing a negative count
    or more threads than the machine has cores (``os.cpu_count()``) with a :class:`ConfigError`
    naming ``what``: more threads only slow torch down, and a huge count exhausts the process limit.
    """
    cores = os.cpu_count() or 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"{what} must be an integer >= 0 (0 = all cores), got {n!r}")
    if n > cores:
        raise ConfigError(
            f"{what}={n} is more than the {cores} cores of this machine (os.cpu_count()); "
            "use at most that, or 0 for all cores"
        )
    if n == 0:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return n


def set_threads(n: int, *, cap: bool = False) -> int:
    """Set torch's intra-op thread count; ``0`` means one per available core.

    On a shared 2-core machine one thread is often faster than two (the OpenMP threads spin
    against each other), so this is a setting rather than a guess. Returns the count in effect.
    Raises :class:`ConfigError` for a negative count or more than the machine's cores
    (:func:`check_threads`); with ``cap``, more than the cores is reduced to the cores instead
    (resuming a run on a machine with fewer cores, where the config cannot be changed).
    """
    if cap and isinstance(n, int) and n > (os.cpu_count() or 1):
        n = os.cpu_count() or 1
    n = check_threads(n, "threads")
    torch.set_num_threads(n)
    return n


_DEVICE_HINT = "use auto, cpu, cuda, cuda:N or mps"


def check_device_name(name: str, what: str = "train.device") -> None:
    """Raise :class:`ConfigError` naming ``what`` unless ``name`` is ``auto`` or a CPU/CUDA/MPS
    device torch can parse. Machine-independent (availability is :func:`resolve_device`'s)."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{what}={name!r} is not a device: {_DEVICE_HINT}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{what}={name!r}: contrastkit runs on CPU, CUDA or MPS devices: {_DEVICE_HINT}")


def resolve_device(name: str, what: str = "train.device") -> torch.device:
    """The torch device a config's ``device`` names: ``auto`` (CUDA if available, else CPU),
    ``cpu``, ``cuda``, ``cuda:N``, ``mps``. Raises :class:`ConfigError` naming ``what`` for a name
    torch does not know or a device this machine does not have (instead of torch's traceback at
    the first ``.to(device)``)."""
    check_device_name(name, what)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{what}={name} but torch.cuda.is_available() is False (no GPU / CPU-only torch); "
                "use auto or cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{what}={name} but this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{what}={name} but torch.backends.mps.is_available() is False; use auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's legacy global RNG and torch (CPU and CUDA); ``seed`` in ``[0, MAX_SEED]``."""
    check_seed(seed, "seed")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """Every RNG state a training step can touch: tensors for torch, JSON-able for the rest."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np_state,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = dict(state["numpy"])
    np_state["state"] = {
        "key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
        "pos": np_state["state"]["pos"],
    }
    np.random.set_state(np_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
