"""Retrieval evaluation cost vs gallery size: the library's exact dense path vs its exact faiss path.

What is timed is :func:`contrastkit.evaluation.retrieval.retrieval_metrics` — recall@1/5/10 both
directions and median ranks, exactly as ``contrastkit eval`` computes them — with
``backend="dense"`` (chunked torch matmul and exact ranks, ``chunk`` 4096) and ``backend="faiss"``
(``faiss.IndexFlatIP``, exact; lists deepen ×4 for undecided queries). ``backend="auto"`` picks
faiss from ``FAISS_THRESHOLD`` (50,000) items. The library has no approximate index, so there is
no recall-vs-speed trade-off to show: both paths return the same numbers (checked every round).

Data (synthetic, float32, D = ``--dim``): a gallery of G unit "image" embeddings (uniform on the
sphere) and ``--queries`` "captions", caption k = normalise(image k + ``--noise``·ε/√D), ε ~ N(0, I):
a model whose caption–image cosine is about 1/√(1 + noise²) (0.20 at noise 5) against distractor
cosines of sd 1/√D. The other G − Q images are distractors without captions (image→text: misses).
The printed R@1/R@10 and median rank say how good this synthetic "model" is; the faiss path's
cost grows for poorer models (its lists must deepen towards the median rank).

For each G in ``--sizes``, ``--rounds`` interleaved rounds (dense, faiss; the next round faiss,
dense) in one process: median seconds of each, the median of the per-round ratios dense/faiss with
min–max, the extra peak resident MiB of each call beyond the inputs, and the 1-minute load average.
Each round is appended as a JSON line to ``--out``; ``--summary FILE [--plot PNG]`` re-prints and
plots them.

    python benchmarks/eval_scaling.py --sizes 10000,100000 --rounds 3
    python benchmarks/eval_scaling.py --summary runs/eval_scaling.jsonl --plot docs/cost-eval-vs-gallery.png
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import MEMORY_PASS, peak_bytes, reset_peak, rss_bytes, set_mmap_threshold, source_state

__all__ = ["BACKENDS", "main", "measure_size", "plot", "summarise", "synthetic"]

BACKENDS = ("dense", "faiss")


def synthetic(g_max: int, queries: int, dim: int, noise: float, seed: int = 0):
    """(gallery [g_max, dim], captions [queries, dim], owner [queries]); caption k describes image k,
    so every prefix ``gallery[:G]`` with G ≥ queries is a valid gallery for the same captions."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    gallery = torch.randn(g_max, dim, generator=gen)
    gallery /= gallery.norm(dim=1, keepdim=True)
    eps = torch.randn(queries, dim, generator=gen) / dim**0.5
    captions = F.normalize(gallery[:queries] + noise * eps, dim=-1)
    return gallery, captions, torch.arange(queries)


def _timed(backend: str, gallery, captions, owner) -> tuple[float, float, dict]:
    """(seconds, extra peak MiB, metrics) of one ``retrieval_metrics`` call."""
    from contrastkit.evaluation.retrieval import retrieval_metrics

    gc.collect()
    reset_peak()
    base = rss_bytes()
    t0 = time.perf_counter()
    metrics = retrieval_metrics(gallery, captions, owner, backend=backend)
    seconds = time.perf_counter() - t0
    return seconds, max(0, peak_bytes() - base) / 2**20, metrics


def measure_size(g: int, data: tuple, args: argparse.Namespace) -> list[dict]:
    """``args.rounds`` interleaved rounds at gallery size ``g``: one record per round."""
    gallery, captions, owner = data[0][:g], data[1], data[2]
    records = []
    for r in range(args.rounds):
        order = BACKENDS if r % 2 == 0 else BACKENDS[::-1]  # A B, B A: no side always goes first
        rec: dict = {"gallery": g, "queries": len(captions), "dim": gallery.shape[1], "noise": args.noise}
        rec.update(round=r, run=args.run_id, threads=args.threads, load_before=os.getloadavg()[0])
        rec["source"] = source_state()
        rec["seconds"], rec["extra_mib"], metrics = {}, {}, {}
        for b in order:
            rec["seconds"][b], rec["extra_mib"][b], metrics[b] = _timed(b, gallery, captions, owner)
        rec["load_after"] = os.getloadavg()[0]
        rec["same_metrics"] = metrics["dense"] == metrics["faiss"]
        m = metrics["faiss"]
        rec["t2i_R@1"], rec["t2i_R@10"] = m["text_to_image_R@1"], m["text_to_image_R@10"]
        rec["t2i_median_rank"] = m["text_to_image_median_rank"]
        records.append(rec)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        secs = ", ".join(f"{b} {s:.2f}s" for b, s in rec["seconds"].items())
        print(f"# G={g:,} round {r + 1}/{args.rounds}: {secs}", file=sys.stderr, flush=True)
    return records


def summarise(records: list[dict]) -> list[dict]:
    """Per gallery size: median seconds per backend, dense/faiss ratio (median, min, max) over
    rounds, largest extra MiB per backend, the synthetic model's quality, and the load range."""
    by_g: dict[int, list[dict]] = defaultdict(list)
    for rec in records:
        by_g[rec["gallery"]].append(rec)
    rows = []
    for g in sorted(by_g):
        recs = by_g[g]
        ratios = [r["seconds"]["dense"] / r["seconds"]["faiss"] for r in recs]
        loads = [v for r in recs for v in (r["load_before"], r["load_after"])]
        row = {"gallery": g, "rounds": len(recs), "queries": recs[0]["queries"], "dim": recs[0]["dim"]}
        for b in BACKENDS:
            row[f"{b}_s"] = statistics.median(r["seconds"][b] for r in recs)
            row[f"{b}_mib"] = max(r["extra_mib"][b] for r in recs)
        row.update(ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
        row.update(same=all(r["same_metrics"] for r in recs), load=(min(loads), max(loads)))
        row.update({k: recs[0][k] for k in ("t2i_R@1", "t2i_R@10", "t2i_median_rank")})
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    head = ["gallery", "rounds", "dense s", "faiss s", "dense / faiss (min–max)", "dense MiB", "faiss MiB"]
    head += ["same metrics", "t2i R@1 · R@10 · median rank", "load"]
    print("| " + " | ".join(head) + " |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        cells = [f"{r['gallery']:,}", str(r["rounds"]), f"{r['dense_s']:.2f}", f"{r['faiss_s']:.2f}"]
        cells += [f"{r['ratio']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f})"]
        cells += [f"{r['dense_mib']:,.0f}", f"{r['faiss_mib']:,.0f}", "yes" if r["same"] else "**no**"]
        cells += [f"{r['t2i_R@1']:.2f} · {r['t2i_R@10']:.2f} · {r['t2i_median_rank']:.0f}"]
        cells += [f"{r['load'][0]:.1f}–{r['load'][1]:.1f}"]
        print("| " + " | ".join(cells) + " |")


def plot(rows: list[dict], path: str) -> None:
    """Seconds and extra memory vs gallery size (log axes), dense vs faiss; the auto threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from contrastkit.evaluation.retrieval import FAISS_THRESHOLD

    gs = [r["gallery"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for b, color, marker in (("dense", "C1", "s"), ("faiss", "C0", "o")):
        axes[0].plot(gs, [r[f"{b}_s"] for r in rows], color=color, marker=marker, label=f'backend="{b}"')
        axes[2].plot(gs, [max(r[f"{b}_mib"], 1) for r in rows], color=color, marker=marker, label=b)
    err = [[r["ratio"] - r["ratio_min"] for r in rows], [r["ratio_max"] - r["ratio"] for r in rows]]
    axes[1].errorbar(gs, [r["ratio"] for r in rows], yerr=err, color="k", marker="o")
    axes[1].axhline(1.0, color="k", ls="--", lw=0.8)
    axes[0].set_ylabel("seconds per evaluation (median)")
    axes[1].set_ylabel("dense time / faiss time\n(median of rounds, min–max)")
    axes[2].set_ylabel("extra peak MiB")
    for ax in axes:
        ax.set_xscale("log")
        ax.axvline(FAISS_THRESHOLD, color="grey", ls=":", lw=1)
        ax.set_xlabel("gallery size G (images)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    q, d = rows[0]["queries"], rows[0]["dim"]
    fig.suptitle(
        f"retrieval_metrics: {q:,} caption queries vs G images, D = {d}, float32, exact both ways; "
        f'dotted: FAISS_THRESHOLD ({FAISS_THRESHOLD:,}), where backend="auto" switches to faiss',
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,30000,100000,300000,1000000", help="gallery sizes G")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--noise", type=float, default=5.0, help="caption = image + noise·ε/√D (see above)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="append one JSON line per round to this file")
    p.add_argument("--run-id", default=time.strftime("%Y-%m-%dT%H:%M:%S"))
    p.add_argument("--summary", help="summarise a JSON-lines file of rounds instead of measuring")
    p.add_argument("--plot", help="with --summary: write the figure here (PNG)")
    args = p.parse_args(argv)
    if args.summary:
        with open(args.summary) as fh:
            rows = summarise([json.loads(line) for line in fh if line.strip()])
        print_table(rows)
        if args.plot:
            plot(rows, args.plot)
        return
    import faiss
    import torch

    set_mmap_threshold(MEMORY_PASS)  # freed score matrices leave RSS at once
    torch.set_num_threads(args.threads)  # the faiss path follows torch's thread count
    sizes = [int(s) for s in args.sizes.split(",")]
    if min(sizes) < args.queries:
        raise SystemExit(f"every gallery size must be ≥ --queries ({args.queries})")
    data = synthetic(max(sizes), args.queries, args.dim, args.noise)
    print(
        f"{args.queries:,} queries, D={args.dim}, float32, noise {args.noise}, {args.threads} threads, "
        f"{args.rounds} interleaved rounds, torch {torch.__version__}, faiss {faiss.__version__}, "
        f"{args.run_id}"
    )
    small = max(args.queries, min(sizes))
    for b in BACKENDS:  # warm threads, BLAS and imports outside the measured rounds
        _timed(b, data[0][:small], data[1], data[2])
    records = []
    for g in sizes:
        records += measure_size(g, data, args)
    print_table(summarise(records))


if __name__ == "__main__":
    main()
