"""Similarity as a choice: the pairwise similarity matrix of the N×N losses, selected by name.

What: every loss that builds an N×N (or 2N×2N) similarity matrix through :func:`similarity_matrix`
takes ``similarity`` by name — ``clip``, ``siglip``, ``infonce``, ``ntxent`` and ``supcon`` —
with the default ``"cosine"`` leaving them exactly as before. Paper: Le-Khac, Healy & Smeaton
2020, "Contrastive Representation Learning: A Framework and Review" (seed 79), whose framework
treats the similarity measure as one interchangeable component of a contrastive objective (no
spec entry; the four forms below are the standard ones).

Formulas, rows ``a_i`` of ``a [N, d]`` and ``b_j`` of ``b [M, d]`` → ``S [N, M]``::

    cosine       S_ij = â_i · b̂_j          (rows L2-normalised; normalize=False: the raw dot product)
    dot          S_ij = a_i · b_j           (the embeddings as given)
    neg_sq_dist  S_ij = −‖a_i − b_j‖²
    rbf          S_ij = exp(−‖a_i − b_j‖² / (2σ²)),   σ = ``bandwidth`` (default 1)

Only ``cosine`` normalises (a loss's ``normalize`` flag applies to it alone): on unit rows ``dot``
equals cosine and ``neg_sq_dist`` is ``2·cosine − 2``, so the other three read the embeddings as
the model gives them — which is what makes them a different choice. The loss then scales the
matrix as before (``s·S + b`` for CLIP/SigLIP, ``S/τ`` for NT-Xent/SupCon).

Exactness: ``‖a−b‖² = ‖a‖² + ‖b‖² − 2a·b`` (one matrix product, no ``[N, M, d]``), clamped at 0
against cancellation (a coincident pair then has gradient 0, which is the true gradient of the
squared distance there). Tests compare every form with the explicit ``(a − b)²`` sums in float64.

Tiled / distributed: the ``contrastkit.scale`` wrappers (``scale.tile_size``, ``GatherLoss``, the
rings) compute cosine logits only and refuse another similarity with a :class:`ConfigError`
(:func:`refuse_non_cosine`); ``GatherAllLoss`` (the dense loss on the gathered batch) takes any.
A loss module passes ``similarity``/``bandwidth`` in its ``pure()`` kwargs only when they are not
the default (:func:`similarity_kwargs`), so the wrappers' cosine path is unchanged.

Not converted (they keep cosine, or their own kernels): ``dcl``, ``dclw``, ``multi_positive``,
``am_ntxent``, ``aam_ntxent``, ``hn_nce``, ``llave``, ``hcl``, ``hard_negative_penalty``,
``xmc_decoupled``, ``macl``, ``cwcl``, ``medclip``, ``metrix``, ``m3col``, ``clip_in``, ``mw``,
``sycon``, ``kernel_infonce`` (its own γ-kernel), ``moco2``/``moco3``, ``tcl``, ``mv_infonce``.
Related: L-CLIP, L-SIGLIP, L-NTXENT, L-SUPCON, ``kernel_infonce`` (:mod:`contrastkit.losses.kernel`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError
from contrastkit.losses.base import as_float

__all__ = [
    "DEFAULT_SIMILARITY",
    "SIMILARITIES",
    "SimilarityFn",
    "check_similarity",
    "refuse_non_cosine",
    "register_similarity",
    "similarity_kwargs",
    "similarity_matrix",
    "sq_dists",
]

DEFAULT_SIMILARITY = "cosine"


@dataclass(frozen=True)
class SimilarityFn:
    """A named similarity: ``fn(a, b, bandwidth) -> [N, M]`` and whether rows are L2-normalised
    first (cosine only; a loss's ``normalize=False`` turns that off)."""

    fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    normalizes: bool = False


def sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``‖a_i − b_j‖²`` for all pairs, ``[N, M]``, by one matrix product, clamped at 0."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * (a @ b.T)
    return d2.clamp(min=0)


SIMILARITIES: dict[str, SimilarityFn] = {
    "cosine": SimilarityFn(lambda a, b, _: a @ b.T, normalizes=True),
    "dot": SimilarityFn(lambda a, b, _: a @ b.T),
    "neg_sq_dist": SimilarityFn(lambda a, b, _: -sq_dists(a, b)),
    "rbf": SimilarityFn(lambda a, b, bw: torch.exp(-sq_dists(a, b) / (2 * bw * bw))),
}
"""The similarity registry: name → :class:`SimilarityFn` (:func:`register_similarity` adds one)."""


def register_similarity(name: str, fn: SimilarityFn) -> None:
    """Add a similarity under a new ``name`` (a name registered twice is an error)."""
    if name in SIMILARITIES:
        raise ConfigError(f"similarity {name!r} is registered already")
    SIMILARITIES[name] = fn


def check_similarity(similarity: str, bandwidth: float = 1.0) -> None:
    """A :class:`ConfigError` for an unknown name (listing the valid ones) or a bandwidth <= 0."""
    if similarity not in SIMILARITIES:
        raise ConfigError(f"unknown similarity {similarity!r}; valid: {', '.join(sorted(SIMILARITIES))}")
    if not (isinstance(bandwidth, int | float) and bandwidth > 0):
        raise ConfigError(f"bandwidth must be a number > 0, got {bandwidth!r}")


def similarity_matrix(
    a: torch.Tensor,
    b: torch.Tensor,
    similarity: str = DEFAULT_SIMILARITY,
    *,
    bandwidth: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """``S [N, M]`` of rows ``a [N, d]`` against rows ``b [M, d]`` (see the module docstring);
    half precision is computed in float32, ``b`` in ``a``'s dtype."""
    check_similarity(similarity, bandwidth)
    spec = SIMILARITIES[similarity]
    a = as_float(a)
    b = as_float(b).to(a.dtype)
    if spec.normalizes and normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return spec.fn(a, b, float(bandwidth))


def similarity_kwargs(similarity: str, bandwidth: float) -> dict[str, Any]:
    """What a loss module adds to its ``pure()`` kwargs: nothing for the default cosine (the
    ``scale`` wrappers' path stays as it was), ``similarity`` and ``bandwidth`` otherwise."""
    if similarity == DEFAULT_SIMILARITY:
        return {}
    return {"similarity": similarity, "bandwidth": bandwidth}


def refuse_non_cosine(kwargs: Mapping[str, Any], who: str) -> None:
    """The ``scale`` wrappers' guard: a :class:`ConfigError` when a loss's ``pure()`` kwargs
    select a similarity other than cosine, which ``who`` does not compute."""
    similarity = kwargs.get("similarity", DEFAULT_SIMILARITY)
    if similarity != DEFAULT_SIMILARITY:
        raise ConfigError(
            f"{who} computes cosine similarities only; this loss uses similarity={similarity!r}: "
            "use the default similarity, or run the loss dense (unset scale.tile_size; across "
            "processes it runs on the gathered batch)"
        )
