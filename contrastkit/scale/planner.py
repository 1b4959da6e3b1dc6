"""How large a contrastive batch fits in a memory budget, with and without tiling and caching.

``contrastkit plan CONFIG --memory 16GiB`` measures, for the configured model, the memory of one
training sample's activations (forward + backward at two batch sizes, the slope of peak memory)
and the fixed cost (weights, gradients, AdamW moments), then solves for the largest batch N with

* plain:            fixed + a·N + loss(N)
* tiled loss:       fixed + a·N + tiled(N)
* gradient cache:   fixed + a·c + tiled(N) + cache(N)   (c = chunk size; N limited by O(N·d) only)

where ``loss(N)`` is the dense N×N logits' memory (measured here: CLIP ≈ 5 float32 N×N matrices
between forward and backward, SigLIP ≈ 4), ``tiled(N) = 3·tile² + 8·N·d`` floats, and
``cache(N) = 4·N·d`` floats (embeddings and their gradients). Peak memory is read from CUDA's
allocator on GPU and from the kernel's peak-RSS counter on Linux CPUs (``/proc/self/clear_refs``).
Numbers are estimates: leave headroom (``--reserve``).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch

from contrastkit.core.errors import InputError
from contrastkit.core.progress import progress_bar
from contrastkit.models.dual_encoder import DualEncoder

__all__ = ["MemoryPlan", "measure_sample_memory", "parse_bytes", "plan_batch"]

DENSE_MATRICES = {"clip": 5.0, "siglip": 4.0}
_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 2**10,
    "kib": 2**10,
    "m": 2**20,
    "mb": 2**20,
    "mib": 2**20,
    "g": 2**30,
    "gb": 2**30,
    "gib": 2**30,
    "t": 2**40,
    "tb": 2**40,
    "tib": 2**40,
}


def parse_bytes(text: str) -> int:
    """``"16GiB"``, ``"512 MB"``, ``"2e9"`` → bytes (binary units for K/M/G/T)."""
    t = text.strip().lower().replace(" ", "")
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num) :]
    if unit not in _UNITS or not num:
        raise InputError(f"cannot read a memory size from {text!r} (e.g. 16GiB, 512MB)")
    return int(float(num) * _UNITS[unit])


def _peak_reset(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as fh:  # Linux: reset peak RSS to current RSS
        fh.write("5")
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise InputError("cannot read peak memory on this platform (needs Linux or CUDA)")


def _step_peak(model: DualEncoder, batch: dict[str, torch.Tensor], device: torch.device) -> int:
    gc.collect()
    base = _peak_reset(device)
    emb = model(batch)
    sum(e.float().pow(2).sum() for e in emb.values()).backward()
    peak = _peak(device) - base
    model.zero_grad(set_to_none=True)
    return peak


def _mmap_large_blocks() -> None:
    """glibc: serve blocks ≥ 64 KiB with mmap so freed tensors leave the resident set and the
    peak-RSS counter tracks live memory (best effort; a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def measure_sample_memory(
    model: DualEncoder, make_batch, device: torch.device, sizes: tuple[int, int] = (32, 160), repeats: int = 3
) -> float:
    """Activation bytes per sample: slope of peak step memory between two batch sizes (median of
    ``repeats``). ``make_batch(n)`` returns a batch dict of n samples."""
    if device.type == "cpu":
        _mmap_large_blocks()
    model.train().to(device)
    _step_peak(model, make_batch(sizes[0]), device)  # warm-up: allocator pools, lazy kernels
    slopes = []
    for _ in progress_bar(range(repeats), "measure memory", unit="repeat"):  # a large model: minutes
        lo = _step_peak(model, make_batch(sizes[0]), device)
        hi = _step_peak(model, make_batch(sizes[1]), device)
        slopes.append(max(hi - lo, 0) / (sizes[1] - sizes[0]))
    return sorted(slopes)[len(slopes) // 2]


@dataclass(frozen=True)
class MemoryPlan:
    budget: int
    fixed: int
    per_sample: float
    plain: int
    tiled: int
    cached: int
    chunk: int
    tile: int


def _largest(fits, hi: int = 2**31) -> int:
    """Largest N ≥ 0 with fits(N) (fits is monotone decreasing in N)."""
    if not fits(1):
        return 0
    lo, n = 1, 2
    while n < hi and fits(n):
        lo, n = n, n * 2
    hi = min(n, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def plan_batch(
    budget: int, n_params: int, per_sample: float, loss: str, dim: int, tile: int = 2048, chunk: int = 256
) -> MemoryPlan:
    """Solve the three memory models of the module docstring for the largest batch."""
    f = 4  # float32 bytes
    fixed = 4 * n_params * f  # weights, gradients, two AdamW moments
    dense = DENSE_MATRICES.get(loss, 5.0)

    def tiled(n: int) -> float:
        return 3 * min(tile, n) ** 2 * f + 8 * n * dim * f

    plain_n = _largest(lambda n: fixed + per_sample * n + dense * n * n * f <= budget)
    tiled_n = _largest(lambda n: fixed + per_sample * n + tiled(n) <= budget)
    c = max(1, min(chunk, plain_n or 1))
    cached_n = _largest(lambda n: fixed + per_sample * c + tiled(n) + 4 * n * dim * f <= budget)
    return MemoryPlan(budget, fixed, per_sample, plain_n, tiled_n, cached_n, c, tile)
