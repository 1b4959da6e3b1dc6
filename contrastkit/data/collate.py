"""Batches from a :class:`~contrastkit.data.pairs.PairSet`: the collate step that finishes a batch
in the loader worker, and :func:`make_loader`, the resumable infinite loader over a pair set.

What: :class:`Collate` augments captions (seeded by the batch's ``_seed`` field, so a resumed run
sees the same words), adds hard-negative captions, sub-captions of long captions and a sampler's
batch transform, counts truncated captions as skips and tokenises every text column.
:func:`make_loader` puts a :class:`~contrastkit.data.pairs.PairDataset` behind a
:class:`~contrastkit.data.pairs.PairBatchSampler`: batch ``k`` depends only on ``(seed, k)``.

Related: :mod:`contrastkit.data.loading` (file sources use the same ``Collate``),
:mod:`contrastkit.data.skips` (the skip counts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from contrastkit.core.errors import InputError
from contrastkit.data.augment import AugmentConfig
from contrastkit.data.pairs import SEED_KEY, PairBatchSampler, PairDataset, PairSet
from contrastkit.data.skips import SKIPS_KEY

__all__ = ["Collate", "make_loader"]

Batch = dict[str, torch.Tensor]


class Collate:
    """Finish a batch in the loader worker: augment its captions (``augment_text``, seeded by the
    batch's ``_seed`` field), tokenise ``text`` and any text extra columns, and with ``truncated``
    (texts → how many exceed the text tower's context) count truncated captions under the
    batch's ``_skips`` (:mod:`contrastkit.data.skips`). ``negatives``: add ``text_neg``, one
    hard-negative caption per row (``data.text_negatives``, :mod:`contrastkit.data.negatives`).
    ``transform(batch, seed)``: a sampler's batch transform (mixup), given the batch's ``_seed``
    ``(seed, step, offset)``. ``long_captions``: a :class:`~contrastkit.data.long_captions.
    LongCaptionConfig` — sub-captions as ``text`` and ``text_pos`` [B, M−1, L]
    (``data.long_captions``). ``text_views`` (set by the loader): adds the class text views
    ``text@k`` of ``data.text_views`` (:mod:`contrastkit.data.text_views`). Picklable."""

    def __init__(
        self,
        tokenize: Callable[[list[str]], torch.Tensor] | None,
        text_keys: Sequence[str] = ("text",),
        truncated: Callable[[list[str]], int] | None = None,
        augment_text: Callable[[list[str], Sequence[int]], list[str]] | None = None,
        transform: Callable[[dict[str, object], Any], dict[str, object]] | None = None,
        negatives: str | None = None,
        long_captions: Any = None,
    ) -> None:
        self.tokenize, self.text_keys, self.truncated = tokenize, tuple(text_keys), truncated
        self.augment_text, self.transform = augment_text, transform
        self.negatives = negatives  # data.text_negatives: "swap" or a text column
        self.long_captions = long_captions  # data.long_captions: a LongCaptionConfig or None
        # data.text_views: adds text@k from the batch's labels (a TextViews; the loader sets it)
        self.text_views: Callable[[dict[str, object], Any], None] | None = None

    def __call__(self, item: dict[str, object]) -> Batch:
        out = dict(item)
        seed = out.pop(SEED_KEY, None)
        if self.long_captions is not None and "text" in out:  # sub-captions: text, text_pos
            from contrastkit.data.long_captions import add_sub_captions

            add_sub_captions(out, self.long_captions, seed)
        if self.negatives is not None and "text" in out:  # from the pair's own caption
            _add_negatives(out, self.negatives, seed)
        if self.transform is not None:
            out = self.transform(out, seed)
        if self.text_views is not None:  # from the sampled captions, before any augmentation
            self.text_views(out, seed)
        if self.augment_text is not None and "text" in out:
            if seed is None:
                raise InputError("text augmentation needs batches that carry their seed (_seed)")
            out["text"] = self.augment_text(out["text"], seed)  # type: ignore[arg-type]
        if self.truncated is not None and "text" in out:
            n = self.truncated(out["text"])  # type: ignore[arg-type]
            if "text_pos" in out:  # data.long_captions: the other sub-captions too
                n += self.truncated([t for r in out["text_pos"] for t in r])  # type: ignore[union-attr]
            if n:
                skips = dict(out.get(SKIPS_KEY, {}))  # type: ignore[call-overload]
                skips["truncated caption"] = skips.get("truncated caption", 0) + n
                out[SKIPS_KEY] = skips
        for k in self.text_keys:
            if k in out and self.tokenize is not None:
                out[k] = _tokenize(self.tokenize, out[k])  # type: ignore[arg-type]
        return out  # type: ignore[return-value]


def _tokenize(tokenize: Callable[[list[str]], torch.Tensor], texts: list) -> torch.Tensor:
    """Token ids of a list of texts ``[B, L]``, or of per-row lists of texts ``[B, P, L]``."""
    if texts and isinstance(texts[0], (list, tuple)):
        from contrastkit.data.long_captions import tokenize_nested

        return tokenize_nested(tokenize, texts)
    return tokenize(texts)


def _add_negatives(out: dict[str, object], negatives: str, seed: Sequence[int] | None) -> None:
    """Put one hard-negative caption per row under ``text_neg``: generated (``swap``) or moved from
    the text column ``negatives``; negatives equal to their caption are counted as skips."""
    from contrastkit.data.negatives import NEG_KEY, swap_negatives

    if negatives != "swap":
        out[NEG_KEY] = out.pop(negatives)
        return
    if seed is None:
        raise InputError("data.text_negatives: swap needs batches that carry their seed (_seed)")
    out[NEG_KEY], same = swap_negatives(out["text"], seed)  # type: ignore[arg-type]
    if same:
        skips = dict(out.get(SKIPS_KEY, {}))  # type: ignore[call-overload]
        skips["negative equals caption"] = skips.get("negative equals caption", 0) + same
        out[SKIPS_KEY] = skips


def make_loader(
    pairs: PairSet,
    tokenize: Callable[[list[str]], torch.Tensor] | None,
    batch_size: int,
    seed: int,
    start: int = 0,
    num_workers: int = 0,
    shard: tuple[int, int] = (0, 1),
    label_task: str | None = None,
    modalities: Sequence[str] = ("image", "text"),
    views: int = 0,
    augment: AugmentConfig | None = None,
    concepts: bool = False,
) -> DataLoader:
    """Infinite loader of ``{"image": uint8, "text": token ids, …}`` batches starting at batch
    ``start`` (this rank's shard of each global batch of ``batch_size``). ``modalities``,
    ``views``, ``augment`` and ``concepts`` as in :class:`PairDataset` (views are seeded by
    ``seed``); ``tokenize`` may be ``None`` when ``text`` is not among ``modalities``."""
    if "text" in modalities and tokenize is None:
        raise InputError("batches with text need a tokenize function")

    sampler = PairBatchSampler([len(c) for c in pairs.captions], batch_size, seed, start, shard)
    return DataLoader(
        PairDataset(pairs, label_task, modalities, views, augment, seed, concepts),
        batch_sampler=sampler,
        collate_fn=Collate(tokenize),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
