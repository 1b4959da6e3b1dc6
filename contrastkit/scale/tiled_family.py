"""S-INFCL for the InfoNCE family — one tiled, masked log-sum-exp with exact gradients.

Every loss of the family (NT-Xent, SupCon, DCL/DCLW, multi-positive, one-directional InfoNCE,
margin NT-Xent …) is built from per-anchor log-sum-exps over *some* of the candidates plus sums of
positive logits. For anchors ``a [N, d]``, candidates ``c [M, d]`` and a scale ``s`` the logits are::

    X_ij = s · (a_i·c_j − m · [pos_ij])            (m: additive margin on the positives, default 0)
    excluded_ij = (a_ids_i = c_ids_j)               (self-pairs; only when ids are given)
    pos_ij      = (a_labels_i = c_labels_j) ∧ ¬excluded_ij
    keep = "all":        every pair that is not excluded
           "negatives":  not excluded and not positive
           "positives":  positive pairs only
    row_i = LSE_{j kept} X_ij,   col_j = LSE_{i kept} X_ij   (``columns=True``)

:func:`tiled_masked_lse` computes ``row`` (and ``col``) tile by tile: the masks come from the
per-sample fields of the tile's rows and columns, so nothing N×M is ever stored. Forward merges
each tile's partial log-sum-exps (``logaddexp``, online softmax); backward recomputes every tile
once: ``G = keep ⊙ (e^{X − row} g_row + e^{X − col} g_col)``, ``da += s·G c``, ``dc += s·Gᵀ a``,
``ds += Σ G ⊙ (a·c − m·pos)``. Where the logits cannot overflow ``exp`` (the usual case) forward
takes one ``exp`` per tile for rows and columns together and no max-subtraction
(:class:`_MaskedLSE`). Saved for backward: a, c, s, the fields and the two vectors —
O(N·d). Memory O(N·d + tile²); 1 tile product forward + 3 backward.

An anchor with nothing kept (e.g. ``keep="positives"`` and no positive) gets ``−inf`` and a zero
gradient; the caller decides what such a row means. :func:`positive_logit_sums` gives
``Σ_{j: pos_ij} s·a_i·c_j`` and ``|{j: pos_ij}|`` without tiles at all: the sum over positives is
``s·a_i · (Σ of the candidates of i's class)``, class sums by ``index_add`` — O(N·d).

Shapes: ``a [N, d]``, ``c [M, d]`` same floating dtype; ids and labels ``[N]`` / ``[M]`` integer.
Any tile size ≥ 1 and any N, M work; float64 equals the dense masked form to rounding.
Related: :mod:`contrastkit.scale.tiled` (CLIP/SigLIP, the unmasked special case),
:mod:`contrastkit.scale.tiled_zoo` (the losses written with this primitive).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from contrastkit.core.errors import InputError

__all__ = [
    "DEFAULT_TILE",
    "KEEP",
    "check_tile",
    "positive_logit_sums",
    "tiled_masked_lse",
    "tiled_masked_lse_heads",
]

DEFAULT_TILE = 2048
KEEP = ("all", "negatives", "positives")
_NEG_INF = float("-inf")


def _tiles(n: int, tile: int) -> list[slice]:
    return [slice(i, min(i + tile, n)) for i in range(0, n, tile)]


def check_tile(tile_size: int) -> None:
    """``tile_size`` must be a positive integer (:class:`InputError` otherwise)."""
    if not isinstance(tile_size, int) or isinstance(tile_size, bool) or tile_size < 1:
        raise InputError(f"tile_size must be a positive integer, got {tile_size!r}")


def _tile_masks(
    f: tuple[torch.Tensor | None, ...], rows: slice, cols: slice, heads: tuple[tuple[float, str], ...]
) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
    """(kept mask of each head, positive mask) of one tile from the per-sample fields; None = all
    true / unused. Masks are built once per tile and shared by the heads that keep the same pairs."""
    a_ids, c_ids, a_lab, c_lab = f
    excl = None if a_ids is None else a_ids[rows, None] == c_ids[None, cols]
    pos = None if a_lab is None else a_lab[rows, None] == c_lab[None, cols]
    if pos is not None and excl is not None:
        pos = pos & ~excl
    built: dict[str, torch.Tensor | None] = {}
    for _, keep in heads:
        if keep in built:
            continue
        if keep == "positives":
            built[keep] = pos
        elif keep == "negatives":
            built[keep] = ~pos if excl is None else ~pos & ~excl  # type: ignore[operator]
        else:
            built[keep] = None if excl is None else ~excl
    return [built[keep] for _, keep in heads], pos


class _MaskedLSE(torch.autograd.Function):
    """(a, c, s) → (rows [K, N], cols [K, M]): masked log-sum-exps of K *heads* that share one
    dot-product tile — head k is ``X_k = (s·μ_k)·(a·c − m·pos)`` kept by its own rule — so a loss
    that needs several log-sum-exps (all and positives; two scales) pays the products once.

    Fast path (what runs unless the logits can overflow ``exp``): with ``b = |s|·max|μ|·(max‖a‖·
    max‖c‖ + |m|) ≥ |X|`` and ``b + log max(N, M)`` below the dtype's largest exponent, every kept
    term ``e^X`` is a normal number and no sum overflows, so one ``E_k = kept_k ⊙ e^{X_k}`` per
    tile serves rows and columns (a row sum of exactly 0 means nothing is kept: ``−inf``), and
    backward forms ``H = Σ_k μ_k E_k ⊙ (u_ki + v_kj)`` with ``u_k = g_row,k·e^{−row_k}``. Gradients
    accumulate inside the GEMMs (``addmm_``: 1 tile product forward, 3 backward, for any K); the
    scale's is read off them at the end. Otherwise each head's tile is merged with max-subtracted
    log-sum-exps (online softmax) and backward subtracts the LSEs before ``exp``.
    """

    @staticmethod
    def forward(
        ctx: Any, a, c, s, a_ids, c_ids, a_lab, c_lab, heads, margin: float, columns: bool, tile: int
    ):
        f = (a_ids, c_ids, a_lab, c_lab)
        mu = max(abs(m) for m, _ in heads)
        bound = float(s.abs() * mu * (a.norm(dim=1).max() * c.norm(dim=1).max() + abs(margin)))
        limit = 0.9 * math.log(torch.finfo(a.dtype).max) - math.log(max(a.shape[0], c.shape[0], 1))
        ctx.fast = bound < limit
        row, col = (_sums if ctx.fast else _merged_lse)(a, c, s, f, heads, margin, columns, tile)
        ctx.save_for_backward(a, c, s, a_ids, c_ids, a_lab, c_lab, row, col)
        ctx.opts = (heads, margin, columns, tile)
        ctx.same = a is c  # z against z (SimCLR layouts): one gradient buffer serves both sides
        return row, col

    @staticmethod
    def backward(ctx: Any, g_row: torch.Tensor, g_col: torch.Tensor):
        a, c, s, a_ids, c_ids, a_lab, c_lab, row, col = ctx.saved_tensors
        heads, margin, columns, tile = ctx.opts
        f = (a_ids, c_ids, a_lab, c_lab)
        fin_r, fin_c = torch.isfinite(row), torch.isfinite(col)
        if ctx.fast:  # an anchor with nothing kept has LSE −inf: its terms are all masked, factor 0
            u = torch.where(fin_r, g_row * torch.exp(-row), 0.0)
            v = torch.where(fin_c, g_col * torch.exp(-col), 0.0) if columns else None
        else:  # shifting by +inf makes those terms exactly 0
            inf = torch.tensor(float("inf"), dtype=row.dtype, device=row.device)
            row, col = torch.where(fin_r, row, inf), torch.where(fin_c, col, inf)
        live = [  # heads whose outputs reach the loss
            k for k in range(len(heads)) if bool(g_row[k].any()) or (columns and bool(g_col[k].any()))
        ]
        ga = torch.zeros_like(a)  # Σ_j H_ij c_j
        gc = ga if ctx.same else torch.zeros_like(c)  # Σ_i H_ij a_i (into ga when c is a)
        g_pos = a.new_zeros(())
        for rows in _tiles(a.shape[0], tile):
            for cols in _tiles(c.shape[0], tile):
                masks, pos = _tile_masks(f, rows, cols, heads)
                dot = _tile_dot(a[rows], c[cols], margin, pos)
                h = None
                for k in live:
                    x = dot * (s * heads[k][0]) if k != live[-1] else dot.mul_(s * heads[k][0])
                    if ctx.fast:
                        e = x.exp_()
                        g = (
                            e * u[k, rows, None]
                            if v is None
                            else (e * u[k, rows, None]).addcmul_(e, v[k, None, cols])
                        )
                    else:
                        g = (x - row[k, rows, None]).exp_().mul_(g_row[k, rows, None])
                        if columns:
                            g.add_((x - col[k, None, cols]).exp_().mul_(g_col[k, None, cols]))
                    if masks[k] is not None:
                        g.masked_fill_(~masks[k], 0.0)
                    mult = heads[k][0]
                    if h is None:
                        h = g if mult == 1.0 else g.mul_(mult)
                    else:
                        h.add_(g, alpha=mult)
                if h is None:
                    continue
                ga[rows].addmm_(h, c[cols])
                gc[cols].addmm_(h.T, a[rows])
                if margin and pos is not None:  # ∂X/∂(s·μ) = a·c − m·pos: the margin's share of ds
                    g_pos += h[pos].sum()
        # Σ_i a_i·(H c)_i; with one buffer, Σ_i a_i·(H a + Hᵀ a)_i counts it twice
        ds = ((a * ga).sum() * (0.5 if ctx.same else 1.0) - margin * g_pos).reshape(s.shape)
        if ctx.same:  # autograd adds the two inputs' gradients: the whole of it goes to one
            return ga.mul_(s), None, ds, None, None, None, None, None, None, None, None
        return ga.mul_(s), gc.mul_(s), ds, None, None, None, None, None, None, None, None


def _tile_dot(a: torch.Tensor, c: torch.Tensor, margin: float, pos: torch.Tensor | None) -> torch.Tensor:
    """``a cᵀ − m·pos`` of one tile (what every head's logits are a multiple of)."""
    x = torch.mm(a, c.T)
    if margin and pos is not None:
        x.sub_(pos.to(x.dtype), alpha=margin)
    return x


def _sums(a, c, s, f, heads, margin: float, columns: bool, tile: int):
    """Fast forward: ``log Σ_kept e^{X_k}`` over rows (and columns) from one ``exp`` per tile and head."""
    row = a.new_zeros(len(heads), a.shape[0])
    col = a.new_zeros(len(heads), c.shape[0] if columns else 0)
    for rows in _tiles(a.shape[0], tile):
        for cols in _tiles(c.shape[0], tile):
            masks, pos = _tile_masks(f, rows, cols, heads)
            dot = _tile_dot(a[rows], c[cols], margin, pos)
            for k, (mult, _) in enumerate(heads):
                e = (dot * (s * mult) if k < len(heads) - 1 else dot.mul_(s * mult)).exp_()
                if masks[k] is not None:
                    e.masked_fill_(~masks[k], 0.0)
                row[k, rows] += e.sum(1)
                if columns:
                    col[k, cols] += e.sum(0)
    return row.log_(), col.log_()  # log 0 = −inf: nothing kept


def _merged_lse(a, c, s, f, heads, margin: float, columns: bool, tile: int):
    """Exact forward for logits that could overflow ``exp``: per-tile max-subtracted LSEs merged
    with ``logaddexp`` (online softmax)."""
    row = a.new_full((len(heads), a.shape[0]), _NEG_INF)
    col = a.new_full((len(heads), c.shape[0] if columns else 0), _NEG_INF)
    for rows in _tiles(a.shape[0], tile):
        for cols in _tiles(c.shape[0], tile):
            masks, pos = _tile_masks(f, rows, cols, heads)
            dot = _tile_dot(a[rows], c[cols], margin, pos)
            for k, (mult, _) in enumerate(heads):
                x = dot * (s * mult)
                if masks[k] is not None:
                    x = x.masked_fill_(~masks[k], _NEG_INF)
                row[k, rows] = torch.logaddexp(row[k, rows], x.logsumexp(1))
                if columns:
                    col[k, cols] = torch.logaddexp(col[k, cols], x.logsumexp(0))
    return row, col


def _field(name: str, t: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor | None:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor) or t.shape != (n,):
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputError(f"{name} must have shape [{n}], got {shape}")
    if t.is_floating_point() or t.is_complex():
        raise InputError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    return t.to(like.device)


def _pairs(name: str, a_t, c_t, a: torch.Tensor, c: torch.Tensor):
    if (a_t is None) != (c_t is None):
        raise InputError(f"give both a_{name} and c_{name}, or neither")
    return _field(f"a_{name}", a_t, a.shape[0], a), _field(f"c_{name}", c_t, c.shape[0], c)


def tiled_masked_lse(
    a: torch.Tensor,
    c: torch.Tensor,
    scale: torch.Tensor,
    *,
    a_ids: torch.Tensor | None = None,
    c_ids: torch.Tensor | None = None,
    a_labels: torch.Tensor | None = None,
    c_labels: torch.Tensor | None = None,
    keep: str = "all",
    margin: float = 0.0,
    columns: bool = False,
    tile_size: int = DEFAULT_TILE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masked row (and column) log-sum-exps of ``s·(a cᵀ − m·pos)`` in tiles, exact gradients.

    Args:
        a: ``[N, d]`` anchors.
        c: ``[M, d]`` candidates (same dtype).
        scale: 0-d ``s``.
        a_ids: ``[N]`` ids; an anchor and a candidate with equal ids are excluded (self-pairs).
        c_ids: ``[M]`` ids (given together with ``a_ids``).
        a_labels: ``[N]`` labels; equal labels (not excluded) are positives.
        c_labels: ``[M]`` labels (given together with ``a_labels``).
        keep: ``"all"``, ``"negatives"`` or ``"positives"`` (the last two need labels).
        margin: ``m`` subtracted from the positives' similarity before scaling.
        columns: also return the column log-sum-exps (one pass for both directions).
        tile_size: rows/columns per tile.
    Returns:
        ``(row [N], col [M] or None)``; ``−inf`` where nothing is kept.
    """
    rows, cols = tiled_masked_lse_heads(
        a,
        c,
        scale,
        [(1.0, keep)],
        a_ids=a_ids,
        c_ids=c_ids,
        a_labels=a_labels,
        c_labels=c_labels,
        margin=margin,
        columns=columns,
        tile_size=tile_size,
    )
    return rows[0], (None if cols is None else cols[0])


def tiled_masked_lse_heads(
    a: torch.Tensor,
    c: torch.Tensor,
    scale: torch.Tensor,
    heads: list[tuple[float, str]],
    *,
    a_ids: torch.Tensor | None = None,
    c_ids: torch.Tensor | None = None,
    a_labels: torch.Tensor | None = None,
    c_labels: torch.Tensor | None = None,
    margin: float = 0.0,
    columns: bool = False,
    tile_size: int = DEFAULT_TILE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Several masked log-sum-exps over one pass of tiles: head ``k = (μ_k, keep_k)`` is
    :func:`tiled_masked_lse` of ``(s·μ_k)·(a cᵀ − m·pos)`` kept by ``keep_k`` — e.g. LSE over all
    and over positives (SupCon L_in, multi-positive), or two scales (HN-NCE). The tile products
    are shared: 1 forward and 3 backward per tile for any number of heads.

    Returns ``(rows [K, N], cols [K, M] or None)``; other arguments as :func:`tiled_masked_lse`.
    """
    check_tile(tile_size)
    if not heads:
        raise InputError("heads must name at least one (multiplier, keep) pair")
    for mult, keep in heads:
        if keep not in KEEP:
            raise InputError(f"keep must be one of {list(KEEP)}, got {keep!r}")
        if not math.isfinite(float(mult)):
            raise InputError(f"head multipliers must be finite, got {mult!r}")
    if a.dtype != c.dtype or a.ndim != 2 or c.ndim != 2 or a.shape[1] != c.shape[1]:
        raise InputError(
            f"a and c must be [N, d] and [M, d] of one dtype, got {tuple(a.shape)}, {tuple(c.shape)}"
        )
    a_ids, c_ids = _pairs("ids", a_ids, c_ids, a, c)
    a_labels, c_labels = _pairs("labels", a_labels, c_labels, a, c)
    bad = [keep for _, keep in heads if keep != "all"]
    if bad and a_labels is None:
        raise InputError(f"keep={bad[0]!r} needs a_labels and c_labels (which pairs are positive)")
    s = scale.reshape(()).to(a.dtype)
    spec = tuple((float(m), k) for m, k in heads)
    row, col = _MaskedLSE.apply(
        a, c, s, a_ids, c_ids, a_labels, c_labels, spec, float(margin), columns, tile_size
    )
    return row, (col if columns else None)


def positive_logit_sums(
    a: torch.Tensor,
    c: torch.Tensor,
    scale: torch.Tensor,
    a_labels: torch.Tensor,
    c_labels: torch.Tensor,
    *,
    a_ids: torch.Tensor | None = None,
    c_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_{j: pos_ij} s·a_i·c_j [N], |{j: pos_ij}| [N])`` with ``pos`` as in :func:`tiled_masked_lse`.

    No tiles: the candidates are summed per class (``index_add``) and each anchor takes one dot
    product with its class sum; the excluded self-pair (``c_ids`` must then be distinct) is
    subtracted. Plain autograd, O(N·d) memory.
    """
    a_labels, c_labels = _pairs("labels", a_labels, c_labels, a, c)
    a_ids, c_ids = _pairs("ids", a_ids, c_ids, a, c)
    classes, inv = torch.unique(torch.cat([a_labels, c_labels]), return_inverse=True)
    inv_a, inv_c = inv[: a.shape[0]], inv[a.shape[0] :]
    sums = c.new_zeros(classes.shape[0], c.shape[1]).index_add(0, inv_c, c)
    counts = torch.bincount(inv_c, minlength=classes.shape[0])
    dots, n_pos = _RowDots.apply(a, sums, inv_a), counts[inv_a]
    if a_ids is not None:
        order = torch.argsort(c_ids)
        sorted_ids = c_ids[order]
        if bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
            raise InputError("positive_logit_sums needs distinct c_ids")
        at = torch.searchsorted(sorted_ids, a_ids).clamp_max(c.shape[0] - 1)
        j = order[at]
        self_pos = (c_ids[j] == a_ids) & (c_labels[j] == a_labels)  # the self-pair was counted
        dots = dots - self_pos.to(c.dtype) * _RowDots.apply(a, c, j)
        n_pos = n_pos - self_pos.long()
    return scale.reshape(()).to(a.dtype) * dots, n_pos


class _RowDots(torch.autograd.Function):
    """``(a [N, d], table [K, d], idx [N]) → a_i·table[idx_i]`` in row blocks: the gathered
    ``table[idx]`` (N×d) is never stored, only built block by block in forward and backward."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        out = a.new_empty(a.shape[0])
        for rows in _tiles(a.shape[0], _ROW_BLOCK):
            out[rows] = (a[rows] * table[idx[rows]]).sum(1)
        ctx.save_for_backward(a, table, idx)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        a, table, idx = ctx.saved_tensors
        ga = torch.empty_like(a) if ctx.needs_input_grad[0] else None
        gt = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        for rows in _tiles(a.shape[0], _ROW_BLOCK):
            if ga is not None:
                torch.mul(table[idx[rows]], g[rows, None], out=ga[rows])
            if gt is not None:
                gt.index_add_(0, idx[rows], a[rows] * g[rows, None])
        return ga, gt, None


_ROW_BLOCK = 4096
