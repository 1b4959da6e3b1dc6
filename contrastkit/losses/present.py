"""Missing modalities in a batch: the ``present`` masks and the row selection the losses share.

Contract (docs/modalities.md): a batch may carry, for a modality m that can be missing, a bool
tensor ``present[m]`` of shape ``[N]`` (True = row i has modality m; a missing row holds zeros in
the modality's input and the model still embeds it). Losses that accept the batch field ``present``
receive ``{modality: bool [N]}``; an absent key means every row has that modality.

* :func:`present_masks` — the batch field as masks aligned with a loss's modality keys (a key that
  names no embedding is an error: a typo would otherwise count missing rows as present).
* :func:`check_present` — validates masks (bool, ``[N]``) given to a pure function.
* :func:`present_rows` — the indices of the rows where every listed modality is present, so a
  masked loss is computed on exactly that sub-batch (bit-identical to calling it on the sub-batch).
* :func:`graph_zero` — the value of a loss with no usable rows: 0, connected to every input so
  each gets a zero gradient rather than none (optimizers and DDP see every parameter used).

Used by ``pairwise_clip`` / ``gram`` (:mod:`contrastkit.losses.multimodal`) and ``mmp``
(:mod:`contrastkit.losses.mmp`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from contrastkit.core.errors import InputError

__all__ = ["check_present", "graph_zero", "pair_sub_batch", "present_masks", "present_rows"]


def check_present(
    present: Sequence[torch.Tensor | None] | None, mods: list[torch.Tensor]
) -> list[torch.Tensor | None]:
    """``present`` as one bool ``[N]`` mask (or None = all present) per modality, validated."""
    if present is None:
        return [None] * len(mods)
    masks = list(present)
    if len(masks) != len(mods):
        raise InputError(f"present has {len(masks)} masks for {len(mods)} modalities")
    n = mods[0].shape[0]
    for m, mask in enumerate(masks):
        if mask is not None and (
            not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (n,)
        ):
            got = (
                f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            )
            raise InputError(f"present mask of modality {m} must be a bool [N={n}] tensor, got {got}")
    return [None if mask is None else mask.to(mods[0].device) for mask in masks]


def present_rows(masks: list[torch.Tensor | None], idxs: Sequence[int]) -> torch.Tensor | None:
    """Indices of the rows where every modality in ``idxs`` is present; None when none is masked."""
    given = [masks[i] for i in idxs if masks[i] is not None]
    if not given:
        return None
    both = given[0]
    for mask in given[1:]:
        both = both & mask
    return both.nonzero().squeeze(1)


def graph_zero(*tensors: Any) -> torch.Tensor:
    """A 0 connected to every tensor input (empty-slice sums): zero gradients, not missing ones."""
    ts = [t for t in tensors if isinstance(t, torch.Tensor)]
    dtype = torch.promote_types(ts[0].dtype, torch.float32)  # as the losses: half → float32
    return torch.stack([t.reshape(-1)[:0].sum().to(dtype) for t in ts]).sum()


def present_masks(
    present: Mapping[str, torch.Tensor] | None, keys: Sequence[str], emb: Mapping[str, torch.Tensor], who: str
) -> list[torch.Tensor | None] | None:
    """The batch field ``present = {modality: bool [N]}`` as masks aligned with ``keys`` (an absent
    key: all present). A key that names no embedding of the batch is an error (a typo would
    otherwise silently count missing rows as present)."""
    if present is None:
        return None
    if not isinstance(present, Mapping):
        raise InputError(
            f"{who}: present must be a mapping {{modality: bool [N]}}, got {type(present).__name__}"
        )
    unknown = sorted(k for k in present if k not in emb)
    if unknown:
        raise InputError(
            f"{who}: present names {unknown}, which are not embeddings of the batch {sorted(emb)}"
        )
    return [present.get(k) for k in keys]


def pair_sub_batch(
    a: torch.Tensor,
    b: torch.Tensor,
    aux: Mapping[str, Any],
    masks: Sequence[torch.Tensor | None],
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], int]:
    """A pair loss's inputs cut to the rows where both of its modalities are present (``masks``:
    theirs, None = all present): ``(a, b, aux, n_rows)``, every per-row ``aux`` tensor (leading
    dimension N, e.g. ``labels``) cut the same way, so the loss on the result equals the loss of
    the sub-batch. A ``[N, N]`` input (pair weights) cannot follow the rows: an error."""
    n = len(a)
    for k, v in aux.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 2 and v.shape[0] == v.shape[1] == n:
            raise InputError(f"loss input {k!r} is a [N, N] matrix: it cannot follow missing-modality rows")
    rows = present_rows(check_present(masks, [a, b]), (0, 1))
    if rows is None:
        return a, b, dict(aux), n
    cut = {
        k: v[rows.to(v.device)] if isinstance(v, torch.Tensor) and v.ndim and len(v) == n else v
        for k, v in aux.items()
    }
    return a[rows], b[rows], cut, len(rows)
