"""Forward + backward time and memory of every registered loss at N = 4096, D = 512, float32.

Each loss runs in its own subprocess; the table reports its time as a ratio to its own **floor** (the
three N×D×N matrix products any exact pairwise loss needs — at 2N for losses over both views stacked,
SimCLR layout — timed in the same subprocess in interleaved rounds: loss, floor, floor@2N, loss, …,
so machine load hits all alike; the median of the ``--repeats`` per-round ratios with their min–max,
and the 1-minute load average before and after each loss's process) and its peak
extra memory in units of one N×N float32 matrix (64 MiB at N = 4096), beside lightly's and
pytorch-metric-learning's versions where installed (``pip install lightly pytorch-metric-learning``,
an optional benchmark extra). Losses that need extra batch fields get synthetic ones: ``labels``
(100 classes), ``weights`` (a random 0/1 relevance matrix with a positive diagonal),
``negatives`` (4 extra negatives per pair) and ``past_x``/``past_y`` (Sy-CON's past embeddings).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/loss_speed.py [--n 4096] [--losses clip,ntxent]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import floor_step, peak_bytes, ratio_spread, reset_peak, rss_bytes

# Losses whose similarity matrix is over both views stacked (SimCLR layout, 2N × 2N): their own
# arithmetic floor is the three products at 2N, i.e. 4× the N × N floor.
LAYOUT_2N = {
    "ntxent",
    "dcl",
    "dclw",
    "am_ntxent",
    "aam_ntxent",
    "hcl",
    "hard_negative_penalty",
    "kernel_infonce",
    "amcl",
    "supcon",
    "lightly/ntxent",
    "lightly/dcl",
    "pml/ntxent",
    "pml/supcon",
}
PARAMS = {"mochi": {"dim": 512, "n_hard": 1024, "n_mix": 1024, "n_mix_query": 128, "warmup_steps": 0}}

EXTERNAL = {
    "lightly/ntxent": ("lightly.loss", "NTXentLoss", {"temperature": 0.1}),
    "lightly/dcl": ("lightly.loss", "DCLLoss", {"temperature": 0.1}),
    "pml/ntxent": ("pytorch_metric_learning.losses", "NTXentLoss", {"temperature": 0.1}),
    "pml/supcon": ("pytorch_metric_learning.losses", "SupConLoss", {"temperature": 0.1}),
}


def registry() -> list[str]:
    import contrastkit.losses  # noqa: F401  (registers every loss family)
    from contrastkit.losses.base import LOSSES

    return LOSSES.names()


def _aux(loss, n: int, d: int, g):
    import torch

    aux = {}
    accepts = getattr(loss, "accepts", frozenset())
    sig = inspect.signature(type(loss).forward).parameters
    if "labels" in accepts:  # a loss taking labels or weights gets labels
        aux["labels"] = torch.randint(0, 100, (n,), generator=g)
    elif "weights" in accepts:
        w = (torch.rand(n, n, generator=g) < 0.01).float()
        w.fill_diagonal_(1.0)
        aux["weights"] = w
    if "past_x" in accepts:  # Sy-CON: a frozen past model's embeddings of both views
        aux["past_x"], aux["past_y"] = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    if "negatives" in accepts or "negatives" in sig:
        aux["negatives"] = torch.randn(n, 4, d, generator=g)
    return aux


def _step_fn(name: str, n: int, d: int):
    import torch

    g = torch.Generator().manual_seed(0)
    if name == "floor":
        return lambda x, y: floor_step(x, y)
    if name == "floor@2N":  # the three products over both views stacked
        return lambda x, y: floor_step(torch.cat([x, y]), torch.cat([x, y]))
    if name in EXTERNAL:
        import importlib

        mod, cls, kw = EXTERNAL[name]
        loss = getattr(importlib.import_module(mod), cls)(**kw)
        if name.startswith("pml"):
            labels = torch.arange(n).repeat(2)
            return lambda x, y: loss(torch.cat([x, y]), labels).backward()
        return lambda x, y: loss(x, y).backward()
    from contrastkit.losses.base import LOSSES

    registry()
    loss = LOSSES.build(name, **PARAMS.get(name, {}))
    aux = _aux(loss, n, d, g)
    return lambda x, y: loss(x, y, **aux).backward()


def run_one(name: str, n: int, d: int, threads: int, repeats: int) -> dict:
    """Time ``name`` and both floors (N×N and the SimCLR layout's 2N×2N) in interleaved rounds in
    this process, so machine load hits all alike: per-round seconds of each, and the loss's peak
    extra memory."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g).requires_grad_()
    y = torch.randn(n, d, generator=g).requires_grad_()
    steps = {
        key: _step_fn(what, n, d)
        for key, what in (("loss", name), ("floor", "floor"), ("floor@2N", "floor@2N"))
    }
    for step in steps.values():
        step(x, y)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in steps}
    extra = 0
    for _ in range(repeats):
        for key, step in steps.items():
            x.grad = y.grad = None
            reset_peak()
            base = rss_bytes()
            t0 = time.perf_counter()
            step(x, y)
            times[key].append(time.perf_counter() - t0)
            if key == "loss":
                extra = max(extra, peak_bytes() - base - 2 * n * d * 4)
    return {**times, "nxn": max(extra, 0) / (n * n * 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--losses", help="comma-separated registry names (default: all)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.n, args.dim, args.threads, args.repeats)))
        return
    names = args.losses.split(",") if args.losses else registry()
    print(f"N={args.n}, D={args.dim}, float32, {args.threads} threads, {args.repeats} interleaved rounds")
    print("Seconds: medians. Ratios: median of per-round ratios (min–max). Load: 1-min average before→after.")
    cols = [
        "loss",
        "time s",
        "floor s",
        "× floor (N×N)",
        "× own floor",
        "own floor",
        "peak extra (N×N matrices)",
    ]
    print("| " + " | ".join([*cols, "load"]) + " |")
    print("|---|---:|---:|---:|---:|---|---:|---|")
    for name in [*names, *EXTERNAL]:
        own = "floor@2N" if name in LAYOUT_2N else "floor"
        cmd = [sys.executable, __file__, "--one", name]
        for flag in ("n", "dim", "threads", "repeats"):
            cmd += [f"--{flag}", str(getattr(args, flag))]
        load0 = os.getloadavg()[0]
        out = subprocess.run(cmd, capture_output=True, text=True)
        load = f"{load0:.1f}→{os.getloadavg()[0]:.1f}"
        if out.returncode != 0:
            err = (out.stderr.strip().splitlines() or ["?"])[-1][:90]
            print(f"| {name} | — | — | — | — | failed: {err} | — | {load} |", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        t, floor = statistics.median(r["loss"]), statistics.median(r["floor"])
        ratios = f"{ratio_spread(r['loss'], r['floor'])} | {ratio_spread(r['loss'], r[own])}"
        cells = f"{t:.3f} | {floor:.3f} | {ratios} | {own} | {r['nxn']:.1f} | {load}"
        print(f"| {name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
