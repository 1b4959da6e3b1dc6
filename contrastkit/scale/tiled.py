"""S-INFCL — exact CLIP and SigLIP losses computed in tiles, memory O(N·d + tile²).

Spec id: S-INFCL (docs/performance.md); paper: Cheng et al. 2024, "Breaking the Memory
Barrier: Near Infinite Batch Size Scaling for Contrastive Loss" (Inf-CL), extended as the spec
asks to the *symmetric* CLIP loss in one pass and to SigLIP.

CLIP. With the logit scale folded into the rows (``q = s·x``), the loss is
``½[(1/N)Σ_i (lse_row_i − s x_i·y_i) + (1/N)Σ_j (lse_col_j − s x_j·y_j)]``. Only the two
log-sum-exp vectors need the N×N matrix; a custom ``autograd.Function`` computes them tile by tile:

* forward: for each tile ``X = s·x_m y_nᵀ`` (accumulated in float32/float64), merge its row-wise
  and column-wise partial LSEs into ``lse_row[m]`` and ``lse_col[n]`` (online softmax, ``logaddexp``),
  then drop the tile. Saved for backward: x, y, s and the two LSE vectors — O(N·d).
* backward: recompute each tile once, ``G = e^{X − lse_row} g_row + e^{X − lse_col} g_col``,
  ``dx_m += s·G y_n``, ``dy_n += Gᵀ (s·x_m)``, ``ds += Σ x_m ⊙ (G y_n)``.

That is 4 tile matmuls per tile pair (1 forward, 3 backward) against the dense floor of 3
(``XYᵀ``, ``G Y``, ``Gᵀ X``): the 4/3 minimum of any method that does not keep the matrix.

SigLIP. ``loss = (1/N)[Σ_ij softplus(ℓ_ij) − Σ_i ℓ_ii]`` with ``ℓ = t·x yᵀ + b``: the first sum is a
tiled custom function whose output is a scalar, so the forward pass accumulates its gradients
(``P = σ(ℓ)``: ``dx += t·P y``, ``dy += Pᵀ (t·x)``) while each tile is in hand and backward only
scales them — 3 tile matmuls per tile pair, the dense floor; the diagonal is plain autograd.
Learnable scale and bias get exact gradients; the CLIP logit bias cancels (zero gradient).

Inputs in float16/bfloat16 are promoted to float32 first; any tile size ≥ 1 and any N work.
:data:`TILED` (what :class:`TiledLoss` dispatches on) also holds the InfoNCE family's tiled forms
(:mod:`contrastkit.scale.tiled_zoo`: NT-Xent, SupCon, DCL/DCLW, multi-positive, InfoNCE, margins, HN-NCE;
:mod:`contrastkit.scale.tiled_more`: XMC decoupled softmax, LLaVE, Kernel-InfoNCE).
Related: :func:`contrastkit.losses.clip_loss`, :func:`contrastkit.losses.siglip_loss` (the dense
forms these equal), ``contrastkit.scale.grad_cache`` (memory of the towers, not of the loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_pair, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import PairLoss, maybe_normalize
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.siglip import siglip_loss
from contrastkit.losses.similarity import refuse_non_cosine
from contrastkit.scale.tiled_more import TILED_MORE, TILED_MORE_FIELDS
from contrastkit.scale.tiled_zoo import TILED_FAMILY, TILED_FIELDS

__all__ = [
    "TILED",
    "TiledLoss",
    "tiled_clip_loss",
    "tiled_lse",
    "tiled_siglip_loss",
    "tiled_softplus_sum",
]

DEFAULT_TILE = 2048


def _tiles(n: int, tile: int) -> list[slice]:
    return [slice(i, min(i + tile, n)) for i in range(0, n, tile)]


def _underflow_floor(dtype: torch.dtype, n: int) -> float:
    """Smallest safe sum of ``exp(X − c)`` over a row of n terms: below it, terms that underflowed
    to 0 could matter at the dtype's precision, so the exact two-pass path is used instead."""
    return n * (1e-300 if dtype == torch.float64 else 1e-31)


class _ClipLSE(torch.autograd.Function):
    """(x, y, s) → (lse_row, lse_col) of ``X = s·x yᵀ`` without materialising it.

    Fast path: with ``c = s·max‖x‖·max‖y‖ ≥ max X`` (Cauchy–Schwarz), one ``E = exp(X − k)`` per
    tile serves both the row and the column sums, and backward forms ``G = E ⊙ (u_i + v_j)`` with
    ``u = g_row·e^{k − lse_row}``: three elementwise passes each way instead of ~8. The shift ``k``
    is ``c`` only where ``e^X`` summed over a row could overflow (``c + log n`` near the dtype's
    largest exponent); otherwise ``k = 0`` and the GEMM writes the tile directly (no bias fill).
    Gradients accumulate into ``x``- and ``y``-shaped buffers inside the GEMMs (``addmm_``) and the
    scale's gradient is read off them at the end (``ds = Σ_i x_i·(G y)_i``): no per-tile N×d
    temporaries. If some row or column sum is so small that underflowed terms could matter (logits
    far below the bound), the call falls back to max-subtracted log-sum-exps.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, tile: int):
        n, m = x.shape[0], y.shape[0]
        k = _shift(x, y, s)
        kk = _or_none(k)
        q_all = x * s
        row, col = x.new_zeros(n), x.new_zeros(m)
        for rows in _tiles(n, tile):
            q = q_all[rows]
            for cols in _tiles(m, tile):
                e = _exp_tile(q, y[cols], kk)
                row[rows] += e.sum(1)
                col[cols] += e.sum(0)
        ctx.fast = bool(
            row.min() >= _underflow_floor(x.dtype, m) and col.min() >= _underflow_floor(x.dtype, n)
        )
        if ctx.fast:
            lse_row, lse_col = k + row.log(), k + col.log()
        else:
            lse_row, lse_col = _exact_lse(x, y, s, tile)
        ctx.save_for_backward(x, y, s, lse_row, lse_col, k)
        ctx.tile = tile
        return lse_row, lse_col

    @staticmethod
    def backward(ctx: Any, g_row: torch.Tensor, g_col: torch.Tensor):
        x, y, s, lse_row, lse_col, k = ctx.saved_tensors
        gx, gy = torch.zeros_like(x), torch.zeros_like(y)  # Σ_j G_ij y_j and Σ_i G_ij x_i
        u, v = g_row * torch.exp(k - lse_row), g_col * torch.exp(k - lse_col)
        q_all, kk = x * s, _or_none(k)
        for rows in _tiles(x.shape[0], ctx.tile):
            q = q_all[rows]
            for cols in _tiles(y.shape[0], ctx.tile):
                if ctx.fast:
                    e = _exp_tile(q, y[cols], kk)
                    g = (e * u[rows, None]).addcmul_(e, v[None, cols])
                else:  # in place: the tile is the only O(tile²) buffer besides g
                    blk = q @ y[cols].T
                    g = (blk - lse_row[rows, None]).exp_().mul_(g_row[rows, None])
                    g.add_(blk.sub_(lse_col[None, cols]).exp_().mul_(g_col[None, cols]))
                gx[rows].addmm_(g, y[cols])
                gy[cols].addmm_(g.T, x[rows])
        ds = (x * gx).sum().reshape(s.shape)  # Σ_ij G_ij x_i·y_j
        return gx.mul_(s), gy.mul_(s), ds, None


def _shift(x: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The exponent shift of the fast path: 0 when ``e^X`` summed over any row or column stays
    far from overflow (``c + log max(n, m)`` below the dtype's largest exponent less a margin),
    else the Cauchy–Schwarz bound ``c = s·max‖x‖·max‖y‖``."""
    c = (s * x.norm(dim=1).max() * y.norm(dim=1).max()).reshape(())
    limit = 0.9 * math.log(torch.finfo(x.dtype).max) - math.log(max(x.shape[0], y.shape[0]))
    return c if float(c) >= limit else torch.zeros_like(c)


def _or_none(k: torch.Tensor) -> torch.Tensor | None:
    return None if bool(k == 0) else k


def _exp_tile(q: torch.Tensor, y: torch.Tensor, k: torch.Tensor | None) -> torch.Tensor:
    """``exp(q yᵀ − k)`` of one tile; with no shift the GEMM writes the tile with no bias fill."""
    if k is None:
        return torch.mm(q, y.T).exp_()
    return torch.addmm(-k, q, y.T).exp_()


def _exact_lse(x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, tile: int):
    """Row and column log-sum-exps of ``s·x yᵀ`` merged tile by tile (online softmax)."""
    lse_row = x.new_full((x.shape[0],), float("-inf"))
    lse_col = x.new_full((y.shape[0],), float("-inf"))
    for rows in _tiles(x.shape[0], tile):
        q = x[rows] * s
        for cols in _tiles(y.shape[0], tile):
            blk = q @ y[cols].T
            lse_row[rows] = torch.logaddexp(lse_row[rows], torch.logsumexp(blk, 1))
            lse_col[cols] = torch.logaddexp(lse_col[cols], torch.logsumexp(blk, 0))
    return lse_row, lse_col


class _SoftplusSum(torch.autograd.Function):
    """(x, y, t, b) → Σ_ij softplus(t·x_i·y_j + b) without materialising the matrix.

    The output is a scalar, so its gradient is known up to the upstream factor while the tile is
    still in hand: forward accumulates ∂/∂(x, y, t, b) directly (when any input needs a
    gradient) and backward only scales them. Three tile matmuls per tile pair — the dense floor.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, b: torch.Tensor, tile: int):
        total = x.new_zeros(())
        want_grad = any(ctx.needs_input_grad[:4])
        dx, dy = (torch.zeros_like(x), torch.zeros_like(y)) if want_grad else (None, None)
        dt, db = torch.zeros_like(t), torch.zeros_like(b)
        for rows in _tiles(x.shape[0], tile):
            q = x[rows] * t
            for cols in _tiles(y.shape[0], tile):
                blk = torch.addmm(b, q, y[cols].T)  # bias fused into the GEMM
                total += F.softplus(blk).sum()
                if want_grad:
                    p = blk.sigmoid_()
                    py = p @ y[cols]
                    dx[rows] += t * py
                    dy[cols] += p.T @ q
                    dt += (x[rows] * py).sum()
                    db += p.sum()
        ctx.save_for_backward(dx, dy, dt, db)
        return total

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        dx, dy, dt, db = ctx.saved_tensors
        if dx is None:
            return None, None, dt * g, db * g, None
        # scaled in place: new N×d results while the saved ones are alive would double the peak.
        # A second backward through a retained graph then fails autograd's version check (loudly).
        return dx.mul_(g), dy.mul_(g), dt * g, db * g, None


def tiled_lse(
    x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, tile_size: int = DEFAULT_TILE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column log-sum-exps of ``s·x yᵀ`` (x: [n, d], y: [m, d]) computed in tiles, with
    exact gradients; the building block of the tiled and cross-rank tiled CLIP losses."""
    _check_tile(tile_size)
    return _ClipLSE.apply(x, y, s.reshape(()).to(x.dtype), tile_size)


def tiled_softplus_sum(
    x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, b: torch.Tensor, tile_size: int = DEFAULT_TILE
) -> torch.Tensor:
    """``Σ_ij softplus(t·x_i·y_j + b)`` (x: [n, d], y: [m, d]) in tiles, with exact gradients."""
    _check_tile(tile_size)
    return _SoftplusSum.apply(x, y, t.reshape(()).to(x.dtype), b.reshape(()).to(x.dtype), tile_size)


def _scalar(v: torch.Tensor | float, like: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        check_scalar_param(name, v)
        return v.reshape(()).to(like.dtype)
    return torch.tensor(float(v), dtype=like.dtype, device=like.device)


def _check_tile(tile_size: int) -> None:
    if not isinstance(tile_size, int) or tile_size < 1:
        raise InputError(f"tile_size must be a positive integer, got {tile_size!r}")


def tiled_clip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float | None = None,
    *,
    normalize: bool = True,
    allow_single: bool = False,
    tile_size: int = DEFAULT_TILE,
) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.clip_loss` (value and gradients), in tiles."""
    _check_tile(tile_size)
    check_pair(x, y)
    if x.shape[0] == 1 and not allow_single:
        raise InputError(
            "clip_loss got a batch of 1 pair: with no negatives the loss is identically 0; "
            "pass allow_single=True if that is intended"
        )
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    s = _scalar(scale, x, "scale")
    lse_row, lse_col = _ClipLSE.apply(x, y, s, tile_size)
    diag = s * (x * y).sum(1)
    loss = 0.5 * ((lse_row - diag).mean() + (lse_col - diag).mean())
    if isinstance(bias, torch.Tensor):  # a bias shifts every logit of a row equally: it cancels
        loss = loss + 0.0 * bias
    return loss


def tiled_siglip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float,
    *,
    labels: torch.Tensor | None = None,
    normalize: bool = True,
    tile_size: int = DEFAULT_TILE,
) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.siglip_loss` (value and gradients), in tiles.

    Only the default labels (positives on the diagonal) are supported: an explicit label matrix
    is itself N×M, which tiling exists to avoid.
    """
    _check_tile(tile_size)
    if labels is not None:
        raise InputError("tiled_siglip_loss supports only diagonal positives (labels=None)")
    check_pair(x, y)
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    t, b = _scalar(scale, x, "scale"), _scalar(bias, x, "bias")
    total = _SoftplusSum.apply(x, y, t, b, tile_size)
    diag = t * (x * y).sum(1) + b
    return (total - diag.sum()) / x.shape[0]


TILED: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {
    clip_loss: tiled_clip_loss,
    siglip_loss: tiled_siglip_loss,
    **TILED_FAMILY,  # NT-Xent, SupCon, DCL/DCLW, multi-positive, InfoNCE, margins, HN-NCE
    **TILED_MORE,  # XMC decoupled softmax, LLaVE, Kernel-InfoNCE
}


class TiledLoss(PairLoss):
    """Wrap a loss module so it is computed in tiles; parameters, clamps and logs are the inner
    loss's. Raises :class:`ConfigError` for a loss with no tiled form. The batch fields it
    accepts are the inner loss's that its tiled form takes (``labels`` for SupCon and
    multi-positive, 0/1 ``weights`` for XMC; CLIP's ``pair_weights`` are not taken)."""

    def __init__(self, loss: PairLoss, tile_size: int = DEFAULT_TILE) -> None:
        super().__init__()
        _check_tile(tile_size)
        try:
            fn, kwargs = loss.pure()
        except NotImplementedError:  # no pure function: nothing to tile
            fn, kwargs = None, {}
        if fn not in TILED:
            names = ", ".join(f.__name__ for f in TILED)
            raise ConfigError(f"{type(loss).__name__} has no tiled form; tiled losses: {names}")
        refuse_non_cosine(kwargs, f"scale.tile_size (TiledLoss of {type(loss).__name__})")
        self.inner = loss
        self.tile_size = tile_size

    @property
    def accepts(self) -> frozenset[str]:  # type: ignore[override]
        fn, _ = self.inner.pure()
        return self.inner.accepts & {**TILED_FIELDS, **TILED_MORE_FIELDS}.get(fn, frozenset())

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        fn, kwargs = self.inner.pure()
        tiled = TILED[fn]
        return (lambda x, y, **kw: tiled(x, y, tile_size=self.tile_size, **kw)), kwargs

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.inner.after_optimizer_step()

    def log_values(self) -> dict[str, float]:
        return self.inner.log_values()
