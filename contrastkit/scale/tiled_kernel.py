"""Tiled log-sum-exps of the distance kernel ``X_ij = −max(‖a_i − c_j‖², ε)^{γ/2} / τ``, exact gradients.

Kernel-InfoNCE (:func:`~contrastkit.losses.kernel_infonce_loss`) at γ ≠ 2 needs, per anchor, the
log-sum-exp of the kernel logits over all candidates (``row``) and, in the cross layout, over all
anchors (``col``). :func:`~contrastkit.scale.tiled_rule.tiled_rule_lse` can build such tiles from
any rule, but its backward re-runs the tile under autograd (a second product, the graph of
``clamp``/``pow``/``div``, then autograd's two products). Here the derivative is written out::

    d²_ij = ‖a_i‖² + ‖c_j‖² − 2 a_i·c_j          (one addmm per tile)
    P_ij  = max(d²_ij, ε)^{γ/2},   X_ij = −P_ij / τ
    G_ij  = ∂L/∂X_ij = e^{X_ij − row_i} g_row_i + e^{X_ij − col_j} g_col_j   (0 on dropped pairs)
    H_ij  = ∂L/∂d²_ij = −(γ / 2τ) · G_ij · P_ij / d²_ij · [d²_ij ≥ ε]
    ∂L/∂a_i = 2 a_i Σ_j H_ij − 2 (H c)_i,     ∂L/∂c_j = 2 c_j Σ_i H_ij − 2 (Hᵀ a)_j

so backward costs one product to rebuild ``d²`` and two to pull ``H`` back — the same three as the
tiled NT-Xent — plus the elementwise work. γ = 1 (the Laplacian kernel) takes ``sqrt`` instead of
``pow``. ``ε`` is the dense loss's floor (:data:`contrastkit.losses.kernel._D2_FLOOR`): below it
the gradient is 0, as the dense ``clamp``'s. ``drop_diagonal``: pairs with equal global index are
left out (the SimCLR 2N layout, where ``a`` is ``c``). Saved for backward: a, c, the norms and the
output vectors — O(N·d); memory O(N·d + tile²). Exactness: tests/scale/test_tiled_more.py
(float64 values and gradients against the dense loss, γ ∈ {1, 0.5}, both layouts and mixtures,
tiles 1 … > N). Related: :mod:`contrastkit.scale.tiled_more` (the loss), ``tiled_rule``.
"""

from __future__ import annotations

from typing import Any

import torch

from contrastkit.losses.kernel import _D2_FLOOR
from contrastkit.scale.tiled_family import DEFAULT_TILE, check_tile
from contrastkit.scale.tiled_rule import tiles

__all__ = ["tiled_kernel_lse"]

_NEG_INF = float("-inf")


def _sq_dist(a_t: torch.Tensor, c_t: torch.Tensor, na_t: torch.Tensor, nc_t: torch.Tensor) -> torch.Tensor:
    """``‖a_i‖² + ‖c_j‖² − 2 a_i·c_j`` for one tile, in a fresh tensor (one addmm, one add)."""
    return torch.addmm(nc_t[None, :], a_t, c_t.T, alpha=-2.0).add_(na_t[:, None])


def _power(d2: torch.Tensor, half: float) -> torch.Tensor:
    """``d2^half`` in a fresh tensor; ``sqrt`` for the Laplacian kernel (much cheaper than ``pow``)."""
    if half == 0.5:
        return d2.sqrt()
    if half == 1.0:
        return d2.clone()
    return d2.pow(half)


def _drop_diagonal(t: torch.Tensor, rows: slice, cols: slice, value: float) -> None:
    """Set the tile's entries with equal global row and column index to ``value`` (in place)."""
    if rows.start < cols.stop and cols.start < rows.stop:
        t.diagonal(rows.start - cols.start).fill_(value)  # t[i, i + k] is pair (r0 + i, r0 + i)


class _KernelLSE(torch.autograd.Function):
    """(a, c) → (row, col) log-sum-exps of the kernel logits, tile by tile."""

    @staticmethod
    def forward(ctx: Any, a, c, gamma: float, tau: float, columns: bool, drop_diag: bool, tile: int):
        na, nc = (a * a).sum(1), (c * c).sum(1)
        row = a.new_full((a.shape[0],), _NEG_INF)
        col = a.new_full((c.shape[0] if columns else 0,), _NEG_INF)
        for rows in tiles(a.shape[0], tile):
            for cols in tiles(c.shape[0], tile):
                d2 = _sq_dist(a[rows], c[cols], na[rows], nc[cols]).clamp_min_(_D2_FLOOR)
                x = _power(d2, gamma / 2).mul_(-1.0 / tau)
                if drop_diag:
                    _drop_diagonal(x, rows, cols, _NEG_INF)
                row[rows] = torch.logaddexp(row[rows], x.logsumexp(1))
                if columns:
                    col[cols] = torch.logaddexp(col[cols], x.logsumexp(0))
        ctx.save_for_backward(a, c, na, nc, row, col)
        ctx.opts = (gamma, tau, columns, drop_diag, tile)
        return row, col

    @staticmethod
    def backward(ctx: Any, g_row: torch.Tensor, g_col: torch.Tensor):
        a, c, na, nc, row, col = ctx.saved_tensors
        gamma, tau, columns, drop_diag, tile = ctx.opts
        half, coef = gamma / 2, -gamma / (2 * tau)
        ga, gc = torch.zeros_like(a), torch.zeros_like(c)
        for rows in tiles(a.shape[0], tile):
            for cols in tiles(c.shape[0], tile):
                a_t, c_t = a[rows], c[cols]
                d2 = _sq_dist(a_t, c_t, na[rows], nc[cols])
                below = d2 < _D2_FLOOR  # the dense clamp passes no gradient there
                d2.clamp_min_(_D2_FLOOR)
                p = _power(d2, half)
                # ratio = P / d² = d^{γ−2}, computed in d²'s buffer (1/P for γ = 1, 1 for γ = 2)
                ratio = d2.reciprocal_().mul_(p) if half != 1.0 else None
                x = p.mul_(-1.0 / tau)
                h = (x - row[rows, None]).exp_().mul_(g_row[rows, None])
                if columns:
                    h.add_(x.sub_(col[None, cols]).exp_().mul_(g_col[None, cols]))
                if ratio is not None:
                    h.mul_(ratio)
                h.mul_(coef).masked_fill_(below, 0.0)
                if drop_diag:
                    _drop_diagonal(h, rows, cols, 0.0)
                ga[rows].addmm_(h, c_t, alpha=-2.0).add_(a_t * (2.0 * h.sum(1))[:, None])
                gc[cols].addmm_(h.T, a_t, alpha=-2.0).add_(c_t * (2.0 * h.sum(0))[:, None])
        return ga, gc, None, None, None, None, None


def tiled_kernel_lse(
    a: torch.Tensor,
    c: torch.Tensor,
    gamma: float,
    temperature: float,
    *,
    columns: bool = False,
    drop_diagonal: bool = False,
    tile_size: int = DEFAULT_TILE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row (and column) log-sum-exps of ``−max(‖a_i − c_j‖², ε)^{γ/2} / τ``, exact gradients.

    ``a [N, d]``, ``c [M, d]``; ``drop_diagonal`` leaves out pairs ``i = j`` (pass the same tensor
    as ``a`` and ``c`` for the SimCLR 2N layout). Returns ``(row [N], col [M] or None)``.
    """
    check_tile(tile_size)
    row, col = _KernelLSE.apply(a, c, float(gamma), float(temperature), columns, drop_diagonal, tile_size)
    return row, (col if columns else None)
