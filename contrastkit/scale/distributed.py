"""Multi-process contrastive losses over ``torch.distributed``: process-group helpers, feature gather.

Spec id: S-GATHER (docs/performance.md), after open_clip's ``gather_features``/``ClipLoss``. The
rings that pass blocks between neighbours instead of gathering are their own modules:
:mod:`contrastkit.scale.ring_siglip` (S-SIGLIP-RING) and :mod:`contrastkit.scale.ring_clip`.

Setting: D ranks, rank r holds b local pairs ``x^(r), y^(r)``; the global batch is their
concatenation in rank order (N = bD). Every wrapper here returns a per-rank loss ``loss_r``
designed for **DDP's gradient average**: ``(1/D) Σ_r ∂loss_r/∂θ`` equals the gradient of the
plain full-batch loss (:func:`~contrastkit.losses.clip.clip_loss`,
:func:`~contrastkit.losses.siglip.siglip_loss`) for every replicated parameter θ (towers,
temperature, bias). Exactness, float64, gloo world 2, 3 and 4 (rtol 1e-10,
``tests/scale/test_distributed.py``):

================================  =====================================================
GatherLoss CLIP local, grad        exact (default; memory O(bN) logits)
GatherLoss CLIP global, grad       exact (every rank computes the full N×N loss)
GatherLoss CLIP global, no grad    scale/bias gradient exact, tower gradients **1/D**
GatherLoss local, no grad          refused (:class:`ConfigError`): incomplete gradient
GatherLoss SigLIP (same options)   as CLIP
================================  =====================================================

The loss *value* of a local form is this rank's share: the mean over ranks is the global loss
(global forms return the global loss on every rank). With one process, or no process group,
every wrapper is exactly the wrapped single-process loss.

Collectives: every wrapper first all-gathers each rank's local shapes and input-check verdict, so
mismatched batch sizes or one rank's NaN raise :class:`InputError` on **all** ranks instead of
hanging inside a collective. Backward passes run collectives too: every rank must call
``backward`` on its loss (as DDP does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from contrastkit.core.checks import check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import PairLoss, maybe_normalize
from contrastkit.losses.clip import check_pair_weights, clip_loss
from contrastkit.losses.siglip import siglip_loss
from contrastkit.losses.similarity import refuse_non_cosine
from contrastkit.scale.tiled import tiled_lse, tiled_softplus_sum

__all__ = [
    "GatherLoss",
    "WrappedLoss",
    "all_gather_with_grad",
    "is_distributed",
    "rank",
    "world_size",
]

Group = dist.ProcessGroup | None


# --------------------------------------------------------------------------------------------
# process-group helpers


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank(group: Group = None) -> int:
    """This process's rank in ``group`` (default group); 0 without a process group."""
    return dist.get_rank(group) if _initialized() else 0


def world_size(group: Group = None) -> int:
    """Number of ranks in ``group`` (default group); 1 without a process group."""
    return dist.get_world_size(group) if _initialized() else 1


def is_distributed(group: Group = None) -> bool:
    """True when a process group is initialised **and** has more than one rank — the only case
    in which the wrappers of this module do anything beyond calling the plain loss."""
    return world_size(group) > 1


def _global_rank(group: Group, group_rank: int) -> int:
    # point-to-point calls address peers by global rank, whatever the group
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


# --------------------------------------------------------------------------------------------
# cross-rank input checks


def _check_across_ranks(x: torch.Tensor, y: torch.Tensor, group: Group, what: str) -> None:
    """Local :func:`check_pair`, then one small all_gather of ``[ok, b, d]`` from every rank.

    Raises :class:`InputError` on every rank if any rank's input is malformed or if local
    shapes differ (a collective over unequal tensors would hang or read garbage). The rank
    whose input failed re-raises its own detailed error; the others name that rank.
    """
    local_error: InputError | None = None
    try:
        check_pair(x, y)
    except InputError as err:
        local_error = err
    ok = local_error is None
    b, d = (int(x.shape[0]), int(x.shape[1])) if ok else (-1, -1)
    mine = torch.tensor([int(ok), b, d], dtype=torch.int64, device=x.device)
    parts = [torch.empty_like(mine) for _ in range(world_size(group))]
    dist.all_gather(parts, mine, group=group)
    table = torch.stack(parts).cpu().tolist()
    if local_error is not None:
        raise local_error
    bad = [r for r, row in enumerate(table) if not row[0]]
    if bad:
        raise InputError(f"{what}: rank(s) {bad} rejected their local input; see their error")
    shapes = [(row[1], row[2]) for row in table]
    if len(set(shapes)) > 1:
        listed = ", ".join(f"rank {r}: [{s[0]}, {s[1]}]" for r, s in enumerate(shapes))
        raise InputError(
            f"{what}: local batches must have the same shape on every rank, got {listed}; "
            "use equal per-rank batch sizes (e.g. drop_last=True)"
        )


# --------------------------------------------------------------------------------------------
# autograd collectives


class _AllGatherWithGrad(torch.autograd.Function):
    """``[b, d]`` per rank → ``[bD, d]``; backward = reduce-scatter SUM (all_reduce + own slice)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        ctx.rows = slice(rank(group) * x.shape[0], (rank(group) + 1) * x.shape[0])
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world_size(group))]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # all_reduce works in place and autograd may share `grad` elsewhere: reduce a copy.
        # (all_reduce + slice rather than reduce_scatter: gloo has no reduce_scatter.)
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total[ctx.rows], None


def all_gather_with_grad(x: torch.Tensor, group: Group = None) -> torch.Tensor:
    """S-GATHER autograd all_gather: ``x: [b, d]`` on each rank → ``[b·D, d]`` in rank order.

    Backward: each rank receives the SUM over ranks of the gradients w.r.t. its own slot
    (reduce-scatter), i.e. ``∂(Σ_r loss_r)/∂x^(r)`` — what makes DDP averaging exact.
    Every rank must hold the same ``[b, d]`` (checked with one small all_gather first;
    :class:`InputError` lists each rank's shape). Without a process group (or world size 1)
    returns ``x`` itself.
    """
    if not is_distributed(group):
        return x
    _check_across_ranks(x, x, group, "all_gather_with_grad")
    return _AllGatherWithGrad.apply(x, group)


def _all_gather_local_slot(x: torch.Tensor, group: Group) -> torch.Tensor:
    """No-grad all_gather, then this rank's slot replaced by the grad-carrying local ``x``
    (open_clip ``gather_with_grad=False``): gradients reach only the local rows."""
    with torch.no_grad():
        parts = [torch.empty_like(x) for _ in range(world_size(group))]
        dist.all_gather(parts, x.detach().contiguous(), group=group)
    parts[rank(group)] = x
    return torch.cat(parts)


# --------------------------------------------------------------------------------------------
# loss-module wrappers


def _pure_of(loss: PairLoss, allowed: tuple[Callable[..., torch.Tensor], ...], who: str):
    try:
        fn, kwargs = loss.pure()
    except NotImplementedError as err:
        raise ConfigError(f"{who} needs a loss exposing pure(); {type(loss).__name__} does not") from err
    if fn not in allowed:
        names = [f.__name__ for f in allowed]
        raise ConfigError(f"{who} supports losses whose pure function is one of {names}, got {fn.__name__}")
    refuse_non_cosine(kwargs, who)
    return fn, kwargs


class WrappedLoss(PairLoss):
    """Base of the cross-rank wrappers (:class:`GatherLoss`, the rings, ``GatherAllLoss``): the
    wrapped module ``self.loss`` is a submodule whose constraints run after each optimizer step and
    whose values are logged as if it ran unwrapped."""

    loss: PairLoss

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.loss.after_optimizer_step()

    def log_values(self) -> dict[str, float]:
        return self.loss.log_values()


class GatherLoss(WrappedLoss):
    """S-GATHER: a CLIP or SigLIP loss module over features gathered from every rank.

    Wraps a :class:`PairLoss` whose ``pure()`` function is ``clip_loss`` or ``siglip_loss``; the
    wrapped module (and so its learnable scalars) is a submodule, ``after_optimizer_step`` and
    ``log_values`` are delegated to it. Inputs ``x, y: [b, d]`` are this rank's pairs (same shape on
    every rank); rows are L2-normalised locally (when the loss normalises) before gathering.

    * ``local_loss=True`` (default): only this rank's b rows — CLIP
      ``½[CE(s·x_loc·Y_allᵀ, b·r + i) + CE(s·y_loc·X_allᵀ, b·r + i)]`` averaged over b rows;
      SigLIP ``siglip_loss(x_loc, Y_all, labels=±1 with +1 at column b·r + i)`` normalised by b.
      Memory O(bN). The mean over ranks is the global loss.
    * ``local_loss=False``: the full N×N loss on every rank.
    * ``gather_with_grad=True`` (default): autograd gather (:func:`all_gather_with_grad`).
      ``False``: no-grad gather with the local rows put back — only with ``local_loss=False``, and
      then after DDP averaging the feature (tower) gradients are **1/D** of the true ones while
      the scale/bias gradients are exact. ``local_loss=True`` with ``gather_with_grad=False`` would
      give other ranks' columns no gradient at all and raises :class:`ConfigError`.

    * ``tile_size`` (with ``local_loss=True``): this rank's rows are computed in tiles against the
      gathered columns (S-INFCL: only per-row log-sum-exps are kept), memory O(N·d + tile²) per
      rank instead of O(bN); gradients reach other ranks' columns through the gather's backward.

    Exact combinations (after DDP's gradient average): both with ``gather_with_grad=True``.
    Without a process group or with world size 1 it simply calls the wrapped loss. It exposes no
    ``pure()`` (the base raises): another wrapper dispatching on it must not skip the gather.
    The state-dict keys of the wrapped loss gain the prefix ``loss.``.
    """

    def __init__(
        self,
        loss: PairLoss,
        gather_with_grad: bool = True,
        local_loss: bool = True,
        group: Group = None,
        tile_size: int | None = None,
    ) -> None:
        super().__init__()
        _pure_of(loss, (clip_loss, siglip_loss), "GatherLoss")
        if tile_size is not None and (not local_loss or tile_size < 1):
            raise ConfigError("GatherLoss tile_size needs local_loss=True and a positive integer")
        if local_loss and not gather_with_grad:
            raise ConfigError(
                "GatherLoss(local_loss=True, gather_with_grad=False) is refused: the local rows' "
                "logits use other ranks' features as constants, so those features would get no "
                "gradient (incomplete gradient); use gather_with_grad=True, or local_loss=False "
                "(feature gradients then 1/D of the true ones)"
            )
        self.loss = loss
        self.gather_with_grad = gather_with_grad
        self.local_loss = local_loss
        self.group = group
        self.tile_size = tile_size

    @property
    def accepts(self) -> frozenset[str]:  # type: ignore[override]
        """``pair_weights`` when the wrapped loss takes them (CLIP): see :meth:`forward`."""
        return self.loss.accepts & {"pair_weights"}

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, pair_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``pair_weights [b]`` (this rank's pairs; CLIP, ``local_loss=True``, untiled): the local
        form becomes ``(1/b) Σ_i w_i ℓ_i`` over this rank's pairs, so the mean over ranks is the
        weighted full-batch loss ``(1/N) Σ w_i ℓ_i`` and DDP's gradient average is exact."""
        if not is_distributed(self.group):
            return self.loss(x, y) if pair_weights is None else self.loss(x, y, pair_weights=pair_weights)
        fn, kwargs = _pure_of(self.loss, (clip_loss, siglip_loss), "GatherLoss")
        if pair_weights is not None and (fn is not clip_loss or not self.local_loss or self.tile_size):
            raise ConfigError(
                "GatherLoss takes pair_weights with CLIP, local_loss=True (scale.dist_loss=local) "
                "and no tile_size only"
            )
        _check_across_ranks(x, y, self.group, "GatherLoss")
        x = maybe_normalize(x, kwargs.get("normalize", True))
        y = maybe_normalize(y, kwargs.get("normalize", True)).to(x.dtype)
        kwargs = {**kwargs, "normalize": False}  # rows are normalised already
        if fn is clip_loss:
            return self._clip(x, y, kwargs, pair_weights)
        return self._siglip(x, y, kwargs)

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        if self.gather_with_grad:
            return _AllGatherWithGrad.apply(t, self.group)
        return _all_gather_local_slot(t, self.group)

    def _clip(
        self, x: torch.Tensor, y: torch.Tensor, kwargs: dict[str, Any], pair_weights: torch.Tensor | None
    ) -> torch.Tensor:
        # one collective for both modalities (and one in backward): fewer round trips, and no
        # reliance on autograd running two gathers' backwards in the same order on every rank
        both = self._gather(torch.cat([x, y], dim=1))
        x_all, y_all = both.split(x.shape[1], dim=1)
        if not self.local_loss:
            return clip_loss(x_all, y_all, **kwargs)
        scale, bias = kwargs["scale"], kwargs.get("bias")
        if self.tile_size is not None:
            return _tiled_local_clip(x, y, x_all, y_all, scale, bias, self.tile_size)
        logits_x = scale * (x @ y_all.T)  # [b, N]: this rank's images against every text
        logits_y = scale * (y @ x_all.T)  # [b, N]: this rank's texts against every image
        if bias is not None:
            logits_x, logits_y = logits_x + bias, logits_y + bias
        b = x.shape[0]
        target = torch.arange(b, device=x.device) + b * rank(self.group)
        if pair_weights is not None:  # this rank's pairs' ℓ_i = ½(row i + column i), weighted
            w = check_pair_weights(pair_weights, b)
            rows = F.cross_entropy(logits_x, target, reduction="none")
            cols = F.cross_entropy(logits_y, target, reduction="none")
            return (w.to(rows.dtype) * 0.5 * (rows + cols)).mean()
        return 0.5 * (F.cross_entropy(logits_x, target) + F.cross_entropy(logits_y, target))

    def _siglip(self, x: torch.Tensor, y: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        if not self.local_loss:
            both = self._gather(torch.cat([x, y], dim=1))
            x_all, y_all = both.split(x.shape[1], dim=1)
            return siglip_loss(x_all, y_all, **kwargs)
        y_all = self._gather(y)  # the sigmoid loss is per row: only the texts are needed
        b = x.shape[0]
        if self.tile_size is not None:
            return _tiled_local_siglip(x, y, y_all, kwargs["scale"], kwargs["bias"], self.tile_size)
        labels = -torch.ones(b, y_all.shape[0], dtype=x.dtype, device=x.device)
        rows = torch.arange(b, device=x.device)
        labels[rows, rows + b * rank(self.group)] = 1.0
        return siglip_loss(x, y_all, labels=labels, **kwargs)  # normalised by b


def _tiled_local_clip(x, y, x_all, y_all, scale, bias, tile: int) -> torch.Tensor:
    """This rank's rows of CLIP in tiles: ½[mean(lse(s·x Y_allᵀ) − s·x·y) + mean(lse(s·y X_allᵀ) − s·y·x)]."""
    s = _as_scalar(scale, x)
    lse_x = tiled_lse(x, y_all, s, tile)[0]  # row log-sum-exps only; columns are other ranks'
    lse_y = tiled_lse(y, x_all, s, tile)[0]
    diag = s * (x * y).sum(1)
    loss = 0.5 * ((lse_x - diag).mean() + (lse_y - diag).mean())
    return loss + 0.0 * bias if isinstance(bias, torch.Tensor) else loss  # the bias cancels


def _tiled_local_siglip(x, y, y_all, scale, bias, tile: int) -> torch.Tensor:
    """This rank's rows of SigLIP in tiles: (1/b)[Σ_ij softplus(t·x_i·y_j + b) − Σ_i (t·x_i·y_i + b)]."""
    t, b = _as_scalar(scale, x), _as_scalar(bias, x)
    total = tiled_softplus_sum(x, y_all, t, b, tile)
    return (total - (t * (x * y).sum(1) + b).sum()) / x.shape[0]


def _as_scalar(v: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.reshape(()).to(like.dtype)
    return torch.tensor(float(v), dtype=like.dtype, device=like.device)
