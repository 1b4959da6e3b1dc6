"""Long captions (DreamLIP): split a caption into sub-captions, train on M of them per image.

Zheng et al. 2024 (ECCV), "DreamLIP: Language-Image Pre-training with Long Captions" (spec
D-DREAMLIP, data side read in the reference ``training/data.py``; the loss side here is the
library's multi-positive InfoNCE, not the reference's circle loss).

**Split** (:func:`split_caption`): the caption is cut at every newline, every ``</s>`` and every
full stop (regex ``\\n|</s>|[.]``); pieces are stripped and empty ones dropped:
``"A dog. A cat.\\nGrass</s>sky"`` → ``["A dog", "A cat", "Grass", "sky"]``. With ``merge = m > 1``
an item is ``". ".join`` of ``m`` consecutive pieces (windows starting at ``0 … n−m``).

**Sample** (:func:`sample_sub_captions`), for every training row, every step: the pool has the
``p`` items of the row's caption (``p − 1`` with ``exclude_last``, as the reference, which never
draws the last sentence). ``p ≥ K``: K distinct items; ``1 ≤ p < K``: K draws *with replacement*
(items repeat: the spec's rule); ``p = 0`` (a caption without any full sentence, or one sentence
with ``exclude_last``): the K slots hold the whole caption, counted in the batch's
``_skips`` as ``caption without sub-captions`` (not a skip: the row is used). Output columns:
``[whole caption] + K items`` with ``full`` (the reference), else the K items: ``M = K + full``.
Row ``i`` of a batch whose seed is ``(a, b, c)`` draws from ``default_rng([a, b, c + i, 77])``;
for indexed sources that seed is ``(train seed, step, global row offset)``, so a row's draw
depends on ``(seed, step, global row)`` only: resume is exact and any rank split draws the same.

**Batch keys**: ``text`` = column 0 ``[B, L]`` (what every pair loss sees) and :data:`LONG_KEY`
``text_pos`` = the other ``M − 1`` columns as token ids ``[B, M−1, L]`` (absent when M = 1).

**Owners** (:func:`owner_rows`): the multi-positive labels only have to tell which image owns a
caption inside the GLOBAL batch, so they are each row's position in it, ``rank·b + i`` for row
``i`` of the ``b`` rows of process ``rank`` — the order in which the cross-rank loss gathers the
processes' rows (all processes hold ``b`` rows). They never come from the data source, so they are
distinct across processes for every source (``webdataset`` streams included, whose batch seeds say
nothing about the other processes) and the loss on ``D`` processes equals the one-process loss on
the gathered batch.

**Loss** (:func:`long_caption_loss`), image ``x_i`` and text columns ``y_{i,c}``, ``c < M``:

* a loss that takes ``labels`` (``multi_positive``): image ``i`` against all ``B·M`` texts with
  positives ``P(i) = {(i, c)}``, ``L = s x yᵀ``,
  ``ℓ_i = −log(Σ_c e^{L_{i,(i,c)}} / Σ_{j,c} e^{L_{i,(j,c)}})`` and for each text
  ``ℓ_{(j,c)} = −log(e^{L_{j,(j,c)}} / Σ_i e^{L_{i,(j,c)}})``; loss = ½(mean_i ℓ_i + mean_{j,c} ℓ_{(j,c)}).
  Computed as ``multi_positive(x repeated M times, y flattened, labels = owners repeated M times)``,
  which equals the formula exactly for ``form="in"`` (the repeated image rows are identical and
  their copies cancel in each text's softmax); ``form="out"`` adds the constant ``log M`` to the
  text term.
* any other pair loss: DreamLIP's column-wise form, ``(1/M) Σ_c loss(x, y_{·,c})`` (each column's
  negatives are the other images' captions of that column).

Defaults (``data.long_captions``): ``k = 6``, ``full = true``, ``exclude_last = false``,
``merge = 1`` (the reference's ``num_text = 6``, ``merged_num = 1``). Not with
``data.text_negatives``, ``data.text_augment``, a mixup sampler, ``scale.chunk_size`` or a
:class:`~contrastkit.losses.base.MultiLoss` (``check_long_caption_run``).
Deviation: the pool is the split of the caption the sampler drew for the row (a source with one
long caption per image: all of its sentences), not the concatenation of several caption fields.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.skips import SKIPS_KEY

__all__ = [
    "FILLED",
    "LONG_KEY",
    "LongCaptionConfig",
    "add_sub_captions",
    "check_long_caption_data",
    "check_long_caption_run",
    "draw_indices",
    "encode_positives",
    "long_caption_loss",
    "owner_rows",
    "sample_sub_captions",
    "split_caption",
    "tokenize_nested",
]

LONG_KEY = "text_pos"  # token ids [B, M-1, L] of each row's other positive captions
FILLED = "caption without sub-captions"  # _skips reason (not a skip): slots filled with the caption
_SPLIT = re.compile(r"\n|</s>|[.]")
_SALT = 77  # DreamLIP's seed number in the paper list: a stream apart from other per-row draws


@dataclass(frozen=True)
class LongCaptionConfig:
    """``data.long_captions``: ``k`` sub-captions per image and step (≥ 1); ``full``: also the
    whole caption, as column 0; ``exclude_last``: never draw the last item (reference parity);
    ``merge``: sentences per item (≥ 1)."""

    k: int = 6
    full: bool = True
    exclude_last: bool = False
    merge: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"data.long_captions.k must be an integer >= 1, got {self.k!r}")
        if isinstance(self.merge, bool) or not isinstance(self.merge, int) or self.merge < 1:
            raise ConfigError(f"data.long_captions.merge must be an integer >= 1, got {self.merge!r}")

    @property
    def columns(self) -> int:
        """M, the captions per image in a batch: ``k`` plus the whole caption with ``full``."""
        return self.k + int(self.full)


def split_caption(text: str, merge: int = 1) -> list[str]:
    """The sub-captions of ``text`` (module docstring): pieces between ``\\n``, ``</s>`` and
    ``.``, stripped, empty ones dropped; ``merge = m`` joins ``m`` consecutive pieces with ``". "``."""
    if merge < 1:
        raise InputError(f"merge must be >= 1, got {merge}")
    pieces = [p.strip() for p in _SPLIT.split(text)]
    pieces = [p for p in pieces if p]
    if merge == 1:
        return pieces
    return [". ".join(pieces[s : s + merge]) for s in range(len(pieces) - merge + 1)]


def draw_indices(n: int, k: int, rng: np.random.Generator, exclude_last: bool = False) -> np.ndarray | None:
    """K indices into ``n`` items: distinct if the population (``n``, or ``n − 1`` with
    ``exclude_last``) has ≥ K, else with replacement; ``None`` for an empty population."""
    p = n - int(exclude_last)
    if p <= 0:
        return None
    if p >= k:
        return rng.choice(p, size=k, replace=False)
    return rng.integers(0, p, size=k)


def sample_sub_captions(
    captions: Sequence[str], cfg: LongCaptionConfig, seed: Sequence[int]
) -> tuple[list[list[str]], int]:
    """For every caption of a batch with seed ``seed``: its M texts (module docstring); also how
    many rows had no sub-caption (their K slots hold the whole caption)."""
    if len(seed) < 1:
        raise InputError("long captions need the batch's seed (a non-empty sequence of integers)")
    *head, last = (int(v) for v in seed)
    rows, filled = [], 0
    for i, caption in enumerate(captions):
        items = split_caption(caption, cfg.merge)
        rng = np.random.default_rng([*head, last + i, _SALT])
        idx = draw_indices(len(items), cfg.k, rng, cfg.exclude_last)
        if idx is None:
            subs, filled = [caption] * cfg.k, filled + 1
        else:
            subs = [items[int(j)] for j in idx]
        rows.append(([caption] if cfg.full else []) + subs)
    return rows, filled


def add_sub_captions(out: dict[str, object], cfg: LongCaptionConfig, seed: Sequence[int] | None) -> None:
    """In a collated batch (captions not yet tokenised): ``text`` becomes column 0, ``text_pos``
    the other columns (per-row lists); fills are counted."""
    if seed is None:
        raise InputError("data.long_captions needs batches that carry their seed (_seed)")
    texts = out["text"]
    rows, filled = sample_sub_captions(texts, cfg, seed)  # type: ignore[arg-type]
    out["text"] = [r[0] for r in rows]
    if cfg.columns > 1:
        out[LONG_KEY] = [r[1:] for r in rows]
    if filled:
        skips = dict(out.get(SKIPS_KEY, {}))  # type: ignore[call-overload]
        skips[FILLED] = skips.get(FILLED, 0) + filled
        out[SKIPS_KEY] = skips


def tokenize_nested(
    tokenize: Callable[[list[str]], torch.Tensor], rows: Sequence[Sequence[str]]
) -> torch.Tensor:
    """Token ids ``[B, P, L]`` of ``B`` rows of ``P`` texts each (one tokenizer call). A tokenizer
    that returns no tensor (e.g. ``list``, to look at the strings) gives per-row lists."""
    flat = [t for r in rows for t in r]
    ids = tokenize(flat)
    if not isinstance(ids, torch.Tensor):
        p = len(rows[0]) if rows else 0
        return [list(ids[i * p : (i + 1) * p]) for i in range(len(rows))]  # type: ignore[return-value]
    return ids.reshape(len(rows), -1, *ids.shape[1:])


def encode_positives(encode: Callable[[str, torch.Tensor], torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Text embeddings ``[B, P, d]`` of token ids ``[B, P, L]`` (one call of the text tower)."""
    b, p = ids.shape[:2]
    return encode("text", ids.flatten(0, 1)).reshape(b, p, -1)


def owner_rows(b: int, rank: int = 0) -> torch.Tensor:
    """The multi-positive labels of this process's ``b`` rows: their positions ``rank·b … rank·b +
    b − 1`` in the global batch (module docstring, "Owners"); int64 ``[b]``."""
    if b < 0 or rank < 0:
        raise InputError(f"owner_rows needs b >= 0 and rank >= 0, got b={b}, rank={rank}")
    return torch.arange(rank * b, (rank + 1) * b, dtype=torch.long)


def long_caption_loss(
    objective: Callable[..., torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    positives: torch.Tensor,
    rows: torch.Tensor,
    aux: Mapping[str, Any],
    labels: bool | None = None,
) -> torch.Tensor:
    """The loss of images ``x [B, d]`` with text columns ``y [B, d]`` (column 0) and ``positives
    [B, M−1, d]`` (module docstring). ``labels``: use the multi-positive path (default: when
    ``objective`` accepts ``labels``); ``rows [B]``: the rows' owners, distinct over the global
    batch (:func:`owner_rows`), the labels."""
    cols = torch.cat([y[:, None], positives], dim=1)  # [B, M, d]
    b, m = cols.shape[:2]
    if labels is None:
        labels = "labels" in getattr(objective, "accepts", frozenset())
    if labels:
        x_rep = x.repeat_interleave(m, dim=0)  # row i·M + c = image i; text i·M + c = its c-th caption
        lab = rows.to(x.device).repeat_interleave(m)
        return objective(x_rep, cols.reshape(b * m, -1), **{**aux, "labels": lab})
    return torch.stack([objective(x, cols[:, c], **aux) for c in range(m)]).mean()


def check_long_caption_data(
    cfg: LongCaptionConfig | None,
    modalities: Iterable[str],
    text_negatives: str | None,
    text_augment: object,
) -> None:
    """The data-config checks of ``data.long_captions`` (called by ``DataConfig``)."""
    if cfg is None:
        return
    if "text" not in tuple(modalities):
        raise ConfigError("data.long_captions needs 'text' in data.modalities (it samples captions)")
    if text_negatives is not None:
        raise ConfigError("data.long_captions and data.text_negatives cannot be combined (unset one)")
    if text_augment is not None:
        raise ConfigError("data.long_captions and data.text_augment cannot be combined (unset one)")


def check_long_caption_run(
    cfg: LongCaptionConfig | None,
    loss_name: str,
    accepts: Iterable[str],
    multi_loss: bool,
    chunk_size: int | None,
    label_task: str | None,
    sampler_fields: Iterable[str],
) -> None:
    """The run-config checks of ``data.long_captions`` that involve the loss and the trainer."""
    if cfg is None:
        return
    if multi_loss:
        raise ConfigError(
            f"data.long_captions needs a pair loss (image vs text columns); {loss_name!r} is a MultiLoss"
        )
    if chunk_size is not None:
        raise ConfigError("data.long_captions does not work with scale.chunk_size (gradient caching)")
    if list(sampler_fields):
        raise ConfigError("data.long_captions does not work with a mixup sampler")
    if "labels" in set(accepts) and cfg.columns > 1:
        if loss_name != "multi_positive":
            raise ConfigError(
                f"data.long_captions with M > 1 gives a loss that takes labels the caption owners as "
                f"labels: only multi_positive reads them as positives, not {loss_name!r}"
            )
        if label_task is not None:
            raise ConfigError(
                "data.long_captions with loss multi_positive sets labels to the caption owners; unset "
                f"data.label_task ({label_task!r})"
            )
