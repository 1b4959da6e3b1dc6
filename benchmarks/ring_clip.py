"""Per-rank peak memory (and step time) of the CLIP ring against the gathered local CLIP forms.

Spawns ``--world`` gloo processes on this machine (``--threads`` torch threads each); every rank
holds ``--b`` float32 pairs of dimension ``--dim`` (unit rows, a learnable logit scale) and runs, in
interleaved rounds (A, B, C, A, B, C, …, a barrier before each step), one forward + backward of

* ``ring``          — :class:`contrastkit.scale.CLIPRingLoss` (Inf-CL ring, tiles of ``--tile``);
* ``gather``        — :class:`contrastkit.scale.GatherLoss` local rows (the default
                      ``scale.dist_loss: local``: ``[N, d]`` gathered, ``[b, N]`` logits twice);
* ``gather-tiled``  — ``GatherLoss(tile_size=--tile)``: local rows in tiles against the gathered
                      ``[N, d]`` columns.

Memory rounds run with glibc's mmap threshold at 64 KiB (freed blocks leave resident memory at
once) and report the extra peak resident MiB of the step beyond what the rank held before it —
this includes the inputs' gradients (2·b·d·4 bytes) and the gathered copies. Per round the
largest rank counts; printed are the medians over rounds and the median of the per-round ratios
``gather / ring``. Timing rounds (unless ``--memory-only``) run at the 32 MiB threshold a training
process settles at and report the median seconds of the slowest rank. Exactness is in the tests
(``tests/scale/test_ring_clip.py``); run under ``flock /tmp/ck-bench.lock`` on a shared machine:

    flock /tmp/ck-bench.lock python benchmarks/ring_clip.py --b 4096 --world 2 --dim 256 --memory-only
    flock /tmp/ck-bench.lock python benchmarks/ring_clip.py --b 1024 --world 2 --repeats 3  # + time
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import MEMORY_PASS, TIMING, peak_bytes, reset_peak, rss_bytes, set_mmap_threshold, source_state

FORMS = ("ring", "gather", "gather-tiled")


def _forms(b: int, dim: int, tile: int, seed: int):
    import torch

    from contrastkit.losses import CLIPLoss
    from contrastkit.scale import CLIPRingLoss, GatherLoss

    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(b, dim, generator=g), dim=1).requires_grad_()
    y = torch.nn.functional.normalize(torch.randn(b, dim, generator=g), dim=1).requires_grad_()
    module = CLIPLoss()
    losses = {
        "ring": CLIPRingLoss(module, tile_size=tile),
        "gather": GatherLoss(module),
        "gather-tiled": GatherLoss(module, tile_size=tile),
    }
    return [x, y, module.log_scale], losses


def _step(loss, leaves) -> tuple[float, float]:
    """(seconds, extra peak MiB) of one forward + backward, starting together with the other ranks."""
    import torch.distributed as dist

    for t in leaves:
        t.grad = None
    dist.barrier()
    reset_peak()
    base = rss_bytes()
    t0 = time.perf_counter()
    loss(leaves[0], leaves[1]).backward()
    return time.perf_counter() - t0, (peak_bytes() - base) / 2**20


def _worker(b: int, dim: int, tile: int, repeats: int, memory_only: bool) -> dict[str, list[list[float]]]:
    import torch.distributed as dist

    seed = dist.get_rank()
    small_leaves, small = _forms(64, dim, min(tile, 32), seed)
    for loss in small.values():  # threads, kernels and gloo buffers warmed up outside the rounds
        _step(loss, small_leaves)
    leaves, losses = _forms(b, dim, tile, seed)
    out: dict[str, list[list[float]]] = {f"{form}/mib": [] for form in FORMS}
    out.update({f"{form}/s": [] for form in FORMS})
    set_mmap_threshold(MEMORY_PASS)
    for _ in range(repeats):  # A, B, C, A, B, C: drift on a shared machine hits every form alike
        for form in FORMS:
            out[f"{form}/mib"].append([_step(losses[form], leaves)[1]])
    if not memory_only:
        set_mmap_threshold(TIMING)
        for _ in range(repeats):
            for form in FORMS:
                out[f"{form}/s"].append([_step(losses[form], leaves)[0]])
    return out


def main(argv: list[str] | None = None) -> None:
    from contrastkit.scale.launch import spawn_gloo

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--b", type=int, default=4096, help="pairs per rank")
    p.add_argument("--world", type=int, default=2, help="ranks (processes)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--memory-only", action="store_true", help="skip the timing rounds")
    args = p.parse_args(argv)
    load0 = os.getloadavg()[0]
    ranks = spawn_gloo(
        _worker,
        args.world,
        args.b,
        args.dim,
        args.tile,
        args.repeats,
        args.memory_only,
        timeout_s=3600.0,
        threads=args.threads,
    )
    load1 = os.getloadavg()[0]
    n = args.b * args.world
    print(
        f"b = {args.b} per rank, D = {args.world} ranks (N = {n:,}), d = {args.dim}, float32, tile "
        f"{args.tile}, {args.threads} thread(s) per rank, {args.repeats} interleaved rounds; "
        f"code {source_state()}; 1-minute load {load0:.1f} → {load1:.1f}"
    )
    worst = {  # per form and round: the largest rank's figure
        key: [max(r[key][i][0] for r in ranks) for i in range(len(ranks[0][key]))] for key in ranks[0]
    }
    print("| form | extra MiB per rank (median; min–max) | × ring (median of rounds) | s per step |")
    print("|---|---|---|---|")
    for form in FORMS:
        mib = worst[f"{form}/mib"]
        ratio = [m / r for m, r in zip(mib, worst["ring/mib"])]
        secs = worst[f"{form}/s"]
        cells = [
            form,
            f"{statistics.median(mib):.0f} ({min(mib):.0f}–{max(mib):.0f})",
            f"{statistics.median(ratio):.2f}",
            f"{statistics.median(secs):.2f}" if secs else "—",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
