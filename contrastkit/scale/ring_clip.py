"""S-CLIP-RING — the CLIP loss across ranks without the global similarity matrix (Inf-CL's ring).

Paper: Cheng et al. 2024, "Breaking the Memory Barrier: Near Infinite Batch Size Scaling for
Contrastive Loss" (Inf-CL): multi-level tiling — text blocks travel round a ring of ranks, and each
rank works through its block pairs in tiles. Extended here to the *symmetric* CLIP loss in one pass.

Setting as in :mod:`contrastkit.scale.distributed`: D ranks, rank r holds b pairs ``x^(r), y^(r)``,
the global batch is their concatenation in rank order (N = bD), ``s`` the logit scale. This rank's
share is::

    loss_r = (1/2b) Σ_{i ∈ r} [(lse_row_i − s x_i·y_i) + (lse_col_i − s x_i·y_i)]
    lse_row_i = LSE_{j ≤ N} s x_i·y_j        (image i against all N texts)
    lse_col_i = LSE_{j ≤ N} s y_i·x_j        (text i against all N images)

so ``mean_r loss_r = clip_loss(x, y)`` of the concatenated batch, and ``(1/D) Σ_r`` of the
gradients each rank's backward produces is its full-batch gradient (towers, scale; a bias cancels).

Protocol. Forward, D steps: at step k rank r holds the text block of rank ``o = r − k`` together
with the running column log-sum-exps of that block (over the images of the ranks it has visited).
It computes the tile log-sum-exps of ``s·x^(r) y^(o)ᵀ`` (:func:`~contrastkit.scale.tiled.tiled_lse`),
merges the row ones into its own ``lse_row`` and the column ones into the travelling partial
(``logaddexp``), and passes both to the right: the block D−1 hops (posted before the tiles, so the
transfer overlaps them), the ``[b]`` partial D hops — the last brings it home as ``lse_col``.
Backward, the same ring: ``(y^(o), lse_col^(o), g_col^(o))`` travels with a ``[b, d]`` accumulator of
``∂/∂y^(o)``; each rank recomputes its tiles, ``G = e^{X − lse_row} g_row + e^{X − lse_col} g_col``,
``dx^(r) += s·G y^(o)``, ``dy^(o) += s·Gᵀ x^(r)``, ``ds += Σ x^(r) ⊙ (G y^(o))``; after D hops the
accumulator is at its owner. Where the log-sum-exps of a block pair lie within half the dtype's
exponent range of each other (the usual case), one ``exp`` per tile serves both terms.

Cost per rank: 1 tile product forward and 3 backward per block pair (the dense floor is 3).
Messages: forward D−1 hops of ``[b, d]`` and D of ``[b]``; backward D−1 of ``[b, d + 2]`` and D of
``[b, d]``. Memory per rank O(b·d + tile²): the local embeddings, two blocks in flight, the
accumulators — never ``[N, d]`` (what :class:`~contrastkit.scale.distributed.GatherLoss` gathers)
nor ``[b, N]`` logits. Every rank must call ``backward`` (it runs the ring too).

Exactness: values and gradients (x, y, logit scale) equal ``clip_loss`` on the concatenated batch,
float64, gloo world 2, 3 and 4, tiles 1, 3 and > b, rtol 1e-10 (``tests/scale/test_ring_clip.py``).
Related: :func:`~contrastkit.scale.ring_siglip.siglip_ring_loss` (the sigmoid ring, no log-sum-exp
to carry), :func:`~contrastkit.scale.tiled.tiled_clip_loss` (one process), ``GatherLoss(tile_size=…)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from contrastkit.core.checks import check_pair, check_scalar_param
from contrastkit.core.errors import InputError
from contrastkit.losses.base import PairLoss, maybe_normalize
from contrastkit.losses.clip import clip_loss
from contrastkit.scale.distributed import (
    WrappedLoss,
    _check_across_ranks,
    _global_rank,
    _pure_of,
    is_distributed,
    rank,
    world_size,
)
from contrastkit.scale.tiled import tiled_lse
from contrastkit.scale.tiled_family import DEFAULT_TILE, check_tile

__all__ = ["CLIPRingLoss", "clip_ring_loss"]

Group = dist.ProcessGroup | None
_BLOCK, _PARTIAL = 0, 1  # message tags: the travelling block and its accumulator may be in flight together


def _tiles(n: int, tile: int) -> list[slice]:
    return [slice(i, min(i + tile, n)) for i in range(0, n, tile)]


class _Ring:
    """This rank's neighbours; :meth:`pass_on` sends a tensor right and receives one from the left
    without waiting (a single process passes to itself)."""

    def __init__(self, group: Group, active: bool) -> None:
        self.group, self.active = group, active
        n, r = (world_size(group), rank(group)) if active else (1, 0)
        self.size = n
        self.right, self.left = _global_rank(group, (r + 1) % n), _global_rank(group, (r - 1) % n)

    def pass_on(self, t: torch.Tensor, tag: int) -> Callable[[], torch.Tensor]:
        """Post the exchange; the returned call waits for it and gives the received tensor."""
        if not self.active:
            return lambda: t
        t = t.contiguous()
        out = torch.empty_like(t)
        works = dist.batch_isend_irecv(
            [
                dist.P2POp(dist.isend, t, self.right, self.group, tag),
                dist.P2POp(dist.irecv, out, self.left, self.group, tag),
            ]
        )

        def wait(sent: torch.Tensor = t) -> torch.Tensor:  # holds the sent buffer until the send is done
            for w in works:
                w.wait()
            return out

        return wait


class _RingLSE(torch.autograd.Function):
    """(x^(r), y^(r), s) → (lse_row, lse_col) over the global batch, by the ring of the module doc."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, ring: _Ring, tile: int):
        lse_row = x.new_full((x.shape[0],), -math.inf)
        block, partial = y, None
        for k in range(ring.size):
            nxt = ring.pass_on(block, _BLOCK) if k < ring.size - 1 else None
            row, col = tiled_lse(x, block, s, tile)  # tile LSEs of s·x^(r) y^(o)ᵀ
            lse_row = torch.logaddexp(lse_row, row)
            if partial is not None:  # the columns' LSE over the ranks this block has visited
                col = torch.logaddexp(partial(), col)
            partial = ring.pass_on(col, _PARTIAL)  # at k = D − 1 this hop takes it home
            if nxt is not None:
                block = nxt()
        lse_col = partial()  # type: ignore[misc]  # D ≥ 1 steps ran
        ctx.save_for_backward(x, y, s, lse_row, lse_col)
        ctx.ring, ctx.tile = ring, tile
        return lse_row, lse_col

    @staticmethod
    def backward(ctx: Any, g_row: torch.Tensor, g_col: torch.Tensor):
        x, y, s, lse_row, lse_col = ctx.saved_tensors
        ring, tile, d = ctx.ring, ctx.tile, x.shape[1]
        q = x * s
        gx = torch.zeros_like(x)  # Σ_j G_ij y_j over every text block
        pkg = torch.cat([y, lse_col[:, None], g_col[:, None]], dim=1)  # what a block needs elsewhere
        acc = None
        for k in range(ring.size):
            nxt = ring.pass_on(pkg, _BLOCK) if k < ring.size - 1 else None
            gy = torch.zeros_like(y)  # this rank's Σ_i G_ij x_i for the visiting block
            _block_grads(x, q, pkg[:, :d], (lse_row, g_row), (pkg[:, d], pkg[:, d + 1]), gx, gy, tile)
            if acc is not None:  # waited for only now: the accumulator's hop overlapped the tiles
                gy += acc()
            acc = ring.pass_on(gy, _PARTIAL)
            if nxt is not None:
                pkg = nxt()
        gy = acc()  # type: ignore[misc]  # home after D hops
        ds = (x * gx).sum().reshape(s.shape)  # Σ_ij G_ij x_i·y_j over this rank's rows
        return gx.mul_(s), gy.mul_(s), ds, None, None


def _block_grads(
    x: torch.Tensor,
    q: torch.Tensor,
    yb: torch.Tensor,
    rows_stats: tuple[torch.Tensor, torch.Tensor],
    cols_stats: tuple[torch.Tensor, torch.Tensor],
    gx: torch.Tensor,
    gy: torch.Tensor,
    tile: int,
) -> None:
    """``gx += G yb`` and ``gy += Gᵀ x`` over the tiles of ``G = e^{X − lse_r} g_r + e^{X − lse_c} g_c``,
    ``X = q ybᵀ``. With ``k = min(lse)`` and every LSE within half the exponent range above it,
    ``G = E ⊙ (u_i + v_j)``, ``E = e^{X − k} ≤ e^{spread}`` (X ≤ both LSEs), ``u = g_r e^{k − lse_r}``:
    no overflow, and terms that underflow are below ``tiny·g`` — else two shifted ``exp`` per tile."""
    (lse_r, g_r), (lse_c, g_c) = rows_stats, cols_stats
    k = torch.minimum(lse_r.min(), lse_c.min())
    spread = float(torch.maximum(lse_r.max(), lse_c.max()) - k)
    fast = spread <= 0.5 * math.log(torch.finfo(x.dtype).max)
    if fast:
        u, v = g_r * torch.exp(k - lse_r), g_c * torch.exp(k - lse_c)
    for rows in _tiles(x.shape[0], tile):
        for cols in _tiles(yb.shape[0], tile):
            if fast:
                e = torch.addmm(-k, q[rows], yb[cols].T).exp_()
                g = (e * u[rows, None]).addcmul_(e, v[None, cols])
            else:  # in place: the tile is the only O(tile²) buffer besides g
                blk = q[rows] @ yb[cols].T
                g = (blk - lse_r[rows, None]).exp_().mul_(g_r[rows, None])
                g.add_(blk.sub_(lse_c[None, cols]).exp_().mul_(g_c[None, cols]))
            gx[rows].addmm_(g, yb[cols])
            gy[cols].addmm_(g.T, x[rows])


def clip_ring_loss(
    x_local: torch.Tensor,
    y_local: torch.Tensor,
    logit_scale: torch.Tensor | float,
    bias: torch.Tensor | float | None = None,
    *,
    normalize: bool = True,
    allow_single: bool = False,
    group: Group = None,
    tile_size: int = DEFAULT_TILE,
) -> torch.Tensor:
    """S-CLIP-RING: this rank's share of the full-batch CLIP loss, blocks passed round a ring.

    ``mean_r loss_r = clip_loss`` of the concatenated batch, values and — after DDP's average —
    gradients (exact). Without a process group (or world size 1) the same computation on one rank:
    the tiled CLIP loss.

    Args:
        x_local: ``[b, d]`` this rank's images (same shape on every rank).
        y_local: ``[b, d]`` this rank's texts (same shape on every rank).
        logit_scale: ``s`` (not its log), replicated on every rank.
        bias: optional logit bias; it cancels in the softmax (gradient 0).
        normalize: L2-normalise rows first (default), locally before any exchange.
        allow_single: accept a global batch of one pair (loss 0), as ``clip_loss``.
        group: process group (default: the world).
        tile_size: rows/columns per tile within a rank (memory O(tile²)).
    Returns:
        0-d tensor. Memory O(b·d + tile²) per rank. Bad or mismatched input on any rank raises
        :class:`InputError` on every rank.
    """
    check_tile(tile_size)
    if isinstance(logit_scale, torch.Tensor):  # replicated: a bad one fails on every rank alike
        check_scalar_param("logit_scale", logit_scale)
    active = is_distributed(group)
    if active:
        _check_across_ranks(x_local, y_local, group, "clip_ring_loss")
    else:
        check_pair(x_local, y_local)
        if x_local.shape[0] == 1 and not allow_single:
            raise InputError(
                "clip_ring_loss got a batch of 1 pair: with no negatives the loss is identically 0; "
                "pass allow_single=True if that is intended"
            )
    x = maybe_normalize(x_local, normalize)
    y = maybe_normalize(y_local, normalize).to(x.dtype)
    if isinstance(logit_scale, torch.Tensor):
        s = logit_scale.reshape(()).to(x.dtype)
    else:
        s = torch.tensor(float(logit_scale), dtype=x.dtype, device=x.device)
    lse_row, lse_col = _RingLSE.apply(x, y, s, _Ring(group, active), tile_size)
    diag = s * (x * y).sum(1)
    loss = 0.5 * ((lse_row - diag).mean() + (lse_col - diag).mean())
    if isinstance(bias, torch.Tensor):  # a bias shifts every logit of a row equally: it cancels
        loss = loss + 0.0 * bias
    return loss


class CLIPRingLoss(WrappedLoss):
    """S-CLIP-RING as a module: wraps a loss whose ``pure()`` is ``clip_loss`` (CLIP, symmetric
    InfoNCE) and computes :func:`clip_ring_loss` with its live scale (and bias). The wrapped module
    is a submodule; ``after_optimizer_step``/``log_values`` are delegated. Exact after DDP
    averaging; without a process group or with world size 1 it simply calls the wrapped loss.
    Takes no batch fields (CLIP's ``pair_weights`` need ``GatherLoss``, ``dist_loss: local``)."""

    def __init__(self, loss: PairLoss, group: Group = None, tile_size: int = DEFAULT_TILE) -> None:
        super().__init__()
        _pure_of(loss, (clip_loss,), "CLIPRingLoss")
        check_tile(tile_size)
        self.loss = loss
        self.group = group
        self.tile_size = tile_size

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not is_distributed(self.group):
            return self.loss(x, y)
        _, kwargs = _pure_of(self.loss, (clip_loss,), "CLIPRingLoss")
        return clip_ring_loss(
            x,
            y,
            kwargs["scale"],
            kwargs.get("bias"),
            normalize=kwargs.get("normalize", True),
            allow_single=kwargs.get("allow_single", False),
            group=self.group,
            tile_size=self.tile_size,
        )
