"""Same-object matching: is the other view of the same object ranked above other objects of its class?

Protocol (task ``same_object``; paper 34 of the project's reading list: do models match the same
object under changed conditions?). For each query view of an object, the gallery is the
**match** — the same object with one condition changed — and ``m`` **distractors**, other objects
of the query's class, made by :mod:`contrastkit.data.same_object`:

* an evaluated **Shapes** set (``shapes/*``): generated objects at the evaluated images' size;
  identity = shape + colour (exact RGB), class = shape; conditions ``position``, ``size``,
  ``background``. The views do not depend on the evaluated split, so the report evaluates the
  task once (column ``generated``);
* an evaluated **Fashion-MNIST** set (``fashion_mnist/*``): items of the evaluated split (class
  task ``class``), identity = the item; conditions ``crop`` (zoom and shift), ``flip``,
  ``brightness``;
* any other set: :class:`InputError` naming the supported ones.

Distractors share the match's conditions (``distractors: matched``, default: only the object tells
the gallery apart, so an embedding blind to identity scores chance exactly) or the query's
(``query``: an embedding that follows the conditions prefers them). Scores: cosine similarity
of L2-normalised image embeddings, in float64. Ties count as a uniformly random order: a query
with a distractors scoring above its match and t tied with it has ``top1 = [a = 0]/(1 + t)`` and
``rank = 1 + a + t/2`` (the expectations). An identity-blind embedding (every gallery item equal)
gets ``top1 = 1/(m + 1)`` and ``rank = (m + 2)/2``, the reported ``same_object/chance``.

Metrics: ``same_object/<condition>/{top1,mean_rank,n}`` with per-example arrays under
``same_object/<condition>/top1`` and ``.../rank``, ``same_object/{top1,mean_rank}`` over all
conditions, ``same_object/chance``, ``same_object/m``. Options (``ctx.options["same_object"]``):
``SAME_OBJECT_DEFAULTS`` — ``n`` queries per condition (200; Fashion-MNIST: at most the eligible
items), ``m`` (9), ``seed`` (0), ``distractors``, ``conditions`` (default: all of the data set's),
``image_size`` (Shapes; default: the evaluated images'); unknown keys raise ConfigError.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.same_object import (
    FASHION_CONDITIONS,
    SHAPES_CONDITIONS,
    SameObjectSet,
    make_same_object_shapes,
    make_same_object_views,
)
from contrastkit.evaluation.encoders import Encoders
from contrastkit.evaluation.tasks import EVAL_TASKS, SPLIT_INDEPENDENT, EvalContext, TaskResult

__all__ = [
    "SAME_OBJECT_DEFAULTS",
    "gallery_ranks",
    "same_object_scores",
    "same_object_set",
    "same_object_task",
]

SAME_OBJECT_DEFAULTS: dict[str, Any] = {
    "n": 200,
    "m": 9,
    "seed": 0,
    "distractors": "matched",
    "conditions": None,
    "image_size": None,
}
_SUPPORTED = {"shapes": SHAPES_CONDITIONS, "fashion_mnist": FASHION_CONDITIONS}


def gallery_ranks(scores: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(top1, rank)`` per row of ``scores [Q, 1 + m]`` (column 0: the match), expectations under
    a uniformly random order of tied items (module docstring)."""
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise InputError(f"scores must be [Q, 1 + m] with m >= 1, got {tuple(scores.shape)}")
    own = scores[:, :1]
    above = (scores[:, 1:] > own).sum(1).double()
    tied = (scores[:, 1:] == own).sum(1).double()
    top1 = torch.where(above == 0, 1.0 / (1.0 + tied), torch.zeros_like(tied))
    return top1.numpy(), (1 + above + tied / 2).numpy()


def _embed(enc: Encoders, images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    outs = [enc.images(images[i : i + chunk]).float() for i in range(0, len(images), chunk)]
    z = torch.cat(outs)
    if z.ndim != 2:
        raise InputError(f"same_object needs one vector per image, got embeddings of shape {tuple(z.shape)}")
    return F.normalize(z.double(), dim=-1)


def same_object_scores(enc: Encoders, data: SameObjectSet) -> torch.Tensor:
    """``[Q, 1 + m]`` cosine scores of each query against its match (column 0) and distractors,
    all from one float64 product (equal embeddings give equal scores)."""
    q, m = len(data), data.distractors.shape[1]
    gallery = torch.cat([data.matches[:, None], data.distractors], 1).flatten(0, 1)
    g = _embed(enc, gallery).reshape(q, 1 + m, -1)
    return torch.einsum("qd,qgd->qg", _embed(enc, data.queries), g)


def _dataset(ctx: EvalContext) -> str:
    family = ctx.pairs.name.split("/")[0]
    if family not in _SUPPORTED:
        raise InputError(
            f"same_object supports Shapes (shapes/*) and Fashion-MNIST (fashion_mnist/*) evaluation sets; "
            f"got {ctx.pairs.name or '(unnamed)'!r}"
        )
    return family


def _options(ctx: EvalContext) -> dict[str, Any]:
    raw = dict(ctx.options.get("same_object", {}))
    unknown = sorted(set(raw) - set(SAME_OBJECT_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown same_object option(s) {unknown}; valid: {sorted(SAME_OBJECT_DEFAULTS)}")
    o = {**SAME_OBJECT_DEFAULTS, **raw}
    if int(o["n"]) < 1 or int(o["m"]) < 1 or o["distractors"] not in ("matched", "query"):
        raise ConfigError(f"same_object options: n >= 1, m >= 1, distractors matched|query; got {o}")
    return o


def same_object_set(ctx: EvalContext) -> SameObjectSet:
    """The views the task ranks for ``ctx`` (module docstring)."""
    family, o = _dataset(ctx), _options(ctx)
    known = _SUPPORTED[family]
    conditions = tuple(o["conditions"] or known)
    if set(conditions) - set(known):
        raise ConfigError(f"same_object conditions for {family} are {list(known)}, got {list(conditions)}")
    n, m, seed, mode = int(o["n"]), int(o["m"]), int(o["seed"]), str(o["distractors"])
    if family == "shapes":
        size = int(o["image_size"] or ctx.pairs.image_tensor().shape[-1])
        return make_same_object_shapes(n, size, seed, conditions, m, mode)
    task = ctx.pairs.tasks.get("class")
    if task is None:
        raise InputError(f"{ctx.pairs.name}: same_object needs the class task 'class'")
    return make_same_object_views(ctx.pairs.image_tensor(), task.labels, n, seed, conditions, m, mode)


@EVAL_TASKS.register("same_object")
def same_object_task(ctx: EvalContext) -> TaskResult:
    """Same-object matching under one changed condition (Shapes: position, size, background;
    Fashion-MNIST: crop, flip, brightness): top-1 and mean rank of the other view of the query's
    object among it and m = 9 distractors of its class (random tie order; chance 1/(m + 1))."""
    data = same_object_set(ctx)
    top1, rank = gallery_ranks(same_object_scores(ctx.enc, data))
    m = int(data.distractors.shape[1])
    kinds = np.asarray(data.conditions)
    out: dict[str, float] = {"same_object/chance": 1.0 / (m + 1), "same_object/m": float(m)}
    out.update({"same_object/top1": float(top1.mean()), "same_object/mean_rank": float(rank.mean())})
    examples: dict[str, np.ndarray] = {}
    for c in dict.fromkeys(data.conditions):
        sel = kinds == c
        examples[f"same_object/{c}/top1"], examples[f"same_object/{c}/rank"] = top1[sel], rank[sel]
        out[f"same_object/{c}/top1"] = float(top1[sel].mean())
        out[f"same_object/{c}/mean_rank"] = float(rank[sel].mean())
        out[f"same_object/{c}/n"] = float(sel.sum())
    return out, examples


SPLIT_INDEPENDENT["same_object"] = lambda ctx: ctx.pairs.name.startswith("shapes/")  # generated views
