"""M-MAXSIM — late-interaction (ColBERT) scores between token sets, exact, computed in tiles.

Papers: Khattab & Zaharia 2020, "ColBERT"; Santhanam et al. 2022, "ColBERTv2"; CLaMR (multimodal
late interaction over one bag of tokens per document). Scoring and masking as in
stanford-futuredata/ColBERT ``colbert/modeling/colbert.py``.

Score of a query token set ``Q`` (``n_q × d``) against a document token set ``D`` (``n_d × d``)
with masks ``m_q``, ``m_d``::

    MaxSim(Q, D) = Σ_{a: m_q[a]} max_{b: m_d[b]} Q_a · D_b

Tokens are compared as given: cosine when they are L2-normalised (the losses and the evaluation
normalise every token first). Padded document positions, ``doc_mask_mode``:

* ``"v2"`` (default, ColBERTv2): masked similarities are set to −9999 before the max, so a padding
  position never wins (exact for cosine similarities in [−1, 1]);
* ``"zero_vector"`` (ColBERT v1, for reproduction only): masked document vectors are zero, so a
  padding position scores 0 and wins the max whenever every real similarity is negative.

Masked query tokens contribute nothing (contrastkit pads captions to the batch's longest; ColBERT's
[MASK] query augmentation is not used).

Token-set convention: a token set travels through the model, trainer and evaluation as ONE tensor
``[N, T, d]`` whose padding rows are exactly zero; :func:`token_set` recovers ``(tokens, mask)``.
A ``[N, d]`` tensor is a set of one token per row (then MaxSim is the dot product).

Exactness and memory: :func:`maxsim` fills the ``[N_q, N_d]`` matrix tile by tile (``tile``
queries × ``tile`` documents, ``tile² · n_q · n_d`` similarities at a time) with a hand-written
backward that recomputes each tile's argmax: the gradient of a max is its argmax token's (ties: the
first index, any subgradient is valid). Beyond inputs and gradients it holds ``O(N_q·N_d)`` plus one
tile, never ``N_q·N_d·n_q·n_d``. Values equal the naive loop to float rounding (the token
similarities are one matrix product per tile, whose rounding may depend on the tile's shape).
Errors: a document or a query whose every position is masked (its score would be −9999·n_q or 0).

Related: :mod:`contrastkit.losses.late_interaction` (contrastive loss over these scores),
:mod:`contrastkit.evaluation.late_interaction` (retrieval and zero-shot with MaxSim).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch.autograd.function import once_differentiable

from contrastkit.core.checks import check_finite
from contrastkit.core.errors import InputError

__all__ = ["DOC_MASK_MODES", "FILL", "maxsim", "maxsim_pairs", "tile_for", "token_set"]

DocMaskMode = Literal["v2", "zero_vector"]
DOC_MASK_MODES = ("v2", "zero_vector")
FILL = -9999.0  # ColBERTv2's value for masked document similarities (below any cosine)
_TILE_ELEMENTS = 1 << 22  # similarities per tile when ``tile`` is not given (32 MiB in float64)


def token_set(x: torch.Tensor, name: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [N, T, d], mask [N, T])`` of a packed token set (padding rows exactly zero), or of
    ``[N, d]`` embeddings as one-token sets. A real token that is exactly zero reads as padding
    (it has cosine 0 with everything, so only the ``zero_vector`` mode could tell)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim not in (2, 3):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} must be a float tensor [N, d] or a token set [N, T, d], got {got}")
    if x.shape[0] == 0 or x.shape[-1] == 0 or (x.ndim == 3 and x.shape[1] == 0):
        raise InputError(f"{name} is empty: shape {tuple(x.shape)}")
    check_finite(name, x)
    if x.ndim == 2:
        return x[:, None, :], torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
    return x, (x != 0).any(-1)


def _check(q, d, q_mask, d_mask, mode) -> tuple[torch.Tensor, torch.Tensor]:
    if mode not in DOC_MASK_MODES:
        raise InputError(f"doc_mask_mode must be one of {list(DOC_MASK_MODES)}, got {mode!r}")
    for name, t in (("queries", q), ("documents", d)):
        if not isinstance(t, torch.Tensor) or t.ndim != 3 or not t.is_floating_point():
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"{name} must be a float tensor [N, n, d], got {got}")
        if 0 in t.shape:
            raise InputError(f"{name} is empty: shape {tuple(t.shape)}")
    if q.shape[-1] != d.shape[-1]:
        raise InputError(f"token dimension mismatch: queries d={q.shape[-1]}, documents d={d.shape[-1]}")
    if q.dtype != d.dtype:
        raise InputError(f"queries ({q.dtype}) and documents ({d.dtype}) must share a dtype")
    masks = []
    for name, t, m in (("query", q, q_mask), ("document", d, d_mask)):
        m = torch.ones(t.shape[:2], dtype=torch.bool, device=t.device) if m is None else m
        if m.shape != t.shape[:2] or m.dtype != torch.bool:
            raise InputError(f"{name} mask must be bool {list(t.shape[:2])}, got {m.dtype} {list(m.shape)}")
        empty = (~m.any(1)).nonzero().flatten()
        if empty.numel():
            raise InputError(
                f"{name} {int(empty[0])} has every position masked ({empty.numel()} such): "
                f"a {name} needs at least one token"
            )
        masks.append(m)
    return masks[0], masks[1]


def tile_for(n_q: int, n_d: int, tile: int | None = None) -> int:
    """Queries (and documents) per tile side: ``tile`` if given, else the largest square tile
    holding at most 2^22 token similarities (``tile² · n_q · n_d``)."""
    if tile is not None:
        if tile < 1:
            raise InputError(f"tile must be >= 1, got {tile}")
        return int(tile)
    return max(1, math.isqrt(_TILE_ELEMENTS // max(1, n_q * n_d)))


def _tile_sims(q: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Token similarities of a tile, ``[b_q, n_q, b_d, n_d]``, masked as ``mode`` says."""
    bq, nq, dim = q.shape
    bd, nd, _ = d.shape
    if mode == "zero_vector":  # v1: padding vectors are zero, their similarity 0 takes part in the max
        d = d * d_mask[..., None].to(d.dtype)
    sims = (q.reshape(bq * nq, dim) @ d.reshape(bd * nd, dim).T).view(bq, nq, bd, nd)
    if mode == "v2":
        sims = sims.masked_fill(~d_mask[None, None], FILL)
    return sims


class _MaxSim(torch.autograd.Function):
    """MaxSim matrix in tiles; backward recomputes each tile's argmax (no per-tile graph kept)."""

    @staticmethod
    def forward(ctx: Any, q, d, q_mask, d_mask, mode: str, tile: int) -> torch.Tensor:
        out = q.new_empty(q.shape[0], d.shape[0])
        qm = q_mask.to(q.dtype)
        for i in range(0, q.shape[0], tile):
            for j in range(0, d.shape[0], tile):
                sims = _tile_sims(q[i : i + tile], d[j : j + tile], d_mask[j : j + tile], mode)
                best = sims.amax(-1)  # [b_q, n_q, b_d]
                out[i : i + tile, j : j + tile] = (best * qm[i : i + tile, :, None]).sum(1)
        ctx.save_for_backward(q, d, q_mask, d_mask)
        ctx.mode, ctx.tile = mode, tile
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor):
        q, d, q_mask, d_mask = ctx.saved_tensors
        mode, tile = ctx.mode, ctx.tile
        need_q, need_d = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gq = torch.zeros_like(q) if need_q else None
        gd = torch.zeros_like(d) if need_d else None
        qm = q_mask.to(q.dtype)
        dm = d_mask.to(d.dtype)
        for i in range(0, q.shape[0], tile):
            qi = q[i : i + tile]
            for j in range(0, d.shape[0], tile):
                dj = d[j : j + tile]
                sims = _tile_sims(qi, dj, d_mask[j : j + tile], mode)
                arg = sims.argmax(-1, keepdim=True)  # [b_q, n_q, b_d, 1]
                # weight of token pair (a, b) in dS_ij: g_ij · m_q[a] · [b = argmax]
                w = grad[i : i + tile, None, j : j + tile] * qm[i : i + tile, :, None]
                onehot = torch.zeros_like(sims).scatter_(-1, arg, w[..., None])  # [b_q, n_q, b_d, n_d]
                if mode == "zero_vector":  # a padding vector is a constant zero: no gradient to d there
                    dj = dj * dm[j : j + tile, :, None]
                if need_q:
                    gq[i : i + tile] += torch.einsum("iajb,jbd->iad", onehot, dj)
                if need_d:
                    gdj = torch.einsum("iajb,iad->jbd", onehot, qi)
                    if mode == "zero_vector":
                        gdj = gdj * dm[j : j + tile, :, None]
                    gd[j : j + tile] += gdj
        return gq, gd, None, None, None, None


def maxsim(
    q: torch.Tensor,
    d: torch.Tensor,
    q_mask: torch.Tensor | None = None,
    d_mask: torch.Tensor | None = None,
    *,
    doc_mask_mode: DocMaskMode = "v2",
    tile: int | None = None,
) -> torch.Tensor:
    """``S[i, j] = MaxSim(q[i], d[j])`` for every query and document, ``[N_q, N_d]``, exact.

    Args:
        q: ``[N_q, n_q, dim]`` query tokens (normalise them first for cosine MaxSim).
        d: ``[N_d, n_d, dim]`` document tokens.
        q_mask: ``[N_q, n_q]`` bool, True for real query tokens (default: all real).
        d_mask: ``[N_d, n_d]`` bool, True for real document tokens (default: all real).
        doc_mask_mode: ``"v2"`` (−9999 before the max) or ``"zero_vector"`` (ColBERT v1).
        tile: queries/documents per tile side (default :func:`tile_for`'s 2^22-similarity tile).
    Returns:
        ``[N_q, N_d]`` scores, differentiable in ``q`` and ``d`` (argmax subgradient).
    """
    q_mask, d_mask = _check(q, d, q_mask, d_mask, doc_mask_mode)
    size = tile_for(q.shape[1], d.shape[1], tile)
    return _MaxSim.apply(q, d, q_mask, d_mask, doc_mask_mode, size)


def maxsim_pairs(
    q: torch.Tensor,
    d: torch.Tensor,
    q_mask: torch.Tensor | None = None,
    d_mask: torch.Tensor | None = None,
    *,
    doc_mask_mode: DocMaskMode = "v2",
) -> torch.Tensor:
    """``S[i, k] = MaxSim(q[i], d[i, k])``: each query against its own ``K`` documents
    (``d: [N, K, n_d, dim]``, ``d_mask: [N, K, n_d]``), e.g. hard negatives; ``[N, K]``. Plain
    autograd: it holds ``N·K·n_q·n_d`` similarities (K is small)."""
    if not isinstance(d, torch.Tensor) or d.ndim != 4 or d.shape[0] != q.shape[0]:
        got = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
        raise InputError(f"per-query documents must be [N={q.shape[0]}, K, n_d, dim], got {got}")
    n, k, nd, dim = d.shape
    flat_mask = None if d_mask is None else d_mask.reshape(n * k, nd)
    q_mask, flat_mask = _check(q, d.reshape(n * k, nd, dim), q_mask, flat_mask, doc_mask_mode)
    dm = flat_mask.view(n, k, nd)
    if doc_mask_mode == "zero_vector":
        d = d * dm[..., None].to(d.dtype)
    sims = torch.einsum("nad,nkbd->nkab", q, d)
    if doc_mask_mode == "v2":
        sims = sims.masked_fill(~dm[:, :, None, :], FILL)
    return (sims.amax(-1) * q_mask[:, None, :].to(sims.dtype)).sum(-1)
