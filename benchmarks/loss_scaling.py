"""Loss step (forward + backward) time and peak extra memory at large contrastive batch sizes.

Compares, side by side in one run and at the same N, D, dtype and thread count:

* ``floor``           — the three N×D×N matrix products any exact method must do (``XYᵀ``, ``GY``,
                        ``GᵀX``), with no elementwise work: the arithmetic floor;
* ``clip/dense``      — :func:`contrastkit.losses.clip_loss` (materialises the N×N logits);
* ``clip/tiled``      — :func:`contrastkit.scale.tiled_clip_loss`;
* ``clip/open_clip``  — open_clip's ``ClipLoss`` (if ``open_clip`` is installed: ``make bench``);
* the same three for SigLIP.

Each (method, N) runs in a fresh subprocess so its peak resident memory can be read:
``extra = peak RSS − RSS after allocating the inputs − the inputs' gradients (2·N·D·4 bytes)``.
Dense methods are skipped where their N×N matrices would not fit (``--max-dense-gib``).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/loss_scaling.py --sizes 1024,4096,16384,65536
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import floor_step, peak_bytes, reset_peak, rss_bytes

METHODS = (
    "floor",
    "clip/dense",
    "clip/tiled",
    "clip/open_clip",
    "siglip/dense",
    "siglip/tiled",
    "siglip/open_clip",
)
DENSE_MATRICES = {"clip/dense": 4, "clip/open_clip": 5, "siglip/dense": 5, "siglip/open_clip": 6}


def _step_fn(method: str, tile: int):
    import torch

    from contrastkit.losses import clip_loss, siglip_loss
    from contrastkit.scale import tiled_clip_loss, tiled_siglip_loss

    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    if method == "floor":
        return floor_step
    if method.endswith("open_clip"):
        from open_clip.loss import ClipLoss, SigLipLoss

        if method.startswith("clip"):
            mod = ClipLoss()
            return lambda x, y: mod(x, y, scale).backward()
        mod = SigLipLoss()
        return lambda x, y: mod(x, y, scale, bias).backward()
    fns = {
        "clip/dense": lambda x, y: clip_loss(x, y, scale, normalize=False),
        "clip/tiled": lambda x, y: tiled_clip_loss(x, y, scale, normalize=False, tile_size=tile),
        "siglip/dense": lambda x, y: siglip_loss(x, y, scale, bias, normalize=False),
        "siglip/tiled": lambda x, y: tiled_siglip_loss(x, y, scale, bias, normalize=False, tile_size=tile),
    }
    return lambda x, y: fns[method](x, y).backward()


def run_one(method: str, n: int, d: int, threads: int, tile: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    step = _step_fn(method, tile)
    g = torch.Generator().manual_seed(0)
    w = min(n, 4096)
    small = [F.normalize(torch.randn(w, d, generator=g), dim=-1).requires_grad_() for _ in range(2)]
    step(*small)  # warm up threads and kernels outside the measured region
    del small
    x = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    y = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    times, extra = [], 0
    for _ in range(repeats):
        x.grad = y.grad = None
        reset_peak()
        base = rss_bytes()
        t0 = time.perf_counter()
        step(x, y)
        times.append(time.perf_counter() - t0)
        extra = max(extra, peak_bytes() - base - 2 * n * d * 4)
    return {"time_s": min(times), "extra_mib": max(0, extra) / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1024,4096,16384,65536")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--max-dense-gib", type=float, default=12.0)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # child process: one measurement, JSON on stdout
        method, n, repeats = args.one.split(":")
        print(json.dumps(run_one(method, int(n), args.dim, args.threads, args.tile, int(repeats))))
        return
    try:
        import open_clip  # noqa: F401

        have_open_clip = True
    except ImportError:
        have_open_clip = False
    print(
        f"D={args.dim}, float32, {args.threads} threads, tile {args.tile}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    print(f"{'N':>7}  {'method':<17} {'time s':>9} {'x floor':>8} {'extra MiB':>10}")
    for n in [int(s) for s in args.sizes.split(",")]:
        floor = None
        for method in args.methods.split(","):
            if method.endswith("open_clip") and not have_open_clip:
                continue
            need = DENSE_MATRICES.get(method, 0) * n * n * 4 / 2**30
            if need > args.max_dense_gib:
                print(f"{n:>7}  {method:<17} {'skipped':>9} {'':>8} {f'~{need:.0f} GiB':>10}")
                continue
            repeats = 3 if n <= 4096 else 1
            cmd = [
                sys.executable,
                __file__,
                "--one",
                f"{method}:{n}:{repeats}",
                "--dim",
                str(args.dim),
                "--threads",
                str(args.threads),
                "--tile",
                str(args.tile),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{n:>7}  {method:<17} {'failed':>9}  {out.stderr.strip().splitlines()[-1][:60]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if method == "floor":
                floor = r["time_s"]
            ratio = f"{r['time_s'] / floor:.2f}" if floor else ""
            print(f"{n:>7}  {method:<17} {r['time_s']:>9.3f} {ratio:>8} {r['extra_mib']:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
