"""Loss step (forward + backward) time and peak extra memory at large contrastive batch sizes.

Compares, at the same N, D, dtype and thread count, **interleaved in one process**: each round
runs floor, method 1, floor, method 2, …, floor (methods in this order), and each method's ratio is
to the mean of the two floors around it, so load that changes on a shared machine — even within
one round, which takes minutes at 64k — hits both sides of every ratio alike:

* ``floor``           — the three N×D×N matrix products any exact method must do (``XYᵀ``, ``GY``,
                        ``GᵀX``, in 8192-blocks), with no elementwise work: the arithmetic floor;
* ``clip/tiled``      — :func:`contrastkit.scale.tiled_clip_loss` (``--tile``);
* ``clip/dense``      — :func:`contrastkit.losses.clip_loss` (materialises the N×N logits);
* ``clip/open_clip``  — open_clip's ``ClipLoss`` (if ``open_clip`` is installed: ``make bench``);
* the same three for SigLIP.

Per (N, method): the median seconds over rounds, the median of the per-round ratios
``method / floor`` with their min–max, how many times faster the tiled forms ran than the dense
and open_clip ones (median of per-round ratios of ratios), and the extra peak memory of the step,
``peak RSS − RSS before the step − the inputs' gradients (2·N·D·4 bytes)`` (glibc is told to
return every block ≥ 64 KiB to the OS on free, so resident memory tracks live tensors), plus the
1-minute load average before and after. Dense forms are skipped where their N×N matrices would
not fit (``--max-dense-gib``, estimated from the matrices each keeps). Each round is also written
as one JSON line to ``--out`` (appended), so that runs at different N — 64k takes ~8 minutes a
round on 2 cores — can be made separately and summarised or plotted together (the commands of
docs/performance.md; each record names the git commit measured):

    python benchmarks/loss_scaling.py --sizes 1024,2048,4096,8192 --rounds 5 --out runs/ls.jsonl
    python benchmarks/loss_scaling.py --sizes 65536 --rounds 1 --out runs/ls.jsonl  # twice
    python benchmarks/loss_scaling.py --summary runs/ls.jsonl --plot docs/cost-loss-vs-n.png
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import (
    MEMORY_PASS,
    TIMING,
    floor_step,
    peak_bytes,
    reset_peak,
    rss_bytes,
    set_mmap_threshold,
    source_state,
)

__all__ = ["METHODS", "dense_gib", "main", "measure_size", "plot", "summarise"]

METHODS = (
    "floor",
    "clip/tiled",
    "clip/dense",
    "clip/open_clip",
    "siglip/tiled",
    "siglip/dense",
    "siglip/open_clip",
)
# N×N float32 matrices each dense form keeps at its peak (measured at N = 16,384: 4.9, 4.0, 3.9,
# 5.0), rounded up by one so the estimate errs towards skipping.
DENSE_MATRICES = {"clip/dense": 6, "clip/open_clip": 5, "siglip/dense": 5, "siglip/open_clip": 6}
Step = Callable[[object, object], None]


def dense_gib(method: str, n: int) -> float:
    """Estimated GiB of N×N float32 matrices ``method`` keeps (0 for the floor and tiled forms)."""
    return DENSE_MATRICES.get(method, 0) * n * n * 4 / 2**30


def _steps(methods: list[str], tile: int) -> dict[str, Step]:
    """One forward + backward (or the floor's products) per method, on (x, y) with gradients."""
    import torch

    from contrastkit.losses import clip_loss, siglip_loss
    from contrastkit.scale import tiled_clip_loss, tiled_siglip_loss

    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    losses: dict[str, Callable] = {
        "clip/dense": lambda x, y: clip_loss(x, y, scale, normalize=False),
        "clip/tiled": lambda x, y: tiled_clip_loss(x, y, scale, normalize=False, tile_size=tile),
        "siglip/dense": lambda x, y: siglip_loss(x, y, scale, bias, normalize=False),
        "siglip/tiled": lambda x, y: tiled_siglip_loss(x, y, scale, bias, normalize=False, tile_size=tile),
    }
    if any(m.endswith("open_clip") for m in methods):
        from open_clip.loss import ClipLoss, SigLipLoss

        oc_clip, oc_siglip = ClipLoss(), SigLipLoss()
        losses["clip/open_clip"] = lambda x, y: oc_clip(x, y, scale)
        losses["siglip/open_clip"] = lambda x, y: oc_siglip(x, y, scale, bias)
    steps: dict[str, Step] = {"floor": floor_step}
    for m in methods:
        if m != "floor":
            steps[m] = lambda x, y, f=losses[m]: f(x, y).backward()
    return {m: steps[m] for m in methods}


def _timed(step: Step, x, y, inner: int = 1) -> tuple[float, float]:
    """(seconds per step, extra peak MiB beyond the inputs' gradients) of ``inner`` steps."""
    n, d = x.shape
    x.grad = y.grad = None
    gc.collect()  # the previous method's graph and buffers are gone before the baseline
    reset_peak()
    base = rss_bytes()
    t0 = time.perf_counter()
    for _ in range(inner):
        x.grad = y.grad = None
        step(x, y)
    seconds = (time.perf_counter() - t0) / inner
    extra = peak_bytes() - base - 2 * n * d * 4
    x.grad = y.grad = None
    return seconds, max(0, extra) / 2**20


def measure_size(n: int, methods: list[str], args: argparse.Namespace) -> list[dict]:
    """``args.rounds`` interleaved rounds at batch size ``n``: one record per round."""
    import torch
    import torch.nn.functional as F

    steps = _steps(methods, args.tile)
    g = torch.Generator().manual_seed(0)
    w = min(n, 1024)
    small = [F.normalize(torch.randn(w, args.dim, generator=g), dim=-1).requires_grad_() for _ in range(2)]
    for step in steps.values():  # threads and kernels warm, outside the measured rounds
        _timed(step, *small)
    del small
    x = F.normalize(torch.randn(n, args.dim, generator=g), dim=-1).requires_grad_()
    y = F.normalize(torch.randn(n, args.dim, generator=g), dim=-1).requires_grad_()
    # Small N: several steps per measurement (≥ ~0.3 s of floor), so timer and gc noise stay small.
    inner = 1 if n > 8192 else max(1, min(50, round(0.3 / _timed(floor_step, x, y)[0])))  # 64k: 70 s
    set_mmap_threshold(MEMORY_PASS)  # memory: one untimed step per method, freed blocks returned
    memory = {m: _timed(step, x, y)[1] for m, step in steps.items()}
    set_mmap_threshold(TIMING)  # timing: large temporaries reused from the heap, as in training
    records = []
    for r in range(args.rounds):
        rec: dict = {"n": n, "dim": args.dim, "tile": args.tile, "threads": args.threads, "round": r}
        rec["malloc"] = "timed at a 32 MiB mmap threshold; memory from a 64 KiB pass"
        rec["run"], rec["inner"], rec["load_before"] = args.run_id, inner, os.getloadavg()[0]
        rec["source"] = source_state()
        _bracketed_round(rec, steps, x, y, inner)
        rec["extra_mib"] = dict(memory)
        rec["load_after"] = os.getloadavg()[0]
        records.append(rec)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        print(f"# N={n:,} round {r + 1}/{args.rounds}: {_brief(rec)}", file=sys.stderr, flush=True)
    return records


def _bracketed_round(rec: dict, steps: dict[str, Step], x, y, inner: int) -> None:
    """floor, A, floor, B, …, floor: each method's ratio is to the mean of the two floors around
    it, so load that changes within a round (a 64k round takes minutes) hits both sides alike."""
    floors: list[float] = []
    rec["seconds"], rec["extra_mib"], rec["ratio"], rec["floor_seconds"] = {}, {"floor": 0.0}, {}, floors

    def floor_once() -> None:
        sec, mib = _timed(steps["floor"], x, y, inner)
        floors.append(sec)
        rec["extra_mib"]["floor"] = max(rec["extra_mib"]["floor"], mib)

    floor_once()
    for m, step in steps.items():
        if m == "floor":
            continue
        rec["seconds"][m], rec["extra_mib"][m] = _timed(step, x, y, inner)
        floor_once()
        rec["ratio"][m] = rec["seconds"][m] / ((floors[-2] + floors[-1]) / 2)
    rec["seconds"]["floor"], rec["ratio"]["floor"] = statistics.median(floors), 1.0


def _brief(rec: dict) -> str:
    floors = "/".join(f"{f:.2f}" for f in rec["floor_seconds"])
    return f"floors {floors}s; " + ", ".join(
        f"{m} {rec['ratio'][m]:.2f}×" for m in rec["ratio"] if m != "floor"
    )


def summarise(records: list[dict]) -> list[dict]:
    """Per (N, method): median seconds, per-round ratio to the floor (median, min, max), the
    largest extra MiB, rounds, and the load range seen."""
    by_n: dict[int, list[dict]] = defaultdict(list)
    for rec in records:
        by_n[rec["n"]].append(rec)
    rows = []
    for n in sorted(by_n):
        recs = by_n[n]
        loads = [v for r in recs for v in (r["load_before"], r["load_after"])]
        for m in METHODS:
            have = [r for r in recs if m in r["seconds"]]
            if not have:
                continue
            ratios = [r["ratio"][m] for r in have]
            row = {"n": n, "method": m, "rounds": len(have), "dim": have[0]["dim"]}
            row["seconds"] = statistics.median(r["seconds"][m] for r in have)
            row["extra_mib"] = max(r["extra_mib"][m] for r in have)
            if ratios:
                row["ratio"], row["ratio_min"], row["ratio_max"] = (
                    statistics.median(ratios),
                    min(ratios),
                    max(ratios),
                )
            row["load"] = (min(loads), max(loads))
            rows.append(row)
    return rows


def speedups(records: list[dict]) -> list[dict]:
    """Per (N, loss, other form): the median of the per-round ratios ``other / tiled`` with their
    min–max — how many times faster the tiled form ran than the dense and open_clip forms."""
    by_n: dict[int, list[dict]] = defaultdict(list)
    for rec in records:
        by_n[rec["n"]].append(rec)
    rows = []
    for n in sorted(by_n):
        for loss in ("clip", "siglip"):
            for other in ("dense", "open_clip"):
                a, b = f"{loss}/tiled", f"{loss}/{other}"
                # ratio of the two methods' floor-bracketed ratios: each is against its own neighbours
                r = [x["ratio"][b] / x["ratio"][a] for x in by_n[n] if a in x["ratio"] and b in x["ratio"]]
                if r:
                    rows.append({"n": n, "loss": loss, "other": other, "median": statistics.median(r)})
                    rows[-1].update(min=min(r), max=max(r), rounds=len(r))
    return rows


def print_table(rows: list[dict], skipped: list[tuple[int, str]]) -> None:
    print(
        "| N | method | rounds | time s (median) | × floor, median of rounds (min–max) | extra MiB | load |"
    )
    print("|---:|---|---:|---:|---:|---:|---|")
    for row in rows:
        ratio = (
            f"{row['ratio']:.2f} ({row['ratio_min']:.2f}–{row['ratio_max']:.2f})" if "ratio" in row else "—"
        )
        load = f"{row['load'][0]:.1f}–{row['load'][1]:.1f}"
        cells = [f"{row['n']:,}", row["method"], str(row["rounds"]), f"{row['seconds']:.3f}", ratio]
        print("| " + " | ".join([*cells, f"{row['extra_mib']:,.0f}", load]) + " |")
    for n, m in skipped:
        print(f"| {n:,} | {m} | — | skipped | — | ~{dense_gib(m, n):.0f} GiB needed | — |")


def print_speedups(rows: list[dict]) -> None:
    if not rows:  # no dense or open_clip form ran (e.g. 64k): nothing to compare the tiled ones with
        return
    print("\n| N | loss | tiled is this many × faster than | median of rounds (min–max) | rounds |")
    print("|---:|---|---|---:|---:|")
    for r in rows:
        cells = [f"{r['n']:,}", r["loss"], r["other"], f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"]
        print("| " + " | ".join([*cells, str(r["rounds"])]) + " |")


def plot(rows: list[dict], path: str) -> None:
    """Time (× floor and seconds) and extra memory vs N, log axes, CLIP and SigLIP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    dim = rows[0]["dim"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), sharex=True)
    style = {"tiled": ("C0", "o", "contrastkit tiled"), "dense": ("C1", "s", "contrastkit dense")}
    style["open_clip"] = ("C3", "^", "open_clip")
    shift = {"tiled": 0.95, "dense": 1.0, "open_clip": 1.05}  # keeps the min–max bars apart
    fl = [r for r in rows if r["method"] == "floor"]
    for i, loss in enumerate(("clip", "siglip")):
        for form, (color, marker, label) in style.items():
            sel = [r for r in rows if r["method"] == f"{loss}/{form}"]
            if not sel:
                continue
            ns = [r["n"] for r in sel]
            kw = {"color": color, "marker": marker, "label": label}
            err = [[r["ratio"] - r["ratio_min"] for r in sel], [r["ratio_max"] - r["ratio"] for r in sel]]
            axes[i, 0].errorbar([n * shift[form] for n in ns], [r["ratio"] for r in sel], yerr=err, **kw)
            axes[i, 1].plot(ns, [r["seconds"] for r in sel], **kw)
            axes[i, 2].plot(ns, [max(r["extra_mib"], 1) for r in sel], **kw)
        axes[i, 1].plot([r["n"] for r in fl], [r["seconds"] for r in fl], "k--", label="floor (3 products)")
        inputs = [4 * r["n"] * dim * 4 / 2**20 for r in fl]  # x, y and their gradients in float32
        axes[i, 2].plot([r["n"] for r in fl], inputs, "k:", label=f"for scale: embeddings + grads (D {dim})")
        axes[i, 0].axhline(1.0, color="k", ls="--", lw=0.8)
        axes[i, 0].set_ylabel(f"{loss.upper()}: time × floor\n(median of rounds, min–max)")
        axes[i, 1].set_ylabel("seconds per step (median)")
        axes[i, 2].set_ylabel("extra peak MiB")
        axes[i, 1].set_yscale("log")
        axes[i, 2].set_yscale("log")
        for ax in axes[i]:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1024:g}k"))
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("batch size N")
    fig.suptitle(
        f"Loss step (forward + backward) vs batch size N: float32, D = {dim}, interleaved rounds in one "
        "process; dense forms stop where their N×N matrices would not fit",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1024,4096,16384", help="comma-separated batch sizes N")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per N")
    p.add_argument("--max-dense-gib", type=float, default=12.0, help="skip dense forms needing more")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", help="append one JSON line per round to this file")
    p.add_argument("--run-id", default=time.strftime("%Y-%m-%dT%H:%M:%S"), help="stored with each round")
    p.add_argument("--summary", help="summarise a JSON-lines file of rounds instead of measuring")
    p.add_argument("--plot", help="with --summary: write the figure here (PNG)")
    args = p.parse_args(argv)
    if args.summary:
        with open(args.summary) as fh:
            records = [json.loads(line) for line in fh if line.strip()]
        rows = summarise(records)
        print_table(rows, [])
        print_speedups(speedups(records))
        if args.plot:
            plot(rows, args.plot)
        return
    import torch

    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    if "floor" not in methods:
        methods.insert(0, "floor")  # every ratio is to the floor of the same round
    try:
        import open_clip  # noqa: F401
    except ImportError:
        print("# open_clip not installed (make bench installs it): its rows are left out", file=sys.stderr)
        methods = [m for m in methods if not m.endswith("open_clip")]
    print(
        f"D={args.dim}, float32, {args.threads} threads, tile {args.tile}, {args.rounds} interleaved rounds, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, torch {torch.__version__}, {args.run_id}"
    )
    records, skipped = [], []
    for n in (int(s) for s in args.sizes.split(",")):
        fits = [m for m in methods if dense_gib(m, n) <= args.max_dense_gib]
        skipped += [(n, m) for m in methods if m not in fits]
        records += measure_size(n, fits, args)
    print_table(summarise(records), skipped)
    print_speedups(speedups(records))


if __name__ == "__main__":
    main()
