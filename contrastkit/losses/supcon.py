"""L-SUPCON — supervised contrastive loss (L_out, default, and L_in).

Spec id: L-SUPCON [VERIFIED] (docs/losses.md), checked against HobbitLong/SupContrast.
Paper: Khosla et al. 2020, "Supervised Contrastive Learning".

The two views ``x`` (view 1) and ``y`` (view 2) of N samples form the anchor set ``I`` of 2N rows
``z = [x; y]`` ("all" anchor mode, V = 2); ``y=None`` gives a single view (V = 1, labels required).
With ``A(i) = I∖{i}``, ``P(i) = {p ∈ A(i): label_p = label_i}`` and ``q_ia = z_i·z_a/τ``::

    L_out = (1/|I|) Σ_i −(1/|P(i)|) Σ_{p∈P(i)} [q_ip − LSE_{a∈A(i)} q_ia]
    L_in  = (1/|I|) Σ_i −log[(1/|P(i)|) Σ_{p∈P(i)} exp(q_ip − LSE_{a∈A(i)} q_ia)]

both multiplied by ``τ / base_temperature``. ``labels=None`` ⇒ P(i) = the other view of the same
sample ⇒ L_out = L-NTXENT. The paper recommends L_out (L_in trains markedly worse); L_in ≤ L_out
(Jensen), with equality when every |P(i)| = 1.

Defaults: τ = 0.1 (paper / repo training script; the reference class default is 0.07).
``base_temperature`` defaults to τ, i.e. factor 1. The reference code multiplies the loss by
``τ / 0.07`` (its ``base_temperature = 0.07``): pass ``base_temperature=0.07`` to reproduce its numbers.

Anchors without positives (a singleton class with one view): ``zero_positive="ignore"`` (default)
averages only over anchors with ≥ 1 positive and warns; ``"zero"`` reproduces the reference, where
they contribute 0 but still count in the mean. If no anchor has a positive the loss is 0 (with a
warning and a zero gradient). N = 1 works: with two views the single positive is the only candidate
and the loss is 0.

``relu_head=True`` (no spec entry; Kini et al. 2024, "Symmetric Neural-Collapse Representations with
Supervised Contrastive Loss: The Impact of ReLU and Batching"): apply ReLU to the embeddings before
L2 normalisation. The paper shows that a final ReLU (non-negative features) restores the symmetric,
orthogonal-frame geometry of SupCon representations under class imbalance without costing
accuracy. Spec form from the abstract, not checked against the original; an all-non-positive
row becomes the zero vector (``F.normalize`` keeps it at 0).

Shapes: ``x, y: [N, d]``, ``labels: [N]`` integer → 0-d tensor. Memory: the ``[VN, VN]`` logits,
one masked copy for the log-sum-exp and boolean masks. Tiled: ``scale.tile_size`` gives the same
values and gradients in O(N·d + tile²) memory (:mod:`contrastkit.scale.tiled_zoo`). Distributed:
gather embeddings *and* labels across devices first. Only ``[N]`` labels are accepted (not the
reference's explicit ``[B, B]`` mask), and only anchor mode "all". With labels, the "ignore" mode
reads the number of anchors with a positive on the host (one device sync per call).
Similarity as a choice (seed 79): ``similarity="dot" | "neg_sq_dist" | "rbf"`` replaces
``z_i·z_a`` by that similarity of the raw rows (after ``relu_head``; :mod:`contrastkit.losses.similarity`);
the tiled form refuses it. Related: L-NTXENT, L-CLIP, L-DCL.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings, check_pair, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive
from contrastkit.losses.base import LOSSES, PairLoss, as_float, maybe_normalize
from contrastkit.losses.similarity import (
    DEFAULT_SIMILARITY,
    SIMILARITIES,
    check_similarity,
    similarity_kwargs,
    similarity_matrix,
)

__all__ = ["SupConLoss", "reduce_anchors", "supcon_loss"]


def _check_config(temperature: Any, base_temperature: float | None, variant: str, zero_positive: str) -> None:
    if isinstance(temperature, torch.Tensor):
        check_scalar_param("temperature", temperature)
    elif not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if base_temperature is not None and not base_temperature > 0:
        raise ConfigError(f"base_temperature must be > 0, got {base_temperature}")
    if variant not in ("out", "in"):
        raise ConfigError(f"variant must be 'out' or 'in', got {variant!r}")
    if zero_positive not in ("ignore", "zero"):
        raise ConfigError(f"zero_positive must be 'ignore' or 'zero', got {zero_positive!r}")


def _views(
    x: torch.Tensor, y: torch.Tensor | None, labels: torch.Tensor | None, relu_head: bool, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The anchor rows ``z [VN, d]`` and their group ids ``[VN]`` (labels, or the sample index)."""
    if y is None:
        check_embeddings("x", x)
    else:
        check_pair(x, y)
    n = x.shape[0]
    if labels is None:
        if y is None:
            raise InputError("supcon_loss with a single view (y=None) needs labels: no positives otherwise")
        groups = torch.arange(n, device=x.device)
    else:
        if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise InputError(f"labels must have shape [N]=[{n}], got {shape}")
        if labels.is_floating_point() or labels.is_complex():
            raise InputError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        groups = labels.to(x.device)
    rows = [as_float(x)] if y is None else [as_float(x), as_float(y).to(as_float(x).dtype)]
    z = torch.cat(rows)
    if relu_head:
        z = F.relu(z)  # before normalisation, as a last-layer ReLU would be
    return maybe_normalize(z, normalize), groups.repeat(len(rows))


def supcon_loss(
    x: torch.Tensor,
    y: torch.Tensor | None,
    temperature: torch.Tensor | float = 0.1,
    *,
    labels: torch.Tensor | None = None,
    variant: Literal["out", "in"] = "out",
    base_temperature: float | None = None,
    zero_positive: Literal["ignore", "zero"] = "ignore",
    relu_head: bool = False,
    normalize: bool = True,
    similarity: str = DEFAULT_SIMILARITY,
    bandwidth: float = 1.0,
) -> torch.Tensor:
    """Supervised contrastive loss (spec L-SUPCON) over the anchors ``[x; y]``.

    Args:
        x: ``[N, d]`` view-1 embeddings.
        y: ``[N, d]`` view-2 embeddings, or ``None`` for a single view (then ``labels`` is required).
        temperature: ``τ > 0`` (paper: 0.1).
        labels: ``[N]`` integer class ids (shared by both views); ``None`` ⇒ the views of one
            sample are its only positives (= :func:`~contrastkit.losses.infonce.ntxent_loss`).
        variant: ``"out"`` (L_out, default, recommended) or ``"in"`` (L_in).
        base_temperature: the loss is multiplied by ``τ / base_temperature``; default ``τ`` (factor
            1). The reference uses 0.07.
        zero_positive: anchors with no positive are left out of the mean (``"ignore"``, with a
            warning) or count as 0 in it (``"zero"``, reference behaviour).
        relu_head: ReLU on the embeddings before normalisation (Kini et al. 2024).
        normalize: L2-normalise the embeddings first (default; cosine only).
        similarity: ``"cosine"`` (default), ``"dot"``, ``"neg_sq_dist"`` or ``"rbf"``
            (:mod:`contrastkit.losses.similarity`); bandwidth: σ of ``"rbf"``.
    Returns:
        0-d tensor.
    """
    _check_config(temperature, base_temperature, variant, zero_positive)
    check_similarity(similarity, bandwidth)
    z, groups = _views(x, y, labels, relu_head, normalize and SIMILARITIES[similarity].normalizes)
    m = z.shape[0]
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    pos = (groups[:, None] == groups[None, :]) & ~eye  # [VN, VN]: P(i)
    n_pos = pos.sum(1)
    has_pos = n_pos > 0
    q = similarity_matrix(z, z, similarity, bandwidth=bandwidth, normalize=False) / temperature
    lse = q.masked_fill(eye, float("-inf")).logsumexp(1)  # LSE over A(i)
    if variant == "out":
        # mean of q_ip over P(i); rows without positives give 0 / 1 and are masked below
        per_anchor = lse - torch.where(pos, q, 0.0).sum(1) / n_pos.clamp_min(1)
    else:
        # rows without positives take the diagonal so their LSE stays finite (no NaN in backward)
        pick = pos | (eye & ~has_pos[:, None])
        per_anchor = lse - q.masked_fill(~pick, float("-inf")).logsumexp(1) + n_pos.clamp_min(1).log()
    return reduce_anchors(per_anchor, has_pos, temperature, base_temperature, zero_positive, labels is None)


def reduce_anchors(
    per_anchor: torch.Tensor,
    has_pos: torch.Tensor,
    temperature: float,
    base_temperature: float | None,
    zero_positive: str,
    all_have_positives: bool,
) -> torch.Tensor:
    """SupCon's mean over anchors (shared by the dense and the tiled form): anchors without a
    positive count as 0 (``"zero"``) or leave the mean with a warning (``"ignore"``), times
    ``τ / base_temperature``. ``all_have_positives`` (two views, no labels) skips the host sync."""
    per_anchor = torch.where(has_pos, per_anchor, 0.0)
    factor = 1.0 if base_temperature is None else temperature / base_temperature
    if zero_positive == "zero" or all_have_positives:
        return factor * per_anchor.mean()
    m, n_valid = per_anchor.shape[0], int(has_pos.sum())
    if n_valid < m:
        warnings.warn(
            f"supcon_loss: {m - n_valid} of {m} anchors have no positive and are left out of the mean",
            RuntimeWarning,
            stacklevel=3,
        )
    return factor * per_anchor.sum() / max(n_valid, 1)


@LOSSES.register("supcon")
class SupConLoss(PairLoss):
    """Module form of :func:`supcon_loss`; uses the optional batch field ``labels [N]``.

    Args:
        temperature: ``τ`` (paper: 0.1). base_temperature: loss factor ``τ / base_temperature``
            (default ``τ`` → 1; the reference uses 0.07).
        variant: ``"out"`` (default) or ``"in"``. zero_positive: ``"ignore"`` (default) or ``"zero"``.
        relu_head: ReLU before normalisation (Kini et al. 2024).
        similarity: ``"cosine"`` (default), ``"dot"``, ``"neg_sq_dist"``, ``"rbf"``; bandwidth: σ of rbf.
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"labels"})

    def __init__(
        self,
        temperature: Positive = 0.1,
        variant: Literal["out", "in"] = "out",
        base_temperature: Positive | None = None,
        zero_positive: Literal["ignore", "zero"] = "ignore",
        relu_head: bool = False,
        similarity: str = DEFAULT_SIMILARITY,
        bandwidth: Positive = 1.0,
    ) -> None:
        super().__init__()
        _check_config(temperature, base_temperature, variant, zero_positive)
        check_similarity(similarity, bandwidth)
        self.similarity, self.bandwidth = similarity, float(bandwidth)
        self.temperature = float(temperature)
        self.variant = variant
        self.base_temperature = base_temperature
        self.zero_positive = zero_positive
        self.relu_head = relu_head

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return supcon_loss, {
            "temperature": self.temperature,
            "variant": self.variant,
            "base_temperature": self.base_temperature,
            "zero_positive": self.zero_positive,
            "relu_head": self.relu_head,
            **similarity_kwargs(self.similarity, self.bandwidth),
        }
