"""Tiled InfoNCE-family losses against their own floor (and their dense forms), interleaved.

For each loss in ``--losses`` and each N in ``--sizes``, one process runs rounds of
(own floor, tiled form, dense form) on the same float32 embeddings (D = ``--dim``; labels: N /
``--classes`` samples per class for the losses that take them), one forward + backward each, A, B,
C, A, B, C, …. The **own floor** is the matrix products any exact method of that loss needs, with
no elementwise work (:func:`_measure.floor_step`: ``XYᵀ``, ``GY``, ``GᵀX`` in 8192-blocks): at 2N
rows for the two-view losses whose anchors are ``[x; y]``, at N otherwise, and only ``XYᵀ`` and
``GY`` for MoCo (the queue takes no gradient; B = K = N). Printed per (loss, N): median seconds,
the median of the per-round ratios tiled / floor and tiled / dense with their min–max spread, the
extra peak resident MiB of each form beyond the inputs (one untimed step at a 64 KiB mmap
threshold, so freed blocks leave RSS; the timed rounds run at 32 MiB, as training does), and the
1-minute load before and after.
Dense forms are skipped above ``--max-dense``. Timing only; exactness is in the tests.

    python benchmarks/tiled_family.py --sizes 256 --repeats 1                  # smoke run
    python benchmarks/tiled_family.py --sizes 16384 --max-dense 0 --repeats 3  # the ≤ 2× floor goal
    python benchmarks/tiled_family.py --losses supcon --sizes 65536 --max-dense 0 --memory-only
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from _measure import MEMORY_PASS, TIMING, floor_step, peak_bytes, reset_peak, rss_bytes, set_mmap_threshold

from contrastkit.losses.momentum import moco2_loss
from contrastkit.scale.tiled import TILED
from contrastkit.scale.tiled_more import TILED_MULTI

BY_NAME = {
    fn.__name__.removesuffix("_loss"): fn for fn in TILED if fn.__name__ not in ("clip_loss", "siglip_loss")
}
BY_NAME["moco2"] = moco2_loss
TWO_VIEW = {"ntxent", "supcon", "dcl", "dclw", "am_ntxent", "aam_ntxent", "kernel_infonce"}  # anchors [x; y]
LABELLED = {"supcon", "multi_positive", "xmc_decoupled"}
SCALED = {"multi_positive", "infonce", "hn_nce", "xmc_decoupled"}  # take a scale (1/τ), no default


def step(fn: Callable[[], torch.Tensor | None], leaves: list[torch.Tensor]) -> tuple[float, float]:
    """(seconds, extra peak MiB) of one forward + backward."""
    for t in leaves:
        t.grad = None
    reset_peak()
    base = rss_bytes()
    t0 = time.perf_counter()
    out = fn()
    if out is not None:
        out.backward()
    return time.perf_counter() - t0, (peak_bytes() - base) / 2**20


def floor_two(q: torch.Tensor, c: torch.Tensor, block: int = 8192) -> None:
    """MoCo's floor: ``Q Cᵀ`` and ``G C`` (no gradient to the queue), in blocks."""
    with torch.no_grad():
        gq = torch.zeros_like(q)
        for i in range(0, len(q), block):
            for j in range(0, len(c), block):
                gq[i : i + block] += (q[i : i + block] @ c[j : j + block].T) @ c[j : j + block]


def forms(name: str, n: int, args: argparse.Namespace):
    """(leaves, floor, tiled, dense) closures for one loss at batch N."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(n, args.dim, generator=g), dim=-1).requires_grad_()
    y = torch.nn.functional.normalize(torch.randn(n, args.dim, generator=g), dim=-1).requires_grad_()
    labels = torch.arange(n) % max(1, n // args.classes)
    if name == "moco2":
        tiled_fn = TILED_MULTI[moco2_loss]
        return (
            [x],
            lambda: floor_two(x.detach(), y.detach()),
            lambda: tiled_fn(x, x.detach(), y.detach(), tile_size=args.tile),
            lambda: moco2_loss(x, x.detach(), y.detach()),
        )
    dense_fn = BY_NAME[name]
    kw: dict = {"scale": 10.0} if name in SCALED else {}
    if name == "kernel_infonce":
        kw["gamma"] = args.gamma
    tiled_kw = dict(kw)
    if name in ("supcon", "multi_positive"):
        kw["labels"] = tiled_kw["labels"] = labels
    if name == "xmc_decoupled":
        tiled_kw["labels"] = labels
        if n <= args.max_dense:
            kw["weights"] = (labels[:, None] == labels[None, :]).float()
    z = torch.cat([x, y]).detach() if name in TWO_VIEW else None
    return (
        [x, y],
        (lambda: floor_step(z, z)) if z is not None else (lambda: floor_step(x.detach(), y.detach())),
        lambda: TILED[dense_fn](x, y, tile_size=args.tile, **tiled_kw),
        lambda: dense_fn(x, y, **kw),
    )


def _ratio(a: list[float], b: list[float]) -> str:
    r = [p / q for p, q in zip(a, b)]
    return f"{statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f})"


def measure(name: str, n: int, args: argparse.Namespace) -> str:
    small = forms(name, min(n, 512), args)
    for fn in small[1:]:  # warm up threads and kernels outside the measured rounds
        step(fn, small[0])
    leaves, floor, tiled, dense = forms(name, n, args)
    run_dense = n <= args.max_dense
    set_mmap_threshold(MEMORY_PASS)  # memory: one untimed step per form, freed blocks returned
    mib = {"tiled": step(tiled, leaves)[1], "dense": step(dense, leaves)[1] if run_dense else 0.0}
    set_mmap_threshold(TIMING)  # timing: large temporaries reused from the heap, as in training
    if args.memory_only:
        return f"| {name} | {n:,} | | | | | | {mib['tiled']:.0f} | {mib['dense']:.0f} | |"
    load0 = os.getloadavg()[0]
    t_floor, t_tiled, t_dense = [], [], []
    for _ in range(args.repeats):  # A, B, C, A, B, C: drift on a shared machine hits all alike
        t_floor.append(step(floor, leaves) if args.floor else (float("nan"), 0.0))
        t_tiled.append(step(tiled, leaves))
        if run_dense:
            t_dense.append(step(dense, leaves))
    f = [t for t, _ in t_floor]
    t = [s for s, _ in t_tiled]
    cells = [name, f"{n:,}", f"{statistics.median(f):.3f}", f"{statistics.median(t):.3f}", _ratio(t, f)]
    cells += ["skipped", "", f"{mib['tiled']:.0f}", "", ""]
    if t_dense:
        d = [s for s, _ in t_dense]
        cells[5] = f"{statistics.median(d):.3f}"
        cells[6] = _ratio(t, d)
        cells[8] = f"{mib['dense']:.0f}"
    cells[9] = f"{load0:.1f}→{os.getloadavg()[0]:.1f}"
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--losses", default=",".join(sorted(BY_NAME)), help="comma-separated names")
    p.add_argument("--sizes", default="1024,4096", help="comma-separated batch sizes N")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--classes", type=int, default=4, help="samples per class for labelled losses")
    p.add_argument("--gamma", type=float, default=1.0, help="kernel_infonce's γ (2 routes to NT-Xent)")
    p.add_argument("--max-dense", type=int, default=4096, help="largest N to run the dense form at")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-floor", dest="floor", action="store_false", help="skip the floor")
    p.add_argument("--memory-only", action="store_true", help="one untimed step per form: memory")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [s for s in args.losses.split(",") if s]
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        raise SystemExit(f"unknown losses {unknown}; valid: {sorted(BY_NAME)}")
    print(
        f"D = {args.dim}, tile {args.tile}, {args.repeats} interleaved rounds, {args.threads} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    cols = ["loss", "N", "floor s", "tiled s", "tiled × floor (min–max)", "dense s", "tiled / dense"]
    cols += ["tiled MiB", "dense MiB", "load"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for n in (int(s) for s in args.sizes.split(",")):
        for name in names:
            print(measure(name, n, args), flush=True)


if __name__ == "__main__":
    main()
