"""The evaluation-task registry: every task is a function of an :class:`EvalContext`.

A task returns ``(metrics, examples)``: aggregate numbers keyed ``<task>/...`` and, where the
metric is a mean over examples, the per-example scores under the same key (what the studies'
Multi-Bootstrap resamples). Tasks are selected by name (``--tasks zeroshot,retrieval,probe``);
each module registers its own with ``@EVAL_TASKS.register(name)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.registry import Registry
from contrastkit.data.pairs import PairSet
from contrastkit.evaluation.encoders import Encoders
from contrastkit.evaluation.retrieval import retrieval_ranks
from contrastkit.evaluation.zeroshot import zero_shot_classifier, zero_shot_metrics

__all__ = ["EVAL_TASKS", "EvalContext", "TaskResult"]

TaskResult = tuple[dict[str, float], dict[str, np.ndarray]]


@dataclass
class EvalContext:
    """What a task may use: the encoders, the evaluated pair set, an optional training pair set
    (probes fit on it), and free-form options (``{"probe": {"max_train": 5000}}``).
    Embeddings are computed once and shared between tasks."""

    enc: Encoders
    pairs: PairSet
    train_pairs: PairSet | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def image_emb(self) -> torch.Tensor:
        return F.normalize(self.enc.images(self.pairs.images).float(), dim=-1)

    @cached_property
    def captions(self) -> tuple[list[str], np.ndarray]:
        return self.pairs.flat_captions()

    @cached_property
    def text_emb(self) -> torch.Tensor:
        return F.normalize(self.enc.texts(self.captions[0]).float(), dim=-1)


EVAL_TASKS: Registry[Callable[[EvalContext], TaskResult]] = Registry("evaluation task")


@EVAL_TASKS.register("zeroshot")
def zeroshot_task(ctx: EvalContext) -> TaskResult:
    """E-ZEROSHOT on every labelled class task of the pair set (prompt ensembles)."""
    out: dict[str, float] = {}
    examples: dict[str, np.ndarray] = {}
    img = ctx.image_emb
    for name, task in ctx.pairs.tasks.items():
        if not (task.labels >= 0).any():
            continue
        w = zero_shot_classifier(ctx.enc.texts, task.prompts())
        m = zero_shot_metrics(img, w, task.labels)
        for key in ("top1", "top5", "balanced_accuracy"):
            out[f"zeroshot/{name}/{key}"] = float(m[key])
        examples[f"zeroshot/{name}/top1"] = np.asarray(m["correct"])
    return out, examples


@EVAL_TASKS.register("retrieval")
def retrieval_task(ctx: EvalContext) -> TaskResult:
    """E-RETRIEVAL both directions with several captions per image; one rank computation gives
    the metrics and the per-example hits (``options["retrieval"]``: ``backend``, ``faiss_threshold``)."""
    _, owner = ctx.captions
    opts = ctx.options.get("retrieval", {})
    t2i, i2t = retrieval_ranks(ctx.image_emb, ctx.text_emb, owner, **opts)
    out: dict[str, float] = {}
    examples: dict[str, np.ndarray] = {}
    for k in (1, 5, 10):
        examples[f"retrieval/text_to_image_R@{k}"] = (t2i < k).astype(np.float64)
        examples[f"retrieval/image_to_text_R@{k}"] = (i2t < k).astype(np.float64)
        out[f"retrieval/image_to_text_R@{k}"] = float(examples[f"retrieval/image_to_text_R@{k}"].mean())
        out[f"retrieval/text_to_image_R@{k}"] = float(examples[f"retrieval/text_to_image_R@{k}"].mean())
    out["retrieval/image_to_text_median_rank"] = float(np.median(i2t) + 1)
    out["retrieval/text_to_image_median_rank"] = float(np.median(t2i) + 1)
    return out, examples
