"""Contrast in learned subspaces: relation-conditioned multimodal contrast (RCML) and Hydra's gated
per-class-pair feature filter.

Both compare embeddings through a per-dimension gate ``g ∈ (0, 1)^d`` before the cosine,
``cos_g(a, b) = (a ⊙ g)·(b ⊙ g) / (‖a ⊙ g‖ ‖b ⊙ g‖)`` — the subspace in which a pair is judged.
A constant gate leaves every cosine unchanged, so both losses start (gates at ½) as their
unconditioned forms.

* ``rcml`` — no spec entry; "Multimodal Representation Learning Conditioned on Semantic Relations"
  (RCML, seed 108). UNVERIFIED: spec form from the abstract, not checked against the original; the
  paper's relation-guided cross-attention over tokens is replaced by a gate computed from the
  relation embedding, ``g_i = σ(W r_i + b)`` (W, b held by the loss; W = 0 at init). Inputs by the
  embedding-key convention: ``image`` (x), ``text`` (y) and ``relation`` (r: the natural-language
  relation description of pair i — e.g. "same colour" — embedded by a text tower; a batch supplies
  it as a third modality whose tower reads relation texts). The optional batch field ``labels [N]``
  groups the rows linked by the relation (many-to-many pairs: rows with equal labels are related
  under their shared relation); without it only pair i is related to i. Anchor i is compared with
  every candidate in *its* relation's subspace ``g_i``; with q = cos_{g_i}/τ and the multi-positive
  form (SupCon L_out)::

      inter(a→b) = mean_i −(1/|P(i)|) Σ_{p∈P(i)} [q(a_i, b_p) − LSE_j q(a_i, b_j)],   P(i) = {j: l_j = l_i}
      intra(a)   = the same over a's own rows, A(i) = {j ≠ i}, P(i) = {j ≠ i: l_j = l_i}
                   (mean over anchors with a positive; 0 if none)
      L = ½[inter(x→y) + inter(y→x)] + λ · ½[intra(x) + intra(y)]

  τ = 0.07 fixed, λ = 1 (our choices). W = 0 ⇒ g = ½ everywhere ⇒ multi-positive CLIP + SupCon.
* ``hydra`` — no spec entry; "Rethinking Positive Pairs in Contrastive Learning" (Hydra, seed 110).
  UNVERIFIED: spec form from the abstract, not checked against the original. Any pair of samples is
  a positive in its class pair's subspace: one learnable gate ``g_ab = σ(θ_ab)`` per unordered class
  pair (a, b), a = b included — C(C+1)/2 gates of width d (θ = 0 at init). Over the SimCLR rows
  ``z = [x; y]`` with ``labels`` repeated, for every anchor i of class a and every class b present
  in the batch, with ``s = cos_{g_ab}/τ``::

      P = {p ≠ i: l_p = b},   Neg = {k: l_k ∉ {a, b}}
      ℓ_ib = −(1/|P|) Σ_{p∈P} log( e^{s_ip} / (e^{s_ip} + Σ_{k∈Neg} e^{s_ik}) )
      L = mean over the (i, b) with P ≠ ∅  +  ρ · mean_{pairs} mean_d g                (gate L1, ρ = 0)

  τ = 0.1 (our choice). The class pair's gate "creates the requisite subspace": the two classes
  are pulled together only in the dimensions the gate keeps, against the other classes. Without
  labels every sample is its own class (ids 0…N−1, so C ≥ N): its other view is its b = a positive.

Exactness: dense formulas; values and gradients equal naive float64 loops (tests). Memory: rcml
four N×N matrices per direction; hydra ``K·N_a·2N`` similarities per anchor class (K classes in
the batch). Tiled / distributed: dense only; gather embeddings and labels first (``GatherAllLoss``).
Related: L-SUPCON, ``multi_positive``, ``xmc_decoupled`` (decoupled positives), L-CLIP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from contrastkit.core.checks import check_embeddings, check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive, PositiveInt
from contrastkit.losses.base import LOSSES, MultiLoss, PairLoss, as_float

__all__ = [
    "HydraLoss",
    "RCMLLoss",
    "gated_cosine",
    "hydra_loss",
    "pair_index",
    "rcml_loss",
]

_EPS = 1e-12  # F.normalize's floor on a norm


def gated_cosine(a: torch.Tensor, b: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """``cos(a_i ⊙ g_i, b_j ⊙ g_i)`` ``[N, M]``: row i in its own gate ``gates[i]`` (``[N, d]``; a
    ``[d]`` gate is shared). Three matrix products, no ``[N, M, d]``."""
    g2 = (gates * gates).expand(a.shape[0], -1)
    num = (a * g2) @ b.T
    a_norm = ((a * a * g2).sum(1)).sqrt().clamp_min(_EPS)
    b_norm = (g2 @ (b * b).T).clamp_min(0).sqrt().clamp_min(_EPS)  # ‖b_j ⊙ g_i‖ for every (i, j)
    return num / (a_norm[:, None] * b_norm)


def _groups(labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    if labels is None:
        return torch.arange(n, device=device)
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise InputError(f"labels must have shape [N]=[{n}], got {shape}")
    if labels.is_floating_point() or labels.is_complex():
        raise InputError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    return labels.to(device)


def _multi_positive(q: torch.Tensor, pos: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Mean over anchors with a positive of ``−mean_{p∈P(i)} [q_ip − LSE_{a∈A(i)} q_ia]`` (0 if none)."""
    lse = q.masked_fill(~cand, float("-inf")).logsumexp(1)
    n_pos = pos.sum(1)
    has = n_pos > 0
    per = lse - torch.where(pos, q, 0.0).sum(1) / n_pos.clamp_min(1)
    return torch.where(has, per, 0.0).sum() / has.sum().clamp_min(1)


def rcml_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    gates: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    temperature: float = 0.07,
    intra_weight: float = 1.0,
) -> torch.Tensor:
    """Relation-conditioned inter- and intra-modal contrast (module docstring).

    Args:
        x: ``[N, d]`` images. y: ``[N, d]`` texts. gates: ``[N, d]`` relation gates ``g_i`` in (0, 1).
        labels: ``[N]`` relation-group ids (None: pair i related to i only).
        temperature: τ. intra_weight: λ of the intra-modal terms.
    """
    check_pair(x, y)
    n = x.shape[0]
    if gates.shape != x.shape:
        raise InputError(f"gates must have the embeddings' shape {tuple(x.shape)}, got {tuple(gates.shape)}")
    if not temperature > 0 or not intra_weight >= 0:
        raise ConfigError(f"need temperature > 0 and intra_weight >= 0, got {temperature}, {intra_weight}")
    x = as_float(x)
    y, g = as_float(y).to(x.dtype), as_float(gates).to(x.dtype)
    groups = _groups(labels, n, x.device)
    same = groups[:, None] == groups[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    everyone = torch.ones_like(same)
    inter = 0.5 * (
        _multi_positive(gated_cosine(x, y, g) / temperature, same, everyone)
        + _multi_positive(gated_cosine(y, x, g) / temperature, same, everyone)
    )
    if not intra_weight:
        return inter
    intra = 0.5 * (
        _multi_positive(gated_cosine(x, x, g) / temperature, same & ~eye, ~eye)
        + _multi_positive(gated_cosine(y, y, g) / temperature, same & ~eye, ~eye)
    )
    return inter + intra_weight * intra


def pair_index(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Row of the unordered class pair (a, b) in the upper-triangular gate table (a ≤ b after sorting)."""
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    return lo * num_classes - lo * (lo - 1) // 2 + (hi - lo)


def hydra_loss(
    x: torch.Tensor,
    y: torch.Tensor | None,
    gate_logits: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    temperature: float = 0.1,
    gate_l1: float = 0.0,
) -> torch.Tensor:
    """Hydra's class-pair-gated decoupled contrast over the rows ``[x; y]`` (module docstring).

    Args:
        x: ``[N, d]`` view 1. y: ``[N, d]`` view 2 or None (one view, labels then required).
        gate_logits: ``[C(C+1)/2, d]`` θ of the unordered class pairs (:func:`pair_index`).
        labels: ``[N]`` class ids in ``[0, C)`` (None: every sample its own class, C ≥ N needed).
        temperature: τ. gate_l1: ρ of the mean-gate penalty.
    """
    if y is None:
        check_embeddings("x", x)
    else:
        check_pair(x, y)
    if not temperature > 0 or not gate_l1 >= 0:
        raise ConfigError(f"need temperature > 0 and gate_l1 >= 0, got {temperature}, {gate_l1}")
    n_pairs = gate_logits.shape[0]
    c = round(((8 * n_pairs + 1) ** 0.5 - 1) / 2)
    if c * (c + 1) // 2 != n_pairs or gate_logits.ndim != 2 or gate_logits.shape[1] != x.shape[1]:
        raise InputError(f"gate_logits must be [C(C+1)/2, d={x.shape[1]}], got {tuple(gate_logits.shape)}")
    if labels is None and y is None:
        raise InputError("hydra_loss with one view needs labels: no positives otherwise")
    cls = _groups(labels, x.shape[0], x.device)
    if bool((cls < 0).any()) or bool((cls >= c).any()):
        raise InputError(f"labels must lie in [0, C={c}) (the gate table's classes)")
    z = as_float(x) if y is None else torch.cat([as_float(x), as_float(y).to(as_float(x).dtype)])
    cls = cls.repeat(z.shape[0] // x.shape[0])
    present = cls.unique()
    total, count = z.new_zeros(()), 0
    for a in present:  # anchors of class a, against every class b present, each in its gate g_ab
        rows = (cls == a).nonzero().squeeze(1)
        g = torch.sigmoid(gate_logits[pair_index(a.expand_as(present), present, c)]).to(z.dtype)  # [K, d]
        g2 = g * g
        za = z[rows]
        num = (za[None] * g2[:, None]) @ z.T  # [K, n_a, M]
        na = (za * za) @ g2.T  # [n_a, K]
        nz = (z * z) @ g2.T  # [M, K]
        s = num / (na.T.sqrt().clamp_min(_EPS)[:, :, None] * nz.T.sqrt().clamp_min(_EPS)[:, None, :])
        s = s / temperature
        not_self = torch.ones_like(s, dtype=torch.bool)
        not_self[:, torch.arange(len(rows)), rows] = False
        pos = (cls[None, None, :] == present[:, None, None]) & not_self  # [K, n_a, M]
        neg = (cls[None, None, :] != present[:, None, None]) & (cls[None, None, :] != a)
        lse_neg = s.masked_fill(~neg, float("-inf")).logsumexp(2, keepdim=True)  # [K, n_a, 1]
        per_pos = torch.logaddexp(s, lse_neg) - s  # −log(e^{s_p} / (e^{s_p} + Σ_neg e^{s_k}))
        n_pos = pos.sum(2)
        valid = n_pos > 0
        per = torch.where(pos, per_pos, 0.0).sum(2) / n_pos.clamp_min(1)
        total = total + torch.where(valid, per, 0.0).sum()
        count += int(valid.sum())
    loss = total / max(count, 1)
    if gate_l1:
        loss = loss + gate_l1 * torch.sigmoid(gate_logits).mean()
    return loss


@LOSSES.register("rcml")
class RCMLLoss(MultiLoss):
    """Module form of :func:`rcml_loss`: the relation gate ``σ(W r + b)`` (W = 0, b = 0 at init:
    every gate ½, i.e. the unconditioned loss) and fixed τ.

    Args:
        dim: embedding width d of x and y. relation_dim: width of r (default d).
        keys: the image, text and relation keys (``("image", "text", "relation")``).
        temperature: τ (0.07). intra_weight: λ (1).
    Batch field ``labels [N]`` (optional): relation-group ids.
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"labels"})

    def __init__(
        self,
        dim: PositiveInt,
        relation_dim: PositiveInt | None = None,
        keys: Sequence[str] = ("image", "text", "relation"),
        temperature: Positive = 0.07,
        intra_weight: NonNegative = 1.0,
    ) -> None:
        super().__init__()
        keys = tuple(keys)
        if len(keys) != 3 or not all(isinstance(k, str) and k for k in keys):
            raise ConfigError(f"rcml needs three keys (image, text, relation), got {keys!r}")
        self.inputs = keys
        self.gate = nn.Linear(relation_dim or dim, dim)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.temperature, self.intra_weight = float(temperature), float(intra_weight)

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        x, y, r = self.select(emb)
        check_embeddings("relation", r)
        if r.shape[0] != x.shape[0]:
            raise InputError(
                f"relation has {r.shape[0]} rows, the images {x.shape[0]}: one relation per pair"
            )
        gates = torch.sigmoid(self.gate(as_float(r).to(self.gate.weight.dtype)))
        return rcml_loss(
            x,
            y,
            gates,
            labels=aux.get("labels"),
            temperature=self.temperature,
            intra_weight=self.intra_weight,
        )


@LOSSES.register("hydra")
class HydraLoss(PairLoss):
    """Module form of :func:`hydra_loss` holding the gate table θ ``[C(C+1)/2, d]`` (0 at init).

    Args:
        num_classes: C. dim: embedding width d. temperature: τ (0.1). gate_l1: ρ (0).
    Batch field ``labels [N]`` (class ids in [0, C)); ``y`` is the second view (or None).
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"labels"})

    def __init__(
        self,
        num_classes: PositiveInt,
        dim: PositiveInt,
        temperature: Positive = 0.1,
        gate_l1: NonNegative = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.gate_logits = nn.Parameter(torch.zeros(self.num_classes * (self.num_classes + 1) // 2, int(dim)))
        self.temperature, self.gate_l1 = float(temperature), float(gate_l1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        return hydra_loss(
            x,
            y,
            self.gate_logits,
            labels=aux.get("labels"),
            temperature=self.temperature,
            gate_l1=self.gate_l1,
        )
