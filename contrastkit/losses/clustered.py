"""Cluster-aware objectives: negatives in the positive's cluster down-weighted (ccc-wav2vec 2.0) and
BYOL with in-batch self-labelling by clustering (CCSL).

Clusters are per-sample ids: the batch field ``labels [N]`` (class or cluster ids delivered by the
data layer, e.g. ``data.label_task``), or, without it, k-means of the detached batch
(:func:`batch_clusters`: :func:`~contrastkit.losses.mlcd.fit_prototypes` seeded with ``seed``, then
nearest centre) when ``num_clusters`` is set.

* ``ccc_infonce`` — no spec entry; Lodagala et al. 2023, "CCC-wav2vec 2.0: Clustering aided Cross
  Contrastive Self-supervised learning of speech representations" (seed 80). UNVERIFIED: spec form
  from the abstract ("we scale down the influence of those negative examples that are highly similar
  to the positive"), not checked against the original. With ``L = s·x yᵀ`` (cosines), cluster ids
  ``c`` and ``w_ij = α`` when ``j ≠ i`` and ``c_j = c_i`` (a negative in the positive's cluster),
  else 1::

      ℓ_i = −log( e^{L_ii} / Σ_j w_ij e^{L_ij} ) = LSE_j(L_ij + log w_ij) − L_ii
      loss = ½ (mean_i ℓ_i(L) + mean_i ℓ_i(Lᵀ))          (symmetric=False: the first term only)

  α = 0.5 (our choice; α = 0 drops same-cluster negatives, α = 1 is L-CLIP). With k-means the
  cluster of pair i is the cluster of its positive ``y_i`` (the candidates are clustered).
  CLIP's learnable s (init 1/0.07, clamp [0, ln 100]). No clusters at all ⇒ L-CLIP.
* ``byol_selflabel`` — no spec entry; "Self-Labeling Refinement for Robust Representation Learning
  with Bootstrap Your Own Latent" (seed 20), its Cross-Cosine Similarity Loss (CCSL). UNVERIFIED:
  spec form from the abstract, not checked against the original (the sigmoid variant CSSL is not
  implemented). BYOL (L-BYOL, :func:`~contrastkit.losses.ssl.byol_loss`) plus the same regression
  onto the targets of the *other* samples of the anchor's cluster::

      L = byol(p₁, p₂, z′₁, z′₂)
          + λ · mean_{(i,j): i≠j, c_i = c_j} [(2 − 2cos(p₁ᵢ, sg z′₂ⱼ)) + (2 − 2cos(p₂ᵢ, sg z′₁ⱼ))]

  (the CCSL term is 0 when no two samples share a cluster). λ = 1, 8 clusters (our choices), fitted
  on the targets' view average ``(ẑ′₁ + ẑ′₂)/2`` each step (10 Lloyd rounds), or ``labels``.

Exactness: dense formulas; values and gradients equal naive float64 loops for given clusters (tests);
k-means runs without gradient. Tiled / distributed: dense only; several processes gather embeddings
(and labels) first (``GatherAllLoss``), so every rank clusters the same global batch.
Related: L-SUPCON / ``multi_positive`` (same-class rows as positives instead), L-HCL, L-MLCD, L-BYOL,
D-MCL (cluster-restricted negatives).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from contrastkit.core.checks import check_pair, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, NonNegInt, Positive, PositiveInt, Probability
from contrastkit.losses.base import LOSSES, LearnableScaleLoss, MaxScale, maybe_normalize
from contrastkit.losses.mlcd import _nearest, fit_prototypes
from contrastkit.losses.ssl import _PredictionTargetLoss, byol_loss

__all__ = [
    "BYOLSelfLabelLoss",
    "CCCInfoNCELoss",
    "batch_clusters",
    "byol_selflabel_loss",
    "ccc_infonce_loss",
    "check_clusters",
]


def check_clusters(labels: Any, n: int) -> torch.Tensor:
    """``labels`` as an integer ``[N]`` tensor, else an InputError naming the problem."""
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise InputError(f"cluster ids (labels) must have shape [N]=[{n}], got {shape}")
    if labels.is_floating_point() or labels.is_complex():
        raise InputError(f"cluster ids (labels) must be an integer tensor, got dtype {labels.dtype}")
    return labels


@torch.no_grad()
def batch_clusters(z: torch.Tensor, k: int, iters: int = 10, seed: int = 0) -> torch.Tensor:
    """Cluster ids ``[N]`` of the (normalised, detached) rows: seeded k-means with ``min(k, N)``
    centres, then each row's nearest centre."""
    z = maybe_normalize(z.detach(), True)
    centres = fit_prototypes(z, min(k, z.shape[0]), iters, seed, normalize=False)
    return _nearest(z, centres)


def ccc_infonce_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    labels: torch.Tensor | None = None,
    downweight: float = 0.5,
    symmetric: bool = True,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """InfoNCE whose same-cluster negatives count ``downweight`` (α) times in the denominator.

    Args:
        x: ``[N, d]`` anchors. y: ``[N, d]`` candidates, ``y[i]`` the positive of ``x[i]``.
        scale: s. labels: ``[N]`` cluster ids of the pairs (None: no down-weighting, L-CLIP).
        downweight: α ∈ [0, 1]. symmetric: average with the y→x direction (default).
        normalize: cosine (default). allow_single: accept N = 1 (the loss is then 0).
    """
    check_pair(x, y)
    n = x.shape[0]
    if n == 1 and not allow_single:
        raise InputError("ccc_infonce_loss got a batch of 1 pair: no negatives; pass allow_single=True")
    if not 0 <= downweight <= 1:
        raise ConfigError(f"downweight must lie in [0, 1], got {downweight}")
    if isinstance(scale, torch.Tensor):
        check_scalar_param("scale", scale)
    xn = maybe_normalize(x, normalize)
    logits = scale * (xn @ maybe_normalize(y, normalize).to(xn.dtype).T)
    if labels is not None and downweight < 1:
        c = check_clusters(labels, n).to(x.device)
        same = (c[:, None] == c[None, :]) & ~torch.eye(n, dtype=torch.bool, device=x.device)
        # log α on the same-cluster negatives (−inf for α = 0: those negatives are dropped)
        shift = torch.tensor(float(downweight), dtype=logits.dtype, device=x.device).log()
        logits = logits + torch.where(same, shift, 0.0)
    pos = logits.diagonal()
    loss = (logits.logsumexp(1) - pos).mean()
    if symmetric:  # the weights are symmetric: the column direction uses the same shifted matrix
        loss = 0.5 * (loss + (logits.logsumexp(0) - pos).mean())
    return loss


def byol_selflabel_loss(
    p1: torch.Tensor,
    p2: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    labels: torch.Tensor,
    weight: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """``byol_loss(p₁, p₂, z′₁, z′₂) + λ · CCSL`` over the same-cluster pairs ``i ≠ j`` of ``labels``.

    Args:
        p1: ``[N, D]`` online predictions of view 1. p2: the same for view 2.
        z1: ``[N, D]`` target projections of view 1 (detached). z2: the same for view 2.
        labels: ``[N]`` cluster (self-)labels. weight: λ. normalize: cosine (default, BYOL).
    """
    base = byol_loss(p1, p2, z1, z2, normalize=normalize)
    n = p1.shape[0]
    c = check_clusters(labels, n).to(p1.device)
    pairs = (c[:, None] == c[None, :]) & ~torch.eye(n, dtype=torch.bool, device=p1.device)
    if not weight or not bool(pairs.any()):
        return base
    total = base.new_zeros(())
    for p, z in ((p1, z2), (p2, z1)):
        pn = maybe_normalize(p, normalize)
        zn = maybe_normalize(z.detach(), normalize).to(pn.dtype)
        if normalize:
            d = 2 - 2 * (pn @ zn.T)  # ‖p̂_i − ẑ_j‖² for every (i, j)
        else:
            d = (pn * pn).sum(1)[:, None] + (zn * zn).sum(1)[None, :] - 2 * (pn @ zn.T)
        total = total + d[pairs].mean()
    return base + weight * total


@LOSSES.register("ccc_infonce")
class CCCInfoNCELoss(LearnableScaleLoss):
    """Module form of :func:`ccc_infonce_loss` with CLIP's learnable s. Clusters: the batch field
    ``labels [N]``, else k-means of the detached candidates ``y`` when ``num_clusters`` is set,
    else none (L-CLIP).

    Args:
        downweight: α (0.5). symmetric: both directions (True).
        num_clusters: k of the per-batch k-means (None: only ``labels``). kmeans_iters: Lloyd rounds.
        seed: k-means initialisation seed. init_temperature, learnable, max_scale: as ``clip``.
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"labels"})

    def __init__(
        self,
        downweight: Probability = 0.5,
        symmetric: bool = True,
        num_clusters: PositiveInt | None = None,
        kmeans_iters: NonNegInt = 10,
        seed: NonNegInt = 0,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
        allow_single: bool = False,
    ) -> None:
        super().__init__(init_temperature, learnable, max_scale)
        if not 0 <= downweight <= 1:
            raise ConfigError(f"downweight must lie in [0, 1], got {downweight}")
        self.downweight, self.symmetric, self.allow_single = float(downweight), symmetric, allow_single
        self.num_clusters, self.kmeans_iters, self.seed = num_clusters, int(kmeans_iters), int(seed)

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        labels = aux.get("labels")
        if labels is None and self.num_clusters is not None:
            check_pair(x, y)
            labels = batch_clusters(y, self.num_clusters, self.kmeans_iters, self.seed)
        return ccc_infonce_loss(
            x,
            y,
            self.log_scale.exp(),
            labels=labels,
            downweight=self.downweight,
            symmetric=self.symmetric,
            allow_single=self.allow_single,
        )


@LOSSES.register("byol_selflabel")
class BYOLSelfLabelLoss(_PredictionTargetLoss):
    """Module form of :func:`byol_selflabel_loss` on BYOL's keys (see ``byol``): self-labels from
    the batch field ``labels`` or k-means of the targets' view average.

    Args:
        predictions: as ``byol`` (also targets, predictor_hidden, dim, predictor_bn).
        weight: λ of the CCSL term (1). num_clusters: k (8). kmeans_iters: Lloyd rounds (10).
        seed: k-means initialisation seed.
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"labels"})

    def __init__(
        self,
        predictions: Sequence[str] = ("image@0", "image@1"),
        targets: Sequence[str] = ("image@0:ema", "image@1:ema"),
        predictor_hidden: NonNegInt = 0,
        dim: PositiveInt | None = None,
        predictor_bn: bool = True,
        weight: NonNegative = 1.0,
        num_clusters: PositiveInt = 8,
        kmeans_iters: NonNegInt = 10,
        seed: NonNegInt = 0,
    ) -> None:
        super().__init__(predictions, targets, predictor_hidden, dim, predictor_bn)
        self.weight, self.num_clusters = float(weight), int(num_clusters)
        self.kmeans_iters, self.seed = int(kmeans_iters), int(seed)

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        p1, p2, z1, z2 = self.select(emb)
        if self.predictor is not None:
            p1, p2 = self.predictor(p1), self.predictor(p2)
        labels = aux.get("labels")
        if labels is None:
            check_pair(z1, z2, ("z1", "z2"))
            mean = (maybe_normalize(z1.detach(), True) + maybe_normalize(z2.detach(), True)) / 2
            labels = batch_clusters(mean, self.num_clusters, self.kmeans_iters, self.seed)
        return byol_selflabel_loss(p1, p2, z1, z2, labels=labels, weight=self.weight)
