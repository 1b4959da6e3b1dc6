"""Ranking and continual-learning contrastive losses: L-MW (AUC / Mann–Whitney) and Sy-CON.

* ``mw`` — L-MW [UNVERIFIED scope: spec form, not checked against the original (abstract only)].
  "Optimizing What Matters: AUC-Driven Learning for Robust Neural Retrieval" (2025). Score matrix
  ``S = x yᵀ`` (raw cosines, queries × documents), positive mask ``P`` (default the identity)::

      L_MW = mean_{(p, n) ∈ Pairs} softplus(−(S_p − S_n)/τ)     (= BCE(σ((S_p − S_n)/τ), 1))

  ``scope="global"`` (default): every (positive entry, negative entry) pair of the whole matrix —
  O(|P|·|¬P|) = O(N³) terms for in-batch pairs, evaluated in blocks of at most ``chunk_size`` terms
  by a custom autograd function that recomputes them in backward, so memory stays
  O(N² + chunk_size), not O(N³). ``scope="per_query"``: pairs within each row, averaged per row,
  then over the rows that have both a positive and a negative. τ = 1.0 (config value).
* ``sycon`` — no spec entry. Sy-CON, Cha & Moon 2023, "Sy-CON: Symmetric Contrastive Loss for
  Continual Self-Supervised Representation Learning" (arXiv 2306.05101 v1; v2 renamed PNR). Form
  read in the official ``moco_pnr_loss_func`` (csm9493/PNR ``cassle/losses/pnr.py``), moved from
  MoCo queues to in-batch negatives: with current embeddings ``x, y`` of two views, the frozen
  past model's ``x̄, ȳ`` (no gradient) and ``g_i = pred_x_i`` (current → past-space predictor,
  default ``x_i``), the negative set of anchor i is ``Neg_i = {y_j, ȳ_j : j ≠ i}`` in both terms::

      L_P = −log e^{x_i·y_i/τ} / (e^{x_i·y_i/τ} + Σ_{v∈Neg_i} e^{x_i·v/τ})           plasticity
      L_S = −log e^{g_i·x̄_i/τ_s} / (e^{g_i·x̄_i/τ_s} + Σ_{v∈Neg_i} e^{g_i·v/τ_s})   stability
      loss = ½ Σ_{views} mean_i (L_P + L_S)     (views swapped: y anchors, x/x̄ negatives)

  "Symmetric" = both terms use current *and* past negatives; they are summed unweighted (the
  paper: no trade-off hyper-parameter). Defaults τ = τ_s = 0.2 (the reference's MoCo-v2+ and
  distillation temperatures). In-batch, the current other-view embeddings get gradients (SimCLR
  style), unlike MoCo's momentum keys.

Tiled / distributed: dense only (``TiledLoss`` / ``GatherLoss`` dispatch on clip/siglip only); gather
embeddings (and batch fields) first. N = 1: mw raises (no negative pair); sycon raises unless
``allow_single``. Related: L-CLIP / L-NTXENT (softmax surrogates), E-AUC, L-MOCO2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings, check_finite, check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive, PositiveInt
from contrastkit.losses.base import LOSSES, PairLoss, maybe_normalize

__all__ = ["MWLoss", "SyCONLoss", "mw_loss", "sycon_loss"]


def _blocks(g: int, kp: int, kn: int, chunk: int) -> Iterator[tuple[slice, slice, slice]]:
    """Slices over (group, positive, negative) with at most ~``chunk`` pair terms per block."""
    nc = max(1, min(kn, chunk))
    pc = max(1, min(kp, chunk // nc))
    gc = max(1, min(g, chunk // (pc * nc)))
    for g0 in range(0, g, gc):
        for p0 in range(0, kp, pc):
            for n0 in range(0, kn, nc):
                yield slice(g0, g0 + gc), slice(p0, p0 + pc), slice(n0, n0 + nc)


class _PairSoftplus(torch.autograd.Function):
    """``Σ_g w_g Σ_{p,n valid} softplus(−(a_gp − b_gn)/τ)`` in blocks; backward recomputes the blocks."""

    @staticmethod
    def forward(ctx: Any, a, b, ma, mb, w, tau: float, chunk: int) -> torch.Tensor:  # type: ignore[override]
        total = a.new_zeros(())
        for gs, ps, ns in _blocks(a.shape[0], a.shape[1], b.shape[1], chunk):
            d = (a[gs, ps, None] - b[gs, None, ns]) / tau
            m = ma[gs, ps, None] & mb[gs, None, ns]
            total = total + (F.softplus(-d).masked_fill(~m, 0.0).sum((1, 2)) * w[gs]).sum()
        ctx.save_for_backward(a, b, ma, mb, w)
        ctx.tau, ctx.chunk = tau, chunk
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        a, b, ma, mb, w = ctx.saved_tensors
        ga, gb = torch.zeros_like(a), torch.zeros_like(b)
        for gs, ps, ns in _blocks(a.shape[0], a.shape[1], b.shape[1], ctx.chunk):
            d = (a[gs, ps, None] - b[gs, None, ns]) / ctx.tau
            m = ma[gs, ps, None] & mb[gs, None, ns]
            # d softplus(−d)/da = −σ(−d)/τ ; d/db = +σ(−d)/τ
            s = torch.sigmoid(-d).masked_fill(~m, 0.0) * (w[gs, None, None] / ctx.tau)
            ga[gs, ps] -= s.sum(2)
            gb[gs, ns] += s.sum(1)
        return ga * grad, gb * grad, None, None, None, None, None


def _positive_mask(labels: torch.Tensor | None, weights: torch.Tensor | None, n: int, device) -> torch.Tensor:
    if labels is not None and weights is not None:
        raise InputError("pass positives either as labels [N] or as a 0/1 weights matrix [N, N], not both")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point():
            raise InputError(f"labels must be an integer tensor of shape [N] = [{n}]")
        return (labels[:, None] == labels[None, :]).to(device)
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or weights.shape != (n, n):
            raise InputError(f"weights (positive mask) must have shape [N, N] = [{n}, {n}]")
        check_finite("weights", weights)
        if not bool(((weights == 0) | (weights == 1)).all()):
            raise InputError("weights must be a 0/1 positive mask for mw_loss")
        return weights.to(device).bool()
    return torch.eye(n, dtype=torch.bool, device=device)


def _first_k(s: torch.Tensor, keep: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the entries where ``keep`` (left-aligned, padded to ``k``) and their validity mask."""
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :k]
    valid = torch.arange(k, device=s.device)[None, :] < keep.sum(1, keepdim=True)
    return s.gather(1, order), valid


def mw_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    temperature: float = 1.0,
    scope: str = "global",
    labels: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    normalize: bool = True,
    chunk_size: int = 1 << 22,
) -> torch.Tensor:
    """Mann–Whitney (AUC) loss (L-MW, spec form) — see the module docstring.

    Args:
        x: ``[N, d]`` queries; ``y``: ``[N, d]`` documents (``y[i]`` relevant to ``x[i]``).
        temperature: τ dividing raw score differences (1.0).
        scope: ``"global"`` (default) or ``"per_query"``.
        labels: ``[N]`` ids — ``x_i`` and ``y_j`` are positives iff ``labels_i = labels_j``; or
        weights: ``[N, N]`` 0/1 positive mask. Neither: the identity.
        chunk_size: max pair terms per block (memory knob only; the value does not depend on it).
    """
    if scope not in ("global", "per_query"):
        raise ConfigError(f"scope must be 'global' or 'per_query', got {scope!r}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if not chunk_size >= 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    check_pair(x, y)
    n = x.shape[0]
    pos = _positive_mask(labels, weights, n, x.device)
    x = maybe_normalize(x, normalize)
    s = x @ maybe_normalize(y, normalize).to(x.dtype).T
    if scope == "global":
        n_pos = int(pos.sum())
        if n_pos == 0 or n_pos == n * n:
            raise InputError("mw_loss needs at least one positive and one negative (query, document) pair")
        a, b = s[pos][None], s[~pos][None]
        ma, mb = torch.ones_like(a, dtype=torch.bool), torch.ones_like(b, dtype=torch.bool)
        w = s.new_full((1,), 1.0 / (n_pos * (n * n - n_pos)))
    else:
        cp, cn = pos.sum(1), (~pos).sum(1)
        ok = (cp > 0) & (cn > 0)
        if not bool(ok.any()):
            raise InputError("mw_loss(scope='per_query') needs a row with both a positive and a negative")
        a, ma = _first_k(s, pos, int(cp.max()))
        b, mb = _first_k(s, ~pos, int(cn.max()))
        w = ok.to(s.dtype) / (cp * cn).clamp(min=1).to(s.dtype) / int(ok.sum())
    return _PairSoftplus.apply(a, b, ma, mb, w, float(temperature), int(chunk_size))


@LOSSES.register("mw")
class MWLoss(PairLoss):
    """Module form of :func:`mw_loss` (no learnable parameters). Batch fields: ``labels`` or ``weights``."""

    accepts = frozenset({"labels", "weights"})

    def __init__(
        self,
        temperature: Positive = 1.0,
        scope: Literal["global", "per_query"] = "global",
        chunk_size: PositiveInt = 1 << 22,
    ) -> None:
        super().__init__()
        if scope not in ("global", "per_query"):
            raise ConfigError(f"scope must be 'global' or 'per_query', got {scope!r}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.kwargs: dict[str, Any] = {"temperature": temperature, "scope": scope, "chunk_size": chunk_size}

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return mw_loss, dict(self.kwargs)


# -------------------------------------------------------------------------------------------- Sy-CON
def _sycon_terms(
    anc: torch.Tensor,
    other: torch.Tensor,
    g: torch.Tensor,
    past_anc: torch.Tensor,
    past_other: torch.Tensor,
    tau: float,
    tau_s: float,
) -> torch.Tensor:
    """mean_i (L_P + L_S) for one direction; ``Neg_i = {other_j, past_other_j : j ≠ i}``."""
    n = anc.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=anc.device)

    def lse_neg(q: torch.Tensor, t: float) -> torch.Tensor:
        cur = torch.logsumexp((q @ other.T / t).masked_fill(eye, float("-inf")), dim=1)
        past = torch.logsumexp((q @ past_other.T / t).masked_fill(eye, float("-inf")), dim=1)
        return torch.logaddexp(cur, past)

    pos_p = (anc * other).sum(1) / tau
    pos_s = (g * past_anc).sum(1) / tau_s
    l_p = torch.logaddexp(pos_p, lse_neg(anc, tau)) - pos_p
    l_s = torch.logaddexp(pos_s, lse_neg(g, tau_s)) - pos_s
    return (l_p + l_s).mean()


def sycon_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    past_x: torch.Tensor | None = None,
    past_y: torch.Tensor | None = None,
    pred_x: torch.Tensor | None = None,
    pred_y: torch.Tensor | None = None,
    temperature: float = 0.2,
    stability_temperature: float = 0.2,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """Sy-CON (in-batch form of the reference MoCo loss; see the module docstring).

    Args:
        x: ``[N, d]`` current model's embeddings of view 1.
        y: ``[N, d]`` current model's embeddings of view 2.
        past_x: ``[N, d]`` frozen past-task model's embeddings of view 1 (required; detached here).
        past_y: the same for view 2.
        pred_x: ``[N, d]`` ``x`` mapped by the stability predictor (default ``x``: identity predictor).
        pred_y: the same for ``y`` (default ``y``).
        temperature: τ of the plasticity term; ``stability_temperature``: τ_s of the stability term.
    """
    if past_x is None or past_y is None:
        raise InputError(
            "sycon_loss needs past_x and past_y (the frozen past model's embeddings of both views)"
        )
    if not temperature > 0 or not stability_temperature > 0:
        raise ConfigError("temperature and stability_temperature must be > 0")
    check_pair(x, y)
    n = x.shape[0]
    if n == 1 and not allow_single:
        raise InputError(
            "sycon_loss got a batch of 1 pair: with no negatives the loss is identically 0; "
            "pass allow_single=True if that is intended"
        )
    fields = {"past_x": past_x, "past_y": past_y, "pred_x": pred_x, "pred_y": pred_y}
    for name, v in fields.items():
        if v is not None:
            check_embeddings(name, v)
            if v.shape != x.shape:
                raise InputError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}")
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    px, py = (maybe_normalize(v.detach(), normalize).to(x.dtype) for v in (past_x, past_y))
    gx = x if pred_x is None else maybe_normalize(pred_x, normalize).to(x.dtype)
    gy = y if pred_y is None else maybe_normalize(pred_y, normalize).to(x.dtype)
    t, ts = float(temperature), float(stability_temperature)
    return 0.5 * (_sycon_terms(x, y, gx, px, py, t, ts) + _sycon_terms(y, x, gy, py, px, t, ts))


@LOSSES.register("sycon")
class SyCONLoss(PairLoss):
    """Module form of :func:`sycon_loss`. Batch fields: ``past_x``, ``past_y`` (required),
    ``pred_x``, ``pred_y`` (optional). No learnable parameters (the predictor belongs to the model)."""

    accepts = frozenset({"past_x", "past_y", "pred_x", "pred_y"})

    def __init__(
        self, temperature: Positive = 0.2, stability_temperature: Positive = 0.2, allow_single: bool = False
    ) -> None:
        super().__init__()
        if not temperature > 0 or not stability_temperature > 0:
            raise ConfigError("temperature and stability_temperature must be > 0")
        self.kwargs: dict[str, Any] = {
            "temperature": temperature,
            "stability_temperature": stability_temperature,
            "allow_single": allow_single,
        }

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return sycon_loss, dict(self.kwargs)
