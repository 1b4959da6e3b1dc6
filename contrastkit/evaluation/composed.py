"""Composed image retrieval on generated Shapes: an image plus a modification text → the target.

Protocol (task ``composed``): :func:`~contrastkit.data.composed.make_composed_shapes` makes ``n``
triples (reference, "this image, but blue" / "this image, but a square", target) with the same
background, size and position, only the named attribute changed. Each query is scored against a
gallery of all ``n`` targets plus all ``n`` references (the unchanged reference is the hardest
distractor: a query embedding that ignores its text retrieves it). Cosine similarity of
L2-normalised embeddings; recall@K = the fraction of queries whose target ranks in the top K
(ties count against the query: rank = #gallery items scoring strictly higher + #tied items of lower
index). Query embeddings, by method:

* ``sum`` — ``norm(norm(f_img(reference)) + norm(f_txt(text)))``, for every model (for a dual
  encoder such as CLIP it is the standard zero-shot baseline of composed retrieval);
* ``fused`` — the model's own joint encoding of (reference, text) (``Encoders.composed``: FuseLIP's
  early fusion), when it has one.

Metrics: ``composed/<method>/R@1``, ``R@5``, the same per change (``composed/<method>/<change>/R@1``)
and ``composed/<method>/reference@1`` (share of queries whose top item is their own reference).
Options (``options["composed"]``): ``n`` (500), ``seed`` (0), ``image_size`` (default: the evaluated
split's), ``changes`` (``["color", "shape"]``). The triples do not depend on the evaluated split, so
the report evaluates the task once (column ``generated``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError
from contrastkit.data.composed import CHANGES, ComposedSet, make_composed_shapes
from contrastkit.evaluation.tasks import EVAL_TASKS, SPLIT_INDEPENDENT, EvalContext, TaskResult

__all__ = ["COMPOSED_DEFAULTS", "composed_queries", "composed_ranks", "composed_task"]

COMPOSED_DEFAULTS: dict[str, Any] = {"n": 500, "seed": 0, "image_size": None, "changes": list(CHANGES)}


def composed_ranks(queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """0-based rank of gallery item ``targets[i]`` for query ``i`` (cosine of normalised rows; an
    item scoring the same as the target counts above it if its index is lower)."""
    q, g = F.normalize(queries.float(), dim=-1), F.normalize(gallery.float(), dim=-1)
    s = q @ g.T
    own = s.gather(1, targets[:, None])
    lower = torch.arange(len(g))[None, :] < targets[:, None]
    return ((s > own) | ((s == own) & lower)).sum(1).numpy()


def composed_queries(enc: Any, data: ComposedSet) -> dict[str, torch.Tensor]:
    """Query embeddings of every method the encoders support (module docstring)."""
    img = F.normalize(enc.images(data.references).float(), dim=-1)
    txt = F.normalize(enc.texts(list(data.texts)).float(), dim=-1)
    out = {"sum": F.normalize(img + txt, dim=-1)}
    if getattr(enc, "composed", None) is not None:
        out["fused"] = F.normalize(enc.composed(data.references, list(data.texts)).float(), dim=-1)
    return out


@EVAL_TASKS.register("composed")
def composed_task(ctx: EvalContext) -> TaskResult:
    """Composed image retrieval on generated Shapes ("this image, but blue"): recall@1/5
    of the changed scene among targets + references, by image+text embedding sum and, for a fused
    encoder (FuseLIP), its joint encoding."""
    raw = dict(ctx.options.get("composed", {}))
    unknown = sorted(set(raw) - set(COMPOSED_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown composed option(s) {unknown}; valid: {sorted(COMPOSED_DEFAULTS)}")
    opts = {**COMPOSED_DEFAULTS, **raw}
    size = int(opts["image_size"] or ctx.pairs.images.shape[-1])
    data = make_composed_shapes(int(opts["n"]), size, int(opts["seed"]), tuple(opts["changes"]))
    n = len(data)
    gallery = F.normalize(ctx.enc.images(torch.cat([data.targets, data.references])).float(), dim=-1)
    kinds = np.asarray(data.changes)
    out: dict[str, float] = {}
    examples: dict[str, np.ndarray] = {}
    for method, q in composed_queries(ctx.enc, data).items():
        ranks = composed_ranks(q, gallery, torch.arange(n))
        top = (q @ gallery.T).argmax(1).numpy()
        for k in (1, 5):
            hits = (ranks < k).astype(np.float64)
            examples[f"composed/{method}/R@{k}"] = hits
            out[f"composed/{method}/R@{k}"] = float(hits.mean())
            for change in sorted(set(kinds)):
                out[f"composed/{method}/{change}/R@{k}"] = float(hits[kinds == change].mean())
        out[f"composed/{method}/reference@1"] = float((top == np.arange(n) + n).mean())
    return out, examples


SPLIT_INDEPENDENT["composed"] = lambda ctx: True  # triples from (n, seed, changes) only
