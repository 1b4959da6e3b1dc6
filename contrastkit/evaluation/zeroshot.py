"""E-ZEROSHOT — zero-shot classification with prompt ensembles.

Spec id: E-ZEROSHOT (docs/evaluation.md), as in open_clip / CLIP_benchmark.
Class weight ``w_c = norm(mean_m norm(enc_text(t_m(c))))`` — each prompt embedding is normalised
*before* averaging. Image logits ``x · W`` (argmax is scale-invariant, so no ×100 here).
Metrics: top-1, top-5 (NaN when C < 5), balanced accuracy (mean per-class recall, over classes
present in the labels) and per-class recall. Images labelled ``-1`` are not part of the task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings
from contrastkit.core.errors import InputError

__all__ = ["zero_shot_classifier", "zero_shot_metrics", "zero_shot_score_metrics"]


def zero_shot_classifier(
    encode_texts: Callable[[list[str]], torch.Tensor], prompts: Sequence[Sequence[str]]
) -> torch.Tensor:
    """Class embeddings ``[C, d]`` from per-class prompt lists (normalise, average, normalise)."""
    if len(prompts) == 0:
        raise InputError("zero-shot classifier needs at least one class")
    for c, p in enumerate(prompts):
        if len(p) == 0:
            raise InputError(f"class {c} has no prompts")
    flat = [t for p in prompts for t in p]
    emb = F.normalize(encode_texts(flat).float(), dim=-1)
    out, i = [], 0
    for p in prompts:
        out.append(emb[i : i + len(p)].mean(0))
        i += len(p)
    return F.normalize(torch.stack(out), dim=-1)


def zero_shot_metrics(
    image_emb: torch.Tensor, classifier: torch.Tensor, labels: np.ndarray | torch.Tensor
) -> dict[str, float | list[float] | np.ndarray]:
    """Top-1/top-5, balanced accuracy and per-class recall of ``argmax(x · Wᵀ)`` vs ``labels``."""
    check_embeddings("image_emb", image_emb)
    check_embeddings("classifier", classifier)
    logits = F.normalize(image_emb.float(), dim=-1) @ F.normalize(classifier.float(), dim=-1).T
    return zero_shot_score_metrics(logits, labels)


def zero_shot_score_metrics(
    scores: torch.Tensor, labels: np.ndarray | torch.Tensor
) -> dict[str, float | list[float] | np.ndarray]:
    """:func:`zero_shot_metrics` from class scores ``[N, C]`` (any scorer: cosine, MaxSim…)."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise InputError(f"labels must have shape [{scores.shape[0]}], got {tuple(labels.shape)}")
    keep = labels >= 0
    if not keep.any():
        raise InputError("no image has a label for this task")
    logits, y = scores[keep].float(), labels[keep]
    n_cls = scores.shape[1]
    if int(y.max()) >= n_cls:
        raise InputError(f"label {int(y.max())} out of range for {n_cls} classes")
    top = logits.topk(min(5, n_cls), dim=1).indices
    top1 = (top[:, 0] == y).float()
    recalls = []
    for c in range(n_cls):
        m = y == c
        recalls.append(float(top1[m].mean()) if m.any() else float("nan"))
    present = [r for r in recalls if not np.isnan(r)]
    return {
        "top1": float(top1.mean()),
        "top5": float((top == y[:, None]).any(1).float().mean()) if n_cls >= 5 else float("nan"),
        "balanced_accuracy": float(np.mean(present)),
        "per_class_recall": recalls,
        "n": int(keep.sum()),
        "correct": top1.numpy().astype(np.float64),  # per labelled image, same tie rule as top1
    }
