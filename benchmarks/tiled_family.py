"""Dense vs tiled InfoNCE-family losses: one forward + backward step, interleaved A, B, A, B.

For each loss in ``--losses`` (keys of ``contrastkit.scale.tiled_zoo.TILED_FAMILY`` by name) and
each N in ``--sizes``, the dense pure function (A) and its tiled form (B, ``--tile``) run
alternately ``--repeats`` times on the same float32 embeddings (D = ``--dim``; labels: N/``--classes``
samples per class for the losses that take them). Printed per (loss, N): median seconds of each,
the median of the per-round ratios tiled/dense with their min–max spread, tiled / floor (the three
N×D×N products of :func:`_measure.floor_step`, at 2N rows for the two-view losses whose anchors
are ``[x; y]``), the extra peak resident MiB of each form beyond the inputs, and the 1-minute load
average before and after (a shared machine: ratios from interleaved rounds are what to compare).
Dense forms are skipped when ``--max-dense`` is below N. Timing only; exactness is in the tests.

    python benchmarks/tiled_family.py --sizes 256 --repeats 2          # smoke run
    python benchmarks/tiled_family.py --sizes 4096,16384 --max-dense 16384
    python benchmarks/tiled_family.py --losses supcon --sizes 65536 --max-dense 0
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _measure import floor_step, peak_bytes, reset_peak, rss_bytes

from contrastkit.scale.tiled_zoo import TILED_FAMILY

BY_NAME = {fn.__name__.removesuffix("_loss"): fn for fn in TILED_FAMILY}
TWO_VIEW = {"ntxent", "supcon", "dcl", "dclw", "am_ntxent", "aam_ntxent"}  # anchors are [x; y]
LABELLED = {"supcon", "multi_positive"}
SCALED = {"multi_positive", "infonce", "hn_nce"}  # take a scale (1/τ), no default


def step(fn, x, y, kw) -> tuple[float, float]:
    """(seconds, extra peak MiB) of one forward + backward."""
    x.grad = y.grad = None
    reset_peak()
    base = rss_bytes()
    t0 = time.perf_counter()
    fn(x, y, **kw).backward()
    return time.perf_counter() - t0, (peak_bytes() - base) / 2**20


def floor_seconds(n: int, d: int) -> float:
    x, y = torch.randn(n, d), torch.randn(n, d)
    t0 = time.perf_counter()
    floor_step(x, y)
    return time.perf_counter() - t0


def measure(name: str, n: int, args: argparse.Namespace) -> str:
    dense_fn = BY_NAME[name]
    tiled_fn = TILED_FAMILY[dense_fn]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, args.dim, generator=g).requires_grad_()
    y = torch.randn(n, args.dim, generator=g).requires_grad_()
    kw: dict = {"scale": 10.0} if name in SCALED else {}
    if name in LABELLED:
        kw["labels"] = torch.arange(n) % max(1, n // args.classes)
    load0 = os.getloadavg()[0]
    dense, tiled = [], []
    for _ in range(args.repeats):  # A, B, A, B: drift on a shared machine hits both alike
        if n <= args.max_dense:
            dense.append(step(dense_fn, x, y, kw))
        tiled.append(step(tiled_fn, x, y, {**kw, "tile_size": args.tile}))
    floor = floor_seconds(2 * n if name in TWO_VIEW else n, args.dim)
    t_med = statistics.median(t for t, _ in tiled)
    mib_t = max(m for _, m in tiled)
    cells = [name, f"{n:,}", "skipped", f"{t_med:.3f}", "", f"{t_med / floor:.2f}", "", f"{mib_t:.0f}"]
    if dense:
        ratios = [b[0] / a[0] for a, b in zip(dense, tiled)]
        cells[2] = f"{statistics.median(t for t, _ in dense):.3f}"
        cells[4] = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
        cells[6] = f"{max(m for _, m in dense):.0f}"
    cells.append(f"{load0:.1f}→{os.getloadavg()[0]:.1f}")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--losses", default=",".join(sorted(BY_NAME)), help="comma-separated names")
    p.add_argument("--sizes", default="1024,4096", help="comma-separated batch sizes N")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--classes", type=int, default=4, help="samples per class for labelled losses")
    p.add_argument("--max-dense", type=int, default=16384, help="largest N to run the dense form at")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [s for s in args.losses.split(",") if s]
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        raise SystemExit(f"unknown losses {unknown}; valid: {sorted(BY_NAME)}")
    print(f"D = {args.dim}, tile {args.tile}, {args.repeats} interleaved rounds, {args.threads} threads")
    cols = ["loss", "N", "dense s", "tiled s", "tiled/dense (min–max)", "tiled × floor"]
    cols += ["dense MiB", "tiled MiB"]
    print("| " + " | ".join([*cols, "load"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        for name in names:
            print(measure(name, n, args), flush=True)


if __name__ == "__main__":
    main()
