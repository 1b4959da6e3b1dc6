"""R-UNIF-TOL — uniformity and tolerance of an embedding space (Wang & Liu, CVPR 2021).

The paper's two measurements of the uniformity–tolerance dilemma, on L2-normalised embeddings
``f`` with class labels ``l`` (evaluation only):

* Uniformity ``U = log mean_{i<j} exp(−t‖f_i − f_j‖²)``, t = 2 (exactly L-UNIFORM; lower = more
  uniform; biased in N, so N is reported), computed by :func:`contrastkit.evaluation.geometry.uniformity`
  exactly in row chunks, on a seeded subsample of at most ``max_uniformity`` items per modality.
* Tolerance ``T = mean_{i≠j: l_i = l_j} f_i·f_j`` (:func:`tolerance`): the mean cosine between
  distinct samples of the same class (higher = more tolerant to semantically similar samples),
  exactly, in O(N·d): ``Σ_c (‖Σ_{i∈c} f_i‖² − Σ_{i∈c} ‖f_i‖²) / Σ_c n_c(n_c − 1)``. Items with a
  negative label (not in the task) are left out; classes with one member add no pair.

The registered task ``uniformity_tolerance`` reports, for the evaluated split,
``uniformity_tolerance/{image,text}_uniformity`` with ``n_image``/``n_text``, and per labelled
class task ``uniformity_tolerance/<task>/{image,text}_tolerance`` with the number of labelled
items ``n`` and classes ``n_classes`` (a caption takes its image's label). Options
(``ctx.options["uniformity_tolerance"]``): ``t`` (2), ``max_uniformity`` (5000), ``seed`` (0),
``chunk`` (1024); unknown keys raise ConfigError. No per-example scores (neither quantity is a
mean over examples). TEST ORACLES: T = 1 when each class collapses to a point; U of two antipodal
points = −8; both against direct double loops. Related: E-ALIGNUNIF (``geometry``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.evaluation.geometry import uniformity
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult

__all__ = ["TOLERANCE_DEFAULTS", "tolerance", "uniformity_tolerance_task"]

TOLERANCE_DEFAULTS: dict[str, Any] = {"t": 2.0, "max_uniformity": 5000, "seed": 0, "chunk": 1024}


def tolerance(f: torch.Tensor, labels: np.ndarray | torch.Tensor) -> tuple[float, int, int]:
    """``(T, n, n_classes)``: mean cosine over distinct same-class pairs of the labelled rows."""
    check_embeddings("f", f)
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if lab.shape != (f.shape[0],):
        raise InputError(f"labels must have shape [{f.shape[0]}], got {tuple(lab.shape)}")
    keep = lab >= 0
    z = F.normalize(f.double()[keep], dim=-1)
    classes, inv = torch.unique(lab[keep], return_inverse=True)
    counts = torch.bincount(inv, minlength=len(classes)).double()
    pairs = float((counts * (counts - 1)).sum())
    if pairs == 0:
        raise InputError("tolerance needs a class with at least 2 labelled items")
    sums = torch.zeros(len(classes), z.shape[1], dtype=z.dtype).index_add_(0, inv, z)
    total = float(sums.pow(2).sum() - z.pow(2).sum())  # Σ over ordered pairs i ≠ j of f_i·f_j
    return total / pairs, int(keep.sum()), len(classes)


def _options(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(TOLERANCE_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown uniformity_tolerance option(s) {unknown}; valid: {sorted(TOLERANCE_DEFAULTS)}"
        )
    opts = {**TOLERANCE_DEFAULTS, **raw}
    if int(opts["max_uniformity"]) < 2 or int(opts["chunk"]) < 1 or not float(opts["t"]) > 0:
        raise ConfigError(f"uniformity_tolerance options out of range: {opts}")
    return opts


def _subsample(n: int, m: int, seed: int) -> np.ndarray:
    return np.arange(n) if n <= m else np.sort(np.random.default_rng(seed).choice(n, m, replace=False))


@EVAL_TASKS.register("uniformity_tolerance")
def uniformity_tolerance_task(ctx: EvalContext) -> TaskResult:
    """Uniformity per modality and tolerance per labelled class task (Wang & Liu 2021)."""
    o = _options(dict(ctx.options.get("uniformity_tolerance", {})))
    m, seed, t, chunk = int(o["max_uniformity"]), int(o["seed"]), float(o["t"]), int(o["chunk"])
    x, y, owner = ctx.image_emb, ctx.text_emb, ctx.captions[1]
    out: dict[str, float] = {}
    for name, z, s in (("image", x, seed), ("text", y, seed + 1)):
        idx = _subsample(len(z), m, s)
        out[f"uniformity_tolerance/{name}_uniformity"] = (
            uniformity(z[idx], t, chunk) if len(idx) > 1 else np.nan
        )
        out[f"uniformity_tolerance/n_{name}"] = float(len(idx))
    for tname, task in ctx.pairs.tasks.items():
        labels = np.asarray(task.labels)
        for name, z, lab in (("image", x, labels), ("text", y, labels[np.asarray(owner)])):
            try:
                tol, n, c = tolerance(z, lab)
            except InputError:  # no class with two labelled items in this split
                continue
            out[f"uniformity_tolerance/{tname}/{name}_tolerance"] = tol
            if name == "image":
                out[f"uniformity_tolerance/{tname}/n"] = float(n)
                out[f"uniformity_tolerance/{tname}/n_classes"] = float(c)
    return out, {}
