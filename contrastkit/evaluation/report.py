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
import torch
import torch.nn.functional as F

from contrastkit.core.errors import InputError
from contrastkit.core.io import atomic_write_json
from contrastkit.data import load_split
from contrastkit.data.pairs import PairSet
from contrastkit.evaluation.encoders import Encoders, model_encoders
from contrastkit.evaluation.plots import plot_similarity
from contrastkit.evaluation.retrieval import image_to_text_ranks, retrieval_metrics, text_to_image_ranks
from contrastkit.evaluation.zeroshot import zero_shot_classifier, zero_shot_metrics

__all__ = ["TASKS", "evaluate_examples", "evaluate_pairs", "evaluate_run", "format_table"]

TASKS = ("zeroshot", "retrieval")


def _evaluate(enc: Encoders, pairs: PairSet, tasks: Sequence[str]):
    """Aggregate metrics and per-example scores (what the Multi-Bootstrap resamples)."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise InputError(f"unknown evaluation task(s) {unknown}; available: {list(TASKS)}")
    img = enc.images(pairs.images)
    out: dict[str, float] = {}
    examples: dict[str, np.ndarray] = {}
    if "zeroshot" in tasks:
        for name, task in pairs.tasks.items():
            if not (task.labels >= 0).any():
                continue
            w = zero_shot_classifier(enc.texts, task.prompts())
            m = zero_shot_metrics(img, w, task.labels)
            for key in ("top1", "top5", "balanced_accuracy"):
                out[f"zeroshot/{name}/{key}"] = float(m[key])
            keep = task.labels >= 0  # per labelled image: 1.0 if the top-1 class is right
            pred = (F.normalize(img[torch.from_numpy(keep)], dim=-1) @ w.T).argmax(1).numpy()
            examples[f"zeroshot/{name}/top1"] = (pred == task.labels[keep]).astype(np.float64)
    if "retrieval" in tasks:
        texts, owner = pairs.flat_captions()
        txt = enc.texts(texts)
        r = retrieval_metrics(img, txt, owner)
        out.update({f"retrieval/{k}": v for k, v in r.items()})
        x, t, o = F.normalize(img, dim=-1), F.normalize(txt, dim=-1), torch.from_numpy(owner)
        t2i, i2t = text_to_image_ranks(x, t, o).numpy(), image_to_text_ranks(x, t, o).numpy()
        for k in (1, 5, 10):
            examples[f"retrieval/text_to_image_R@{k}"] = (t2i < k).astype(np.float64)
            examples[f"retrieval/image_to_text_R@{k}"] = (i2t < k).astype(np.float64)
    return out, examples


def evaluate_pairs(enc: Encoders, pairs: PairSet, tasks: Sequence[str] = TASKS) -> dict[str, float]:
    """Flat ``{metric: value}`` for one pair set: ``zeroshot/<task>/top1`` …, ``retrieval/...``."""
    return _evaluate(enc, pairs, tasks)[0]


def evaluate_examples(
    enc: Encoders, pairs: PairSet, tasks: Sequence[str] = TASKS
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics and per-example scores: ``zeroshot/<task>/top1`` → 0/1 per labelled image,
    ``retrieval/text_to_image_R@K`` → 0/1 per text, ``retrieval/image_to_text_R@K`` → per image.
    The mean of each array is the matching metric."""
    return _evaluate(enc, pairs, tasks)


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
