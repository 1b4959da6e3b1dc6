"""Modalities beyond image and text, and samples that lack a modality.

A :class:`~contrastkit.data.pairs.PairSet` holds, besides images and captions, named **signals**:
float tensors ``[N, V, *shape]`` with one row per sample and ``V ≥ 1`` *variants* of it — spoken
captions in V voices (:mod:`contrastkit.data.speech`), a sensor recording (V = 1,
:mod:`contrastkit.data.series`), a vector per sample (the ``vectors`` source). A batch holds one
variant per row under the signal's name (``"audio": float [B, *shape]``): during training the
variant is drawn from ``(seed, step, global row)``, so resuming reproduces the batch; evaluation
always reads variant 0.

**Missing modalities.** ``PairSet.present[m]`` (bool ``[N]``) marks the samples that have modality
``m``; a modality without an entry is present everywhere. A batch then carries
``"present:<m>"`` (bool ``[B]``) beside ``m`` and the rows that lack it hold zeros (an image or a
signal) or the empty caption, so nothing of an absent input leaks into the model. Losses that
accept ``present`` (``pairwise_clip``, ``gram``, ``mmp``) use only the rows where the pair is present
(a pair loss gets the trainer's cut of the batch, :func:`contrastkit.losses.present.pair_sub_batch`)
(docs/modalities.md). :func:`with_missing` makes a fraction of a set's samples lack a modality, the
same samples for every epoch (a data set with holes, not dropout).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from contrastkit.core.errors import InputError

__all__ = [
    "PRESENT_PREFIX",
    "RESERVED",
    "check_modality_name",
    "check_presence",
    "check_signal",
    "present_key",
    "present_masks",
    "variant_rows",
    "with_missing",
]

PRESENT_PREFIX = "present:"  # batch key prefix of a modality's presence mask
# batch keys that are not modalities a signal may be named after
RESERVED = ("image", "text", "attributes", "labels", "targets", "text_neg", "text_pos")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def present_key(modality: str) -> str:
    """The batch key of ``modality``'s presence mask: ``"present:<modality>"``."""
    return PRESENT_PREFIX + modality


def present_masks(batch: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """``{modality: bool [B]}`` of every presence mask in ``batch`` (empty when all is present)."""
    return {
        k[len(PRESENT_PREFIX) :]: v
        for k, v in batch.items()
        if k.startswith(PRESENT_PREFIX) and isinstance(v, torch.Tensor)
    }


def check_modality_name(name: str, what: str = "signal") -> None:
    """A signal's name is a lower-case identifier that is not a reserved batch key (it becomes a
    batch key, a ``model.towers`` entry and an embedding key, where ``@`` and ``:`` mean views and
    momentum outputs)."""
    if not _NAME.match(name) or name in RESERVED[3:]:
        raise InputError(
            f"{what} name {name!r} must be a lower-case identifier ([a-z][a-z0-9_]*) and not one of "
            f"{list(RESERVED[3:])}"
        )


def check_signal(name: str, values: torch.Tensor, n: int, index: torch.Tensor | None = None) -> None:
    """``values`` is a finite float ``[n, V ≥ 1, …]`` tensor with at least one axis of its own (a
    ``[N, D]`` array would otherwise read as D variants of a number); missing rows hold zeros."""
    check_modality_name(name)
    if name in RESERVED:
        raise InputError(f"signal {name!r} would shadow the PairSet's own {name!r}")
    if index is not None:  # rows of a shared table (signal_index)
        if index.dtype != torch.int64 or tuple(index.shape) != (n,):
            raise InputError(
                f"signal_index[{name!r}] must be int64 [{n}], got {index.dtype} {tuple(index.shape)}"
            )
        if n and (int(index.min()) < 0 or int(index.max()) >= values.shape[0]):
            raise InputError(
                f"signal_index[{name!r}] points outside the {values.shape[0]} rows of the signal"
            )
        n = values.shape[0]
    if values.ndim < 3 or values.shape[0] != n or values.shape[1] < 1 or not values.is_floating_point():
        raise InputError(
            f"signal {name!r} must be a float [N={n}, V>=1, ...] tensor (V variants per sample, then the "
            f"sample's own axes: a vector per sample is [N, 1, D]), got {values.dtype} {tuple(values.shape)}"
        )
    bad = ~torch.isfinite(values.reshape(n, -1)).all(dim=1)
    if bad.any():
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise InputError(
            f"signal {name!r} has non-finite values in {int(bad.sum())} samples (first rows {rows}); "
            "mark absent samples with PairSet.present instead"
        )


def check_presence(present: Mapping[str, torch.Tensor], modalities: Sequence[str], n: int) -> None:
    """Every mask is a bool ``[n]`` tensor of a modality the set has."""
    for m, mask in present.items():
        if m not in modalities:
            raise InputError(f"present[{m!r}]: the set has no modality {m!r}; it has {list(modalities)}")
        if mask.dtype != torch.bool or tuple(mask.shape) != (n,):
            raise InputError(
                f"present[{m!r}] must be a bool [{n}] tensor, got {mask.dtype} {tuple(mask.shape)}"
            )


def variant_rows(values: torch.Tensor, idx: torch.Tensor, seed: tuple[int, int, int] | None) -> torch.Tensor:
    """Rows ``idx`` of a signal ``[N, V, …]``, one variant each: variant 0 without a ``seed``
    (evaluation), else the variant drawn for global row ``offset + r`` of batch ``step`` from
    ``default_rng([seed, step, 7919])`` — the same on every rank and after a resume."""
    v = values.shape[1]
    if seed is None or v == 1:
        return values[idx, 0]
    base, step, offset = seed
    picks = np.random.default_rng([base, step, 7919]).integers(0, v, size=offset + len(idx))[offset:]
    return values[idx, torch.from_numpy(picks)]


def with_missing(
    present: Mapping[str, torch.Tensor], fractions: Mapping[str, float], n: int, seed: int
) -> dict[str, torch.Tensor]:
    """``present`` with, for each ``modality: fraction``, ``round(fraction · n)`` more samples
    marked absent — drawn without replacement from ``default_rng([seed, k])`` (k = the modality's
    position in sorted order), independently per modality, so one sample may lack several."""
    out = dict(present)
    for k, m in enumerate(sorted(fractions)):
        f = fractions[m]
        if not 0 <= f < 1:
            raise InputError(f"missing fraction of {m!r} must be in [0, 1), got {f}")
        mask = out.get(m, torch.ones(n, dtype=torch.bool)).clone()
        drop = np.random.default_rng([seed, k]).choice(n, size=round(f * n), replace=False)
        mask[torch.from_numpy(drop)] = False
        out[m] = mask
    return out
