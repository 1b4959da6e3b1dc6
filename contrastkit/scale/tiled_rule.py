"""Tiled log-sum-exps and row sums of per-pair terms that a *rule* builds per tile, exact gradients.

:func:`~contrastkit.scale.tiled_family.tiled_masked_lse` covers the masks and margins that come
from ids and labels, with hand-written gradients. Some losses need more per pair: a 0/1 relevance
matrix read tile by tile, similarity filters, a detached additive term, a kernel of the distance.
Here the caller passes a function ::

    rule(a_t, c_t, rows, cols, *params) → (X, kept)

that builds one tile's terms ``X`` (finite; a fresh tensor, overwritten in place) and a boolean
mask ``kept`` (None: all pairs) from the tile's rows ``a_t = a[rows]``, ``c_t = c[cols]`` and
0-d or vector ``params`` (scales, per-row vectors); per-sample fields ride in its closure.

* :func:`tiled_rule_lse`: ``row_i = LSE_{j kept} X_ij`` (and ``col_j``); forward merges the tiles'
  partial log-sum-exps without a graph (``logaddexp``, online softmax);
* :func:`tiled_rule_sum`: ``out_i = Σ_{j kept} X_ij`` over a list of tile pairs (tiles known to
  hold no kept pair are skipped).

Backward recomputes each tile under autograd and pulls the upstream weights through it
(``torch.autograd.grad``; for the LSE ``G = kept ⊙ (e^{X − row} g_row + e^{X − col} g_col)``), for the
inputs that need a gradient only — a queue that needs none costs no ``Gᵀ a`` product. Saved: a,
c, the params and the output vectors — O(N·d); memory O(N·d + tile²). Any tile size ≥ 1, any N, M.
Related: :mod:`contrastkit.scale.tiled_more` (the losses written with these).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from contrastkit.scale.tiled_family import DEFAULT_TILE, check_tile

__all__ = ["Rule", "tiled_rule_lse", "tiled_rule_sum", "tiles"]

Rule = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
"""``rule(a_t, c_t, rows, cols, *params) → (X, kept)`` (see the module docstring)."""
_NEG_INF = float("-inf")


def tiles(n: int, tile: int) -> list[slice]:
    """Consecutive slices of at most ``tile`` of ``range(n)``."""
    return [slice(i, min(i + tile, n)) for i in range(0, n, tile)]


def _grads_through_tile(rule: Rule, a, c, params, rows, cols, need, weigh):
    """Recompute one tile under autograd and pull ``weigh(X, kept)`` back to the graded inputs."""
    with torch.enable_grad():
        leaves = [t[i].detach().requires_grad_(n) for t, i, n in ((a, rows, need[0]), (c, cols, need[1]))]
        ps = [p.detach().requires_grad_(n) for p, n in zip(params, need[2:])]
        x, kept = rule(*leaves, rows, cols, *ps)
        g = weigh(x.detach(), kept)
        wrt = [t for t, n in zip([*leaves, *ps], need) if n]
        return torch.autograd.grad(x, wrt, g, allow_unused=True) if wrt else ()


def _accumulate(grads: list, got, rows: slice, cols: slice, need) -> None:
    it = iter(got)
    for i, n in enumerate(need):
        if n:
            g = next(it)
            if g is None:  # the rule does not use this input: its gradient stays 0
                continue
            if i == 0:
                grads[0][rows] += g
            elif i == 1:
                grads[1][cols] += g
            else:
                grads[i] += g


def _zeros(a, c, params, need) -> list:
    return [torch.zeros_like(t) if n else None for t, n in zip([a, c, *params], need)]


class _RuleLSE(torch.autograd.Function):
    """(a, c, *params) → (row, col) masked log-sum-exps of the rule's tiles."""

    @staticmethod
    def forward(ctx: Any, rule: Rule, tile: int, columns: bool, a, c, *params):
        row = a.new_full((a.shape[0],), _NEG_INF)
        col = a.new_full((c.shape[0] if columns else 0,), _NEG_INF)
        for rows in tiles(a.shape[0], tile):
            for cols in tiles(c.shape[0], tile):
                x, kept = rule(a[rows], c[cols], rows, cols, *params)
                if kept is not None:
                    x = x.masked_fill_(~kept, _NEG_INF)
                row[rows] = torch.logaddexp(row[rows], x.logsumexp(1))
                if columns:
                    col[cols] = torch.logaddexp(col[cols], x.logsumexp(0))
        ctx.save_for_backward(a, c, row, col, *params)
        ctx.opts = (rule, tile, columns)
        return row, col

    @staticmethod
    def backward(ctx: Any, g_row: torch.Tensor, g_col: torch.Tensor):
        a, c, row, col, *params = ctx.saved_tensors
        rule, tile, columns = ctx.opts
        need = ctx.needs_input_grad[3:]
        # an anchor with nothing kept has LSE −inf: shifting by +inf makes its e^{X − row} exactly 0
        inf = torch.tensor(float("inf"), dtype=row.dtype, device=row.device)
        row = torch.where(torch.isfinite(row), row, inf)
        col = torch.where(torch.isfinite(col), col, inf)
        grads = _zeros(a, c, params, need)
        for rows in tiles(a.shape[0], tile):
            for cols in tiles(c.shape[0], tile):

                def weigh(x, kept, rows=rows, cols=cols):
                    g = (x - row[rows, None]).exp_().mul_(g_row[rows, None])
                    if columns:
                        g.add_((x - col[None, cols]).exp_().mul_(g_col[None, cols]))
                    return g if kept is None else g.masked_fill_(~kept, 0.0)

                got = _grads_through_tile(rule, a, c, params, rows, cols, need, weigh)
                _accumulate(grads, got, rows, cols, need)
        return None, None, None, *grads


def tiled_rule_lse(
    a: torch.Tensor,
    c: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    rule: Rule,
    *,
    columns: bool = False,
    tile_size: int = DEFAULT_TILE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row (and column) log-sum-exps of the logits ``rule`` builds tile by tile, exact gradients.

    ``rule(a[rows], c[cols], rows, cols, *params)`` returns the tile's finite logits ``X`` (a fresh
    tensor, overwritten in place; any differentiable function of its tensor arguments; per-sample
    fields ride in the closure) and a boolean ``kept`` mask (None: all pairs). Returns
    ``(row [N], col [M] or None)``, ``−inf`` where nothing is kept (zero gradient there).
    """
    check_tile(tile_size)
    row, col = _RuleLSE.apply(rule, tile_size, columns, a, c, *params)
    return row, (col if columns else None)


class _RuleSum(torch.autograd.Function):
    """(a, c, *params) → ``out_i = Σ_{j kept} X_ij`` over the listed tile pairs."""

    @staticmethod
    def forward(ctx: Any, rule: Rule, pairs: list, a, c, *params):
        out = a.new_zeros(a.shape[0])
        for rows, cols in pairs:
            x, kept = rule(a[rows], c[cols], rows, cols, *params)
            out[rows] += (x if kept is None else x.masked_fill_(~kept, 0.0)).sum(1)
        ctx.save_for_backward(a, c, *params)
        ctx.opts = (rule, pairs)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        a, c, *params = ctx.saved_tensors
        rule, pairs = ctx.opts
        need = ctx.needs_input_grad[2:]
        grads = _zeros(a, c, params, need)
        for rows, cols in pairs:

            def weigh(x, kept, rows=rows):
                w = g[rows, None].expand_as(x)
                return w if kept is None else w.masked_fill(~kept, 0.0)

            got = _grads_through_tile(rule, a, c, params, rows, cols, need, weigh)
            _accumulate(grads, got, rows, cols, need)
        return None, None, *grads


def tiled_rule_sum(
    a: torch.Tensor,
    c: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    rule: Rule,
    *,
    pairs: list[tuple[slice, slice]] | None = None,
    tile_size: int = DEFAULT_TILE,
) -> torch.Tensor:
    """``out_i = Σ_{j kept} X_ij`` ``[N]`` of the rule's tiles, exact gradients.

    ``pairs``: the (rows, cols) tile pairs to visit — all of them by default; a caller that knows
    where the kept pairs lie (e.g. positives of classes sorted together) lists only those."""
    check_tile(tile_size)
    if pairs is None:
        pairs = [(r, k) for r in tiles(a.shape[0], tile_size) for k in tiles(c.shape[0], tile_size)]
    return _RuleSum.apply(rule, pairs, a, c, *params)
