"""Tiled exact forms of XMC decoupled softmax, MoCo with a queue, LLaVE and Kernel-InfoNCE.

These losses need more per pair than :func:`~contrastkit.scale.tiled_family.tiled_masked_lse`
offers (a 0/1 relevance matrix, similarity filters, a detached additive term, a kernel of the
distance), so they are written with the *rule* primitives of :mod:`contrastkit.scale.tiled_rule`
(a function builds each tile's logits and kept-mask; backward recomputes the tile under
autograd). Each ``tiled_<name>`` takes the dense ``<name>``'s arguments plus ``tile_size`` and
returns the same value with the same gradients (float64: equal to rounding) in memory
O(N·d + tile²) — O(B·d + K·d + tile²) for MoCo's B queries against a K-row queue.

=====================  ====================================================================
dense loss             tiled form
=====================  ====================================================================
``xmc_decoupled``      n_i = LSE over i's negatives; ℓ_i = mean_{j∈P_i} softplus(n_i − L_ij) —
                       identity: O(N·d); ``labels``: sorted by class, only tiles with positives;
                       0/1 ``weights [N, N]``: read tile by tile (never converted)
``moco2_loss``         LSE over the queue tiles ⊕ the positive; ``max_similarity``: tile mask;
                       ``top_k``: a tiled pass for each query's k-th largest similarity, ties at it
                       weighted (k − #greater)/#equal (exact when tied entries are equal vectors)
``llave``              rows and columns of ``s·c + α·sg(c)·[i≠j]`` in one pass
``kernel_infonce``     γ = 2 on unit rows: NT-Xent at τ/2 / CLIP at 2/τ; otherwise the kernel
                       ``−‖a−b‖^γ/τ`` per tile with a hand-written backward
                       (:mod:`contrastkit.scale.tiled_kernel`); both layouts, both mixtures
=====================  ====================================================================

:data:`TILED_MORE` (pair losses) is merged into :data:`contrastkit.scale.tiled.TILED`, so
``TiledLoss`` / ``scale.tile_size`` dispatch on it; :data:`TILED_MULTI` maps ``moco2_loss`` (the
per-pair function of the ``MoCo2Loss`` module, a MultiLoss) to its tiled form, which the training
session swaps in when ``scale.tile_size`` is set. Checks and errors are the dense losses' own.
Single process only (under several processes these losses run gathered, untiled).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_pair
from contrastkit.core.errors import InputError
from contrastkit.losses.base import maybe_normalize
from contrastkit.losses.hard_negatives import llave_loss
from contrastkit.losses.kernel import _D2_FLOOR, _check_kernel_config, kernel_infonce_loss
from contrastkit.losses.momentum import moco2_loss, moco_inputs
from contrastkit.losses.soft_targets import xmc_decoupled_loss
from contrastkit.scale.tiled_family import DEFAULT_TILE, check_tile, tiled_masked_lse
from contrastkit.scale.tiled_kernel import tiled_kernel_lse
from contrastkit.scale.tiled_rule import tiled_rule_lse, tiled_rule_sum, tiles
from contrastkit.scale.tiled_zoo import _pair_labels, _scale, _single, tiled_ntxent_loss

__all__ = [
    "TILED_MORE",
    "TILED_MORE_FIELDS",
    "TILED_MULTI",
    "tiled_kernel_infonce_loss",
    "tiled_llave_loss",
    "tiled_moco2_loss",
    "tiled_xmc_decoupled_loss",
]

_NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------- XMC
def _relevance(w: torch.Tensor, n: int, tile: int, like: torch.Tensor):
    """Checks a 0/1 ``weights [N, N]`` tile by tile (no N×N copy): ``(#positives [N], tiles
    holding a positive)``; errors as the dense loss's."""
    if not isinstance(w, torch.Tensor) or w.shape != (n, n):
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise InputError(f"weights must have shape [N, N] = [{n}, {n}], got {shape}")
    w = w.detach().to(like.device)
    n_pos, busy = torch.zeros(n, dtype=torch.long, device=like.device), []
    for rows in tiles(n, tile):
        for cols in tiles(n, tile):
            t = w[rows, cols]
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise InputError("weights contains non-finite value(s) (NaN or inf)")
            if not bool(((t == 0) | (t == 1)).all()):
                raise InputError("weights must be a 0/1 (multi-hot) relevance matrix for xmc_decoupled_loss")
            k = (t != 0).sum(1)
            n_pos[rows] += k
            if bool(k.any()):
                busy.append((rows, cols))
    return w, n_pos, busy


def _class_tiles(lab: torch.Tensor, tile: int) -> list[tuple[slice, slice]]:
    """Tile pairs whose label ranges overlap (``lab`` sorted): the only ones holding positives."""
    vals, spans = lab.tolist(), tiles(lab.shape[0], tile)
    return [
        (r, c)
        for r in spans
        for c in spans
        if vals[r.start] <= vals[c.stop - 1] and vals[c.start] <= vals[r.stop - 1]
    ]


def tiled_xmc_decoupled_loss(
    x, y, scale, *, weights=None, labels=None, normalize=True, allow_single=False, tile_size=DEFAULT_TILE
) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.xmc_decoupled_loss` (value and gradients), in tiles.

    Positives: identity (neither field), equal ``labels [N]`` (the dense form's
    ``weights = [labels_i = labels_j]``) or a 0/1 ``weights [N, N]`` read tile by tile."""
    check_tile(tile_size)
    check_pair(x, y)
    _single(x.shape[0], allow_single, "xmc_decoupled_loss")
    if weights is not None and labels is not None:
        raise InputError("xmc_decoupled_loss: give the positives as labels or as weights, not both")
    s = _scale(scale, x, "scale")
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    n = x.shape[0]
    if weights is None and labels is None:  # one positive per row: the diagonal, O(N·d)
        ids = torch.arange(n, device=x.device)
        neg, _ = tiled_masked_lse(x, y, s, a_labels=ids, c_labels=ids, keep="negatives", tile_size=tile_size)
        return F.softplus(neg - s * (x * y).sum(1)).mean()
    if labels is not None:
        lab, order = torch.sort(_pair_labels(labels, n, x.device), stable=True)
        x, y = x[order], y[order]  # classes contiguous: positives only in tiles near the diagonal
        fields = {"a_labels": lab, "c_labels": lab, "keep": "negatives", "tile_size": tile_size}
        neg, _ = tiled_masked_lse(x, y, s, **fields)
        counts = torch.unique_consecutive(lab, return_counts=True)[1]
        n_pos = counts.repeat_interleave(counts)  # every query is its own class's positive

        def pos(rows, cols):
            return lab[rows, None] == lab[None, cols]

        busy = _class_tiles(lab, tile_size)
    else:
        w, n_pos, busy = _relevance(weights, n, tile_size, x)
        if bool((n_pos == 0).any()):
            raise InputError("every query (row of weights) needs at least one positive label")

        def pos(rows, cols):
            return w[rows, cols] != 0

        def negatives(a_t, c_t, rows, cols, s):
            return s * (a_t @ c_t.T), ~pos(rows, cols)

        neg, _ = tiled_rule_lse(x, y, (s,), negatives, tile_size=tile_size)

    def terms(a_t, c_t, rows, cols, s, neg):  # −log(e^L / (e^L + e^n)) = softplus(n − L)
        return F.softplus(neg[rows, None] - s * (a_t @ c_t.T)), pos(rows, cols)

    total = tiled_rule_sum(x, y, (s, neg), terms, pairs=busy, tile_size=tile_size)
    return (total / n_pos).mean()


# -------------------------------------------------------------------------------------------- MoCo
@torch.no_grad()
def _top_k_threshold(q, queue, k: int, max_sim: float | None, tile: int):
    """Per query: the k-th largest kept similarity (``−inf`` if fewer than k survive) and the log
    weight of the entries equal to it (``log((k − #greater)/#equal)``; 0 without excess ties)."""
    thr = q.new_empty(q.shape[0])
    for rows in tiles(q.shape[0], tile):
        best = q.new_empty(rows.stop - rows.start, 0)
        for cols in tiles(queue.shape[0], tile):
            d = q[rows] @ queue[cols].T
            if max_sim is not None:
                d = d.masked_fill_(d > max_sim, _NEG_INF)
            cand = torch.cat([best, d], 1)
            best = cand.topk(min(k, cand.shape[1]), dim=1).values
        thr[rows] = best[:, k - 1]
    greater, equal = torch.zeros_like(thr), torch.zeros_like(thr)
    for rows in tiles(q.shape[0], tile):
        for cols in tiles(queue.shape[0], tile):
            d = q[rows] @ queue[cols].T
            if max_sim is not None:
                d = d.masked_fill_(d > max_sim, _NEG_INF)
            greater[rows] += (d > thr[rows, None]).sum(1)
            equal[rows] += (d == thr[rows, None]).sum(1)
    log_w = torch.where(torch.isfinite(thr), ((k - greater) / equal.clamp_min(1)).log(), 0.0)
    return thr, log_w


def tiled_moco2_loss(
    q,
    k,
    queue,
    *,
    temperature=0.2,
    top_k=None,
    max_similarity=None,
    normalize=True,
    tile_size=DEFAULT_TILE,
) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.moco2_loss` (value and gradients), the queue in tiles.

    ``top_k`` costs two extra no-grad tile passes (threshold, tie count) and O(B·k) memory; every
    pass forms a tile's similarities with the same product, so the threshold compares equal bits."""
    check_tile(tile_size)
    q, k, queue = moco_inputs(q, k, queue, temperature, top_k, max_similarity, normalize)
    s = _scale(temperature, q, "temperature", inverse=True)
    pos = s * (q * k).sum(1)
    thr, log_w, ties = None, None, False
    if top_k is not None and top_k < queue.shape[0]:
        thr, log_w = _top_k_threshold(q.detach(), queue, int(top_k), max_similarity, tile_size)
        ties = bool((log_w != 0).any())

    def rule(a_t, c_t, rows, cols, s):
        dot = a_t @ c_t.T
        d, kept = dot.detach(), None
        if max_similarity is not None:
            kept = d <= max_similarity
        x = dot * s
        if thr is not None:
            at_least = d >= thr[rows, None]
            kept = at_least if kept is None else kept & at_least
            if ties:  # excess ties at the threshold share the places left (a constant: no gradient)
                x = x + torch.where(d == thr[rows, None], log_w[rows, None], 0.0)
        return x, kept

    neg, _ = tiled_rule_lse(q, queue, (s,), rule, tile_size=tile_size)
    return (torch.logaddexp(neg, pos) - pos).mean()


# ----------------------------------------------------------------------------------------- LLaVE
def _diagonal(rows: slice, cols: slice, device: torch.device) -> torch.Tensor | None:
    """The ``[i = j]`` mask of a tile (global indices), or None when the tile misses the diagonal."""
    if rows.start >= cols.stop or cols.start >= rows.stop:
        return None
    return (
        torch.arange(rows.start, rows.stop, device=device)[:, None]
        == torch.arange(cols.start, cols.stop, device=device)[None, :]
    )


def tiled_llave_loss(x, y, scale=50.0, alpha=0.5, *, normalize=True, tile_size=DEFAULT_TILE) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.llave_loss` (value and gradients), in tiles: rows and
    columns of ``L′ = s·c + α·sg(c)·[i≠j]`` from one pass (``L′_ii = s·c_ii``)."""
    check_tile(tile_size)
    check_pair(x, y)
    if x.shape[0] < 2:
        raise InputError(f"llave_loss needs a batch of N >= 2 pairs (in-batch negatives), got N={x.shape[0]}")
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    s = _scale(scale, x, "scale")
    alpha = float(alpha)

    def rule(a_t, c_t, rows, cols, s):
        dot = a_t @ c_t.T
        hard = alpha * dot.detach()  # the hardness weight is a constant (stop-gradient)
        eye = _diagonal(rows, cols, dot.device)
        return s * dot + (hard if eye is None else hard.masked_fill_(eye, 0.0)), None

    row, col = tiled_rule_lse(x, y, (s,), rule, columns=True, tile_size=tile_size)
    pos = s * (x * y).sum(1)
    return 0.5 * ((row - pos).mean() + (col - pos).mean())  # type: ignore[operator]


# ---------------------------------------------------------------------------------- Kernel-InfoNCE
def _kernel_term(x, y, gamma: float, tau: float, layout: str, unit: bool, tile: int) -> torch.Tensor:
    if gamma == 2.0 and unit:  # ‖a−b‖² = 2 − 2a·b: the constant cancels in every softmax
        if layout == "views":
            return tiled_ntxent_loss(x, y, tau / 2, normalize=False, allow_single=True, tile_size=tile)
        from contrastkit.scale.tiled import tiled_clip_loss  # tiled.py imports this module's map

        return tiled_clip_loss(x, y, 2.0 / tau, normalize=False, allow_single=True, tile_size=tile)
    d2 = (x * x).sum(1) + (y * y).sum(1) - 2 * (x * y).sum(1)  # ‖x_i − y_i‖², as kernel_logits
    pos = -d2.clamp(min=_D2_FLOOR).pow(gamma / 2) / tau
    if layout == "cross":
        row, col = tiled_kernel_lse(x, y, gamma, tau, columns=True, tile_size=tile)
        return 0.5 * ((row - pos).mean() + (col - pos).mean())  # type: ignore[operator]
    z = torch.cat([x, y])
    row, _ = tiled_kernel_lse(z, z, gamma, tau, drop_diagonal=True, tile_size=tile)
    return (row - pos.repeat(2)).mean()


def tiled_kernel_infonce_loss(
    x,
    y,
    *,
    temperature=0.1,
    gamma=2.0,
    layout="views",
    mixture=None,
    mix_weight=0.5,
    normalize=True,
    allow_single=False,
    tile_size=DEFAULT_TILE,
) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.kernel_infonce_loss` (value and gradients), in tiles;
    γ = 2 on unit rows runs as tiled NT-Xent (τ/2) or CLIP (s = 2/τ)."""
    check_tile(tile_size)
    _check_kernel_config(temperature, gamma, layout, mixture, mix_weight)
    check_pair(x, y)
    _single(x.shape[0], allow_single, "kernel_infonce_loss")
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)

    def term(a, b, g, unit):
        return _kernel_term(a, b, float(g), float(temperature), layout, unit, tile_size)

    if mixture is None:
        return term(x, y, gamma, normalize)
    if mixture == "sum":
        return mix_weight * term(x, y, gamma, normalize) + (1 - mix_weight) * term(x, y, 2.0, normalize)
    h = x.shape[1] // 2
    if h == 0:
        raise InputError("mixture='concat' splits the embedding in two halves: it needs d >= 2")
    # the halves of a unit row are not unit: the γ = 2 half takes the kernel path
    first = term(x[:, :h], y[:, :h], gamma, False)
    return mix_weight * first + (1 - mix_weight) * term(x[:, h:], y[:, h:], 2.0, False)


TILED_MORE: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {
    xmc_decoupled_loss: tiled_xmc_decoupled_loss,
    llave_loss: tiled_llave_loss,
    kernel_infonce_loss: tiled_kernel_infonce_loss,
}
"""Dense pure function → its tiled form (merged into :data:`contrastkit.scale.tiled.TILED`)."""

TILED_MORE_FIELDS: dict[Callable[..., torch.Tensor], frozenset[str]] = {
    xmc_decoupled_loss: frozenset({"weights", "labels"}),
}
"""Batch fields a tiled form takes (merged with :data:`~contrastkit.scale.tiled_zoo.TILED_FIELDS`)."""

TILED_MULTI: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {moco2_loss: tiled_moco2_loss}
"""Per-pair function of a MultiLoss (its ``fn`` attribute) → tiled form; the session swaps it in."""
