"""Tiled exact forms of the InfoNCE family, written with one masked, tiled log-sum-exp.

The primitive is :func:`~contrastkit.scale.tiled_family.tiled_masked_lse`. Each ``tiled_<name>``
takes the arguments of the dense ``<name>`` in :mod:`contrastkit.losses`
plus ``tile_size`` and returns the same value with the same gradients (float64: equal to
rounding), in memory O(N·d + tile²) instead of several N×N matrices. :data:`TILED_FAMILY` maps
each dense pure function to its tiled form; :class:`~contrastkit.scale.tiled.TiledLoss` (config key
``scale.tile_size``) dispatches on it, so the loss module itself never sees tiles.

==================  =========================================================================
dense loss          tiled form (z = [x; y], ids = row index, labels = sample index or class)
==================  =========================================================================
``ntxent_loss``     LSE over z (self excluded) − s·x_i·y_i
``supcon_loss``     L_out: LSE over z (self excluded) − (class-sum dot)/|P|; L_in: − LSE over P
``dcl_loss``        LSE over negatives only − s·x_i·y_i (DCLW: × detached weights)
``multi_positive``  rows and columns of s·x yᵀ in one pass; "in": − LSE over P; "out": − mean over P
``infonce_loss``    one direction: row LSE of s·x yᵀ − s·x_i·y_i
``am/aam_ntxent``   logaddexp(LSE over negatives, s·pos′) − s·pos′ (any margin function of c⁺)
``hn_nce_loss``     LSE_{j≠i}((1+β)L) − LSE_{j≠i}(βL) + log(N−1), merged with α e^{L_ii}
==================  =========================================================================

Not tiled: ``hn_nce_loss`` with ``detach_weights=True`` (its gradient is not that of a
log-sum-exp; an :class:`InputError` says so), ``supcon_loss``'s explicit mask forms (none exist:
labels only). Checks and errors are the dense losses' own. Single process only: under several
processes these losses run gathered (``GatherAllLoss``), untiled.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from contrastkit.core.checks import check_pair, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import as_float, maybe_normalize
from contrastkit.losses.dcl import dcl_loss, dclw_loss, dclw_weights
from contrastkit.losses.hard_negatives import hn_nce_loss
from contrastkit.losses.infonce import infonce_loss, ntxent_loss
from contrastkit.losses.margin import aam_ntxent_loss, additive_angular_margin, am_ntxent_loss
from contrastkit.losses.soft_targets import multi_positive_loss
from contrastkit.losses.supcon import _check_config as _supcon_config  # the dense checks, reused
from contrastkit.losses.supcon import _views as _supcon_views
from contrastkit.losses.supcon import reduce_anchors, supcon_loss
from contrastkit.scale.tiled_family import (
    DEFAULT_TILE,
    check_tile,
    positive_logit_sums,
    tiled_masked_lse,
    tiled_masked_lse_heads,
)

__all__ = [
    "TILED_FAMILY",
    "TILED_FIELDS",
    "tiled_aam_ntxent_loss",
    "tiled_am_ntxent_loss",
    "tiled_dcl_loss",
    "tiled_dclw_loss",
    "tiled_hn_nce_loss",
    "tiled_infonce_loss",
    "tiled_multi_positive_loss",
    "tiled_ntxent_loss",
    "tiled_supcon_loss",
]


def _scale(v: torch.Tensor | float, like: torch.Tensor, name: str, inverse: bool = False) -> torch.Tensor:
    """A positive scalar as a 0-d tensor of ``like``'s dtype (``1/v`` for a temperature)."""
    if isinstance(v, torch.Tensor):
        check_scalar_param(name, v)
        t = v.reshape(()).to(like.dtype)
    else:
        if not v > 0:
            raise ConfigError(f"{name} must be > 0, got {v}")
        t = torch.tensor(float(v), dtype=like.dtype, device=like.device)
    return 1.0 / t if inverse else t


def _single(n: int, allow_single: bool, who: str) -> None:
    if n == 1 and not allow_single:
        raise InputError(
            f"{who} got a batch of 1 pair: with no negatives the loss is identically 0; "
            "pass allow_single=True if that is intended"
        )


def _two_views(x: torch.Tensor, y: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, ...]:
    """SimCLR layout: ``z = [x; y]`` (normalised), row ids ``0…2N−1`` and sample ids ``i mod N``;
    the returned views are rows of ``z`` (no second copy of the embeddings)."""
    x = as_float(x)
    y = as_float(y).to(x.dtype)
    n = x.shape[0]
    z = _Normalized.apply(torch.cat([x, y])) if normalize else torch.cat([x, y])
    ids = torch.arange(2 * n, device=x.device)
    return z[:n], z[n:], z, ids, ids % n


class _Normalized(torch.autograd.Function):
    """Rows L2-normalised with ``F.normalize``'s values (eps 1e-12); only the result and the norms
    are kept, and backward writes ``(g − ẑ(ẑ·g))/‖·‖`` per row block straight into one gradient
    buffer (``g/eps`` where the norm was clamped, as ``F.normalize``) — none of the N×d
    temporaries of autograd's normalise backward."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        raw = torch.linalg.vector_norm(z, dim=1, keepdim=True)
        norms = raw.clamp_min(1e-12)
        out = z / norms
        ctx.save_for_backward(out, norms, raw < 1e-12)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        z, norms, clamped = ctx.saved_tensors
        gz = torch.empty_like(z)
        for i in range(0, z.shape[0], 4096):
            zb, gb = z[i : i + 4096], g[i : i + 4096]
            radial = torch.where(clamped[i : i + 4096], 0.0, (zb * gb).sum(1, keepdim=True))
            torch.div(gb - zb * radial, norms[i : i + 4096], out=gz[i : i + 4096])
        return gz


def tiled_ntxent_loss(
    x, y, temperature=0.1, *, reduction="mean", normalize=True, allow_single=False, tile_size=DEFAULT_TILE
) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.ntxent_loss` (value and gradients), in tiles."""
    check_tile(tile_size)
    check_pair(x, y)
    _single(x.shape[0], allow_single, "ntxent_loss")
    if reduction not in ("mean", "sum", "simclr"):
        raise ConfigError(f"reduction must be 'mean', 'sum' or 'simclr', got {reduction!r}")
    x, y, z, ids, _ = _two_views(x, y, normalize)
    s = _scale(temperature, z, "temperature", inverse=True)
    lse, _ = tiled_masked_lse(z, z, s, a_ids=ids, c_ids=ids, tile_size=tile_size)
    per_anchor = lse - s * (x * y).sum(1).repeat(2)
    if reduction == "sum":
        return per_anchor.sum()
    return per_anchor.mean() * (2.0 if reduction == "simclr" else 1.0)


def tiled_supcon_loss(
    x,
    y,
    temperature=0.1,
    *,
    labels=None,
    variant="out",
    base_temperature=None,
    zero_positive="ignore",
    relu_head=False,
    normalize=True,
    tile_size=DEFAULT_TILE,
) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.supcon_loss` (value and gradients), in tiles."""
    check_tile(tile_size)
    _supcon_config(temperature, base_temperature, variant, zero_positive)
    z, groups = _supcon_views(x, y, labels, relu_head, False)
    z = _Normalized.apply(z) if normalize else z  # one normalised copy, as in _two_views
    m = z.shape[0]
    s = _scale(temperature, z, "temperature", inverse=True)
    ids = torch.arange(m, device=z.device)
    fields = {"a_ids": ids, "c_ids": ids, "a_labels": groups, "c_labels": groups, "tile_size": tile_size}
    pos_sum, n_pos = positive_logit_sums(z, z, s, groups, groups, a_ids=ids, c_ids=ids)
    has_pos = n_pos > 0
    if variant == "out":
        lse, _ = tiled_masked_lse(z, z, s, **fields)
        per_anchor = lse - pos_sum / n_pos.clamp_min(1)
    else:  # LSE over all and over the positives from one pass of tiles
        (lse, lse_pos), _ = tiled_masked_lse_heads(z, z, s, [(1.0, "all"), (1.0, "positives")], **fields)
        lse_pos = torch.where(has_pos, lse_pos, 0.0)  # −inf where no positive: masked below
        per_anchor = lse - lse_pos + n_pos.clamp_min(1).log()
    return reduce_anchors(per_anchor, has_pos, temperature, base_temperature, zero_positive, labels is None)


def _decoupled(x, y, temperature, sigma, normalize, tile_size, who) -> torch.Tensor:
    check_tile(tile_size)
    check_pair(x, y)
    if x.shape[0] == 1:
        raise InputError(f"{who} needs N >= 2: the negatives are the other samples' views")
    x, y, z, ids, sample = _two_views(x, y, normalize)
    s = _scale(temperature, z, "temperature", inverse=True)
    lse_neg, _ = tiled_masked_lse(
        z, z, s, a_ids=ids, c_ids=ids, a_labels=sample, c_labels=sample, keep="negatives", tile_size=tile_size
    )
    pos_sim = (x * y).sum(1)
    pos = s * pos_sim
    if sigma is not None:
        pos = dclw_weights(pos_sim.detach(), sigma) * pos
    return (lse_neg - pos.repeat(2)).mean()


def tiled_dcl_loss(x, y, temperature=0.1, *, normalize=True, tile_size=DEFAULT_TILE) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.dcl_loss` (value and gradients), in tiles."""
    return _decoupled(x, y, temperature, None, normalize, tile_size, "dcl_loss")


def tiled_dclw_loss(
    x, y, temperature=0.1, sigma=0.5, *, normalize=True, tile_size=DEFAULT_TILE
) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.dclw_loss` (value and gradients), in tiles."""
    _scale(sigma, x, "sigma")
    return _decoupled(x, y, temperature, sigma, normalize, tile_size, "dclw_loss")


def _pair_labels(labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    if labels is None:
        return torch.arange(n, device=device)
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        raise InputError(f"labels must have shape [N] = [{n}]")
    if labels.is_floating_point() or labels.is_complex():
        raise InputError(f"labels must be an integer tensor of class ids, got dtype {labels.dtype}")
    return labels.to(device)


def tiled_multi_positive_loss(
    x, y, scale, *, labels=None, form="in", normalize=True, allow_single=False, tile_size=DEFAULT_TILE
) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.multi_positive_loss` (value and gradients), in tiles;
    rows and columns of ``s·x yᵀ`` come from one pass."""
    check_tile(tile_size)
    if form not in ("in", "out"):
        raise ConfigError(f"form must be 'in' or 'out', got {form!r}")
    check_pair(x, y)
    _single(x.shape[0], allow_single, "multi_positive_loss")
    s = _scale(scale, x, "scale")
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    lab = _pair_labels(labels, x.shape[0], x.device)
    fields = {"a_labels": lab, "c_labels": lab, "columns": True, "tile_size": tile_size}
    if form == "in":  # LSE over all and over the positives from one pass of tiles
        (lse_r, pos_r), (lse_c, pos_c) = tiled_masked_lse_heads(  # type: ignore[misc]
            x, y, s, [(1.0, "all"), (1.0, "positives")], **fields
        )
        rows, cols = lse_r - pos_r, lse_c - pos_c
    else:
        lse_r, lse_c = tiled_masked_lse(x, y, s, **fields)
        sum_r, n_pos = positive_logit_sums(x, y, s, lab, lab)
        sum_c, _ = positive_logit_sums(y, x, s, lab, lab)
        rows, cols = lse_r - sum_r / n_pos, lse_c - sum_c / n_pos  # type: ignore[operator]
    return 0.5 * (rows.mean() + cols.mean())


def tiled_infonce_loss(
    x, y, scale, *, symmetric=False, normalize=True, allow_single=False, tile_size=DEFAULT_TILE
) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.infonce_loss` (value and gradients), in tiles."""
    check_tile(tile_size)
    check_pair(x, y)
    _single(x.shape[0], allow_single, "infonce_loss")
    s = _scale(scale, x, "scale")
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    lse_r, lse_c = tiled_masked_lse(x, y, s, columns=symmetric, tile_size=tile_size)
    pos = s * (x * y).sum(1)
    loss = (lse_r - pos).mean()
    return 0.5 * (loss + (lse_c - pos).mean()) if symmetric else loss  # type: ignore[operator]


def _margin(x, y, scale, margin, angular, symmetric, normalize, allow_single, tile_size, who):
    check_tile(tile_size)
    check_pair(x, y)
    n = x.shape[0]
    _single(n, allow_single, who)
    if not (0 <= margin < math.pi):
        raise ConfigError(f"margin must lie in [0, π), got {margin}")
    if symmetric:
        x, y, rows, ids, sample = _two_views(x, y, normalize)
        cols, fields = rows, {"a_ids": ids, "c_ids": ids, "a_labels": sample, "c_labels": sample}
    else:
        x = maybe_normalize(x, normalize)
        rows, cols = x, maybe_normalize(y, normalize).to(x.dtype)
        y, lab = cols, torch.arange(n, device=x.device)
        fields = {"a_labels": lab, "c_labels": lab}
    s = _scale(scale, rows, "scale")
    c_pos = (x * y).sum(1)
    pos = additive_angular_margin(c_pos, margin) if angular else c_pos - margin
    pos = s * (pos.repeat(2) if symmetric else pos)
    # the one positive per row leaves the log-sum-exp and comes back with its margin applied
    lse_neg, _ = tiled_masked_lse(rows, cols, s, keep="negatives", tile_size=tile_size, **fields)
    return (torch.logaddexp(lse_neg, pos) - pos).mean()


def tiled_am_ntxent_loss(
    x, y, scale=5.0, margin=0.2, *, symmetric=True, normalize=True, allow_single=False, tile_size=DEFAULT_TILE
) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.am_ntxent_loss` (value and gradients), in tiles."""
    return _margin(
        x, y, scale, margin, False, symmetric, normalize, allow_single, tile_size, "am_ntxent_loss"
    )


def tiled_aam_ntxent_loss(
    x, y, scale=5.0, margin=0.2, *, symmetric=True, normalize=True, allow_single=False, tile_size=DEFAULT_TILE
) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.aam_ntxent_loss` (value and gradients), in tiles."""
    return _margin(
        x, y, scale, margin, True, symmetric, normalize, allow_single, tile_size, "aam_ntxent_loss"
    )


def _hn_direction(lse_w_l, lse_w, pos, n, alpha) -> torch.Tensor:
    lse_neg = lse_w_l + math.log(n - 1) - lse_w
    log_den = lse_neg if alpha == 0 else torch.logaddexp(math.log(alpha) + pos, lse_neg)
    return (log_den - pos).mean()


def tiled_hn_nce_loss(
    x,
    y,
    scale,
    *,
    alpha=1.0,
    beta=0.5,
    beta_t2i=None,
    detach_weights=False,
    normalize=True,
    tile_size=DEFAULT_TILE,
) -> torch.Tensor:
    """Exactly :func:`~contrastkit.losses.hn_nce_loss` (value and gradients), in tiles; not with
    ``detach_weights=True``. ``Σ_{j≠i} w_ij e^{L_ij} = (N−1)·e^{LSE((1+β)L) − LSE(βL)}``."""
    check_tile(tile_size)
    if detach_weights:
        raise InputError("tiled hn_nce_loss supports detach_weights=False only; unset scale.tile_size")
    check_pair(x, y)
    n = x.shape[0]
    if n < 2:
        raise InputError(f"hn_nce_loss needs a batch of N >= 2 pairs (in-batch negatives), got N={n}")
    if not alpha >= 0:
        raise ConfigError(f"alpha must be >= 0, got {alpha}")
    s = _scale(scale, x, "scale")
    x = maybe_normalize(x, normalize)
    y = maybe_normalize(y, normalize).to(x.dtype)
    ids = torch.arange(n, device=x.device)
    b2 = beta if beta_t2i is None else beta_t2i
    pos = s * (x * y).sum(1)

    def lse(b: float, a: torch.Tensor, c: torch.Tensor, both: bool):  # both scales, one pass
        heads = [(1.0 + b, "all"), (b, "all")]
        return tiled_masked_lse_heads(a, c, s, heads, a_ids=ids, c_ids=ids, columns=both, tile_size=tile_size)

    if b2 == beta:  # one pass serves both directions
        r, c = lse(beta, x, y, True)
        (wl_r, w_r), (wl_c, w_c) = r, c  # type: ignore[misc]
    else:
        wl_r, w_r = lse(beta, x, y, False)[0]
        wl_c, w_c = lse(b2, y, x, False)[0]
    return 0.5 * (_hn_direction(wl_r, w_r, pos, n, alpha) + _hn_direction(wl_c, w_c, pos, n, alpha))


TILED_FAMILY: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {
    ntxent_loss: tiled_ntxent_loss,
    supcon_loss: tiled_supcon_loss,
    dcl_loss: tiled_dcl_loss,
    dclw_loss: tiled_dclw_loss,
    multi_positive_loss: tiled_multi_positive_loss,
    infonce_loss: tiled_infonce_loss,
    am_ntxent_loss: tiled_am_ntxent_loss,
    aam_ntxent_loss: tiled_aam_ntxent_loss,
    hn_nce_loss: tiled_hn_nce_loss,
}
"""Dense pure function → its tiled form (merged into :data:`contrastkit.scale.tiled.TILED`)."""

TILED_FIELDS: dict[Callable[..., torch.Tensor], frozenset[str]] = {
    supcon_loss: frozenset({"labels"}),
    multi_positive_loss: frozenset({"labels"}),
}
"""Batch fields a tiled form takes (``labels [N]``: per sample, so tiles can rebuild the masks)."""
