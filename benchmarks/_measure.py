"""Shared measurement helpers for the benchmark scripts (Linux: peak RSS via /proc)."""

from __future__ import annotations

import os

# Large blocks via mmap, returned to the OS on free, so resident memory tracks live tensors.
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


MEMORY_PASS = 64 * 2**10  # mmap threshold while measuring memory: freed blocks leave RSS at once
TIMING = 32 * 2**20  # while timing: the ceiling glibc's adaptive threshold reaches, as in training


def set_mmap_threshold(nbytes: int) -> None:
    """glibc ``mallopt``: blocks of at least ``nbytes`` are mmap'd and returned to the OS on free.

    ``MALLOC_MMAP_THRESHOLD_`` (set above) acts only in child processes: glibc reads it at start-up.
    Use :data:`MEMORY_PASS` for peak-RSS measurements (a freed tensor must not stay resident and
    hide the next one's peak) and :data:`TIMING` for timings (a low fixed threshold costs page
    faults on every large temporary, which slows tile loops more than single big products)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2 * nbytes)  # M_TRIM_THRESHOLD, as glibc's adaptive rule sets it
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS figures may then under-count
        pass


def source_state() -> str:
    """``git`` commit of the measured code, ``+dirty`` when contrastkit/ has uncommitted changes."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "contrastkit"], capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def peak_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def floor_step(x, y, block: int = 8192) -> None:
    """The three N×D×N products any exact pairwise loss needs (``XYᵀ``, ``GY``, ``GᵀX``), no
    elementwise work, in blocks so that N = 64k fits."""
    import torch

    with torch.no_grad():
        gx, gy = torch.zeros_like(x), torch.zeros_like(y)
        for i in range(0, len(x), block):
            for j in range(0, len(y), block):
                blk = x[i : i + block] @ y[j : j + block].T
                gx[i : i + block] += blk @ y[j : j + block]
                gy[j : j + block] += blk.T @ x[i : i + block]


def ratio_spread(num: list[float], den: list[float], digits: int = 2) -> str:
    """``median (min–max)`` of the per-round ratios ``num[r] / den[r]``: both timed in the same
    round of one process, so load that hits a round hits both sides of its ratio."""
    import statistics

    r = [a / b for a, b in zip(num, den, strict=True)]
    return f"{statistics.median(r):.{digits}f} ({min(r):.{digits}f}–{max(r):.{digits}f})"


def interleaved(arms: dict, rounds: int, calls: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each arm (a no-argument callable) in each of ``rounds`` rounds: every
    round runs every arm ``calls`` times, arms in rotated order (A, B, then B, A, …), so neither
    always runs first or inherits the other's cache and allocator state."""
    import time

    names = list(arms)
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(calls):
                arms[name]()
            out[name].append((time.perf_counter() - t0) / calls)
    return out
