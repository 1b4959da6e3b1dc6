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
``ds += Σ G ⊙ (a·c − m·pos)``. Saved for backward: a, c, s, the fields and the two vectors —
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

from typing import Any

import torch

from contrastkit.core.errors import InputError

__all__ = ["DEFAULT_TILE", "KEEP", "check_tile", "positive_logit_sums", "tiled_masked_lse"]

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
    f: tuple[torch.Tensor | None, ...], rows: slice, cols: slice, keep: str
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(kept, positive) boolean masks of one tile from the per-sample fields; None = all true/unused."""
    a_ids, c_ids, a_lab, c_lab = f
    excl = None if a_ids is None else a_ids[rows, None] == c_ids[None, cols]
    pos = None if a_lab is None else a_lab[rows, None] == c_lab[None, cols]
    if pos is not None and excl is not None:
        pos = pos & ~excl
    if keep == "positives":
        return pos, pos
    if keep == "negatives":
        kept = ~pos if excl is None else ~pos & ~excl  # type: ignore[operator]
        return kept, pos
    return (None if excl is None else ~excl), pos


def _logits(
    a: torch.Tensor, c: torch.Tensor, s: torch.Tensor, margin: float, pos: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dot, X) of one tile: ``dot = a cᵀ − m·pos`` (what X is linear in s through) and ``X = s·dot``."""
    dot = a @ c.T
    if margin and pos is not None:
        dot = dot - margin * pos.to(dot.dtype)
    return dot, dot * s


class _MaskedLSE(torch.autograd.Function):
    """(a, c, s) → (row, col) masked log-sum-exps; the fields and options ride along ungraded."""

    @staticmethod
    def forward(
        ctx: Any, a, c, s, a_ids, c_ids, a_lab, c_lab, keep: str, margin: float, columns: bool, tile: int
    ):
        f = (a_ids, c_ids, a_lab, c_lab)
        row = a.new_full((a.shape[0],), _NEG_INF)
        col = a.new_full((c.shape[0] if columns else 0,), _NEG_INF)
        for rows in _tiles(a.shape[0], tile):
            for cols in _tiles(c.shape[0], tile):
                kept, pos = _tile_masks(f, rows, cols, keep)
                x = _logits(a[rows], c[cols], s, margin, pos)[1]
                if kept is not None:
                    x = x.masked_fill_(~kept, _NEG_INF)
                row[rows] = torch.logaddexp(row[rows], x.logsumexp(1))
                if columns:
                    col[cols] = torch.logaddexp(col[cols], x.logsumexp(0))
        ctx.save_for_backward(a, c, s, a_ids, c_ids, a_lab, c_lab, row, col)
        ctx.opts = (keep, margin, columns, tile)
        return row, col

    @staticmethod
    def backward(ctx: Any, g_row: torch.Tensor, g_col: torch.Tensor):
        a, c, s, a_ids, c_ids, a_lab, c_lab, row, col = ctx.saved_tensors
        keep, margin, columns, tile = ctx.opts
        f = (a_ids, c_ids, a_lab, c_lab)
        # an anchor with nothing kept has LSE −inf: shifting by +inf makes its e^{X − row} exactly 0
        inf = torch.tensor(float("inf"), dtype=row.dtype, device=row.device)
        row = torch.where(torch.isfinite(row), row, inf)
        col = torch.where(torch.isfinite(col), col, inf)
        da, dc, ds = torch.zeros_like(a), torch.zeros_like(c), torch.zeros_like(s)
        for rows in _tiles(a.shape[0], tile):
            for cols in _tiles(c.shape[0], tile):
                kept, pos = _tile_masks(f, rows, cols, keep)
                dot, x = _logits(a[rows], c[cols], s, margin, pos)
                g = (x - row[rows, None]).exp_().mul_(g_row[rows, None])
                if columns:
                    g.add_((x - col[None, cols]).exp_().mul_(g_col[None, cols]))
                if kept is not None:
                    g.masked_fill_(~kept, 0.0)
                da[rows] += s * (g @ c[cols])
                dc[cols] += s * (g.T @ a[rows])
                ds += (g * dot).sum()
        return da, dc, ds, None, None, None, None, None, None, None, None


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
    check_tile(tile_size)
    if keep not in KEEP:
        raise InputError(f"keep must be one of {list(KEEP)}, got {keep!r}")
    if a.dtype != c.dtype or a.ndim != 2 or c.ndim != 2 or a.shape[1] != c.shape[1]:
        raise InputError(
            f"a and c must be [N, d] and [M, d] of one dtype, got {tuple(a.shape)}, {tuple(c.shape)}"
        )
    a_ids, c_ids = _pairs("ids", a_ids, c_ids, a, c)
    a_labels, c_labels = _pairs("labels", a_labels, c_labels, a, c)
    if keep != "all" and a_labels is None:
        raise InputError(f"keep={keep!r} needs a_labels and c_labels (which pairs are positive)")
    s = scale.reshape(()).to(a.dtype)
    row, col = _MaskedLSE.apply(
        a, c, s, a_ids, c_ids, a_labels, c_labels, keep, float(margin), columns, tile_size
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
    pos_vec, n_pos = sums[inv_a], counts[inv_a]
    if a_ids is not None:
        order = torch.argsort(c_ids)
        sorted_ids = c_ids[order]
        if bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
            raise InputError("positive_logit_sums needs distinct c_ids")
        at = torch.searchsorted(sorted_ids, a_ids).clamp_max(c.shape[0] - 1)
        j = order[at]
        self_pos = (c_ids[j] == a_ids) & (c_labels[j] == a_labels)  # the self-pair was counted
        pos_vec = pos_vec - self_pos[:, None].to(c.dtype) * c[j]
        n_pos = n_pos - self_pos.long()
    return scale.reshape(()).to(a.dtype) * (a * pos_vec).sum(1), n_pos
