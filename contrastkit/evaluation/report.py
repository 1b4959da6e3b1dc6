"""Evaluate a model on labelled pair sets and report: zero-shot, retrieval, a similarity plot.

``evaluate_pairs`` measures one :class:`PairSet`; ``evaluate_run`` loads a trained run, evaluates
its configured splits, writes ``RUN/metrics.json`` (every metric plus the protocol that produced
it) and ``RUN/similarity.png``, and returns the metrics; ``format_table`` prints them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.core.io import atomic_write_json
from contrastkit.data import load_split
from contrastkit.data.pairs import PairSet
from contrastkit.evaluation.encoders import Encoders, model_encoders
from contrastkit.evaluation.plots import plot_similarity
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult

__all__ = ["TASKS", "evaluate_examples", "evaluate_pairs", "evaluate_run", "format_table"]

TASKS = ("zeroshot", "retrieval")  # the default selection; EVAL_TASKS lists all


def _evaluate(
    enc: Encoders,
    pairs: PairSet,
    tasks: Sequence[str],
    train_pairs: PairSet | None = None,
    options: dict[str, Any] | None = None,
) -> TaskResult:
    """Run the selected registered tasks on one pair set, sharing the embeddings."""
    ctx = EvalContext(enc, pairs, train_pairs, dict(options or {}))
    out: dict[str, float] = {}
    examples: dict[str, np.ndarray] = {}
    for name in tasks:
        metrics, ex = EVAL_TASKS.get(name)(ctx)
        out.update(metrics)
        examples.update(ex)
    return out, examples


def evaluate_pairs(enc: Encoders, pairs: PairSet, tasks: Sequence[str] = TASKS) -> dict[str, float]:
    """Flat ``{metric: value}`` for one pair set: ``zeroshot/<task>/top1`` …, ``retrieval/...``."""
    return _evaluate(enc, pairs, tasks)[0]


def evaluate_examples(
    enc: Encoders,
    pairs: PairSet,
    tasks: Sequence[str] = TASKS,
    train_pairs: PairSet | None = None,
    options: dict[str, Any] | None = None,
) -> TaskResult:
    """Metrics and per-example scores: ``zeroshot/<task>/top1`` → 0/1 per labelled image,
    ``retrieval/text_to_image_R@K`` → 0/1 per text, ``retrieval/image_to_text_R@K`` → per image.
    The mean of each array is the matching metric."""
    return _evaluate(enc, pairs, tasks, train_pairs, options)


def _similarity_figure(enc: Encoders, pairs: PairSet, path: Path, n: int = 12) -> None:
    idx = np.arange(min(n, len(pairs)))
    sub = pairs.subset(idx)
    caps = [c[0] for c in sub.captions]
    sims = enc.images(sub.images) @ enc.texts(caps).T
    plot_similarity(sub.images, caps, sims, path, title=f"{pairs.name}: image–text cosine similarity")


def evaluate_run(
    run_dir: str | Path,
    splits: Sequence[str] | None = None,
    tasks: Sequence[str] = TASKS,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Evaluate a run's newest checkpoint on ``splits`` (default: the config's ``eval_splits``)."""
    from contrastkit.train import load_run  # evaluation sits above train: this import is downward

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    cfg, model, _, ckpt = load_run(run_dir)
    enc = model_encoders(model, batch_size=batch_size)
    splits = list(splits or cfg.data.eval_splits)
    results: dict[str, Any] = {}
    for i, split in enumerate(splits):
        pairs = load_split(cfg.data, split)
        results[split] = evaluate_pairs(enc, pairs, tasks)
        if i == 0:
            _similarity_figure(enc, pairs, run_dir / "similarity.png")
    report = {
        "run": str(run_dir),
        "checkpoint": ckpt.name,
        "metrics": results,
        "protocol": {
            "data": cfg.data.name,
            "splits": splits,
            "tasks": list(tasks),
            "zeroshot": "class = norm(mean of normalised prompt embeddings); argmax cosine",
            "retrieval": (
                "CLIP_benchmark recall@K; image->text hit if any own caption in top K; ties by lower index"
            ),
        },
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_json(run_dir / "metrics.json", report)
    return report


def _natural(name: str) -> list[object]:
    """Sort key that orders R@5 before R@10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per metric, one column per split."""
    splits = list(metrics)
    names = sorted({k for m in metrics.values() for k in m}, key=_natural)
    width = max([len(n) for n in names] + [6])
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{s:>9}" for s in splits)]
    lines.append("-" * len(lines[0]))
    for n in names:
        cells = []
        for s in splits:
            v = metrics[s].get(n)
            cells.append(f"{'—':>9}" if v is None or np.isnan(v) else f"{v:>9.3f}")
        lines.append(f"{n:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
