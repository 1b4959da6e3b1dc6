"""E-RETRIEVAL — image↔text recall@K with several captions per image, streamed in chunks.

Spec id: E-RETRIEVAL (../shared/spec/evaluation.md), definitions of CLIP_benchmark:

* text→image R@K: a text is a hit if its image is among the K most similar images; mean over texts;
* image→text R@K: an image is a hit if *any* of its captions is among its K most similar texts;
  mean over images (an image with no caption is a miss).

Ranks are computed exactly — ``rank = #{higher scores} + #{equal scores at a lower index}`` — so
ties break by lower index, and chunking the queries never changes a number. Memory is
``O(chunk × gallery)``; the median rank (1-based) of the first correct item is reported too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings
from contrastkit.core.errors import InputError

__all__ = ["image_to_text_ranks", "retrieval_metrics", "text_to_image_ranks"]


def _rank_of(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of column ``target[r]`` in each row of ``scores`` (ties: lower index first)."""
    s_t = scores.gather(1, target[:, None])
    cols = torch.arange(scores.shape[1], device=scores.device)[None, :]
    ahead = (scores > s_t) | ((scores == s_t) & (cols < target[:, None]))
    return ahead.sum(1)


def text_to_image_ranks(
    image_emb: torch.Tensor, text_emb: torch.Tensor, owner: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """For each text, the 0-based rank of its own image among all images."""
    out = []
    for i in range(0, text_emb.shape[0], chunk):
        scores = text_emb[i : i + chunk] @ image_emb.T
        out.append(_rank_of(scores, owner[i : i + chunk]))
    return torch.cat(out)


def image_to_text_ranks(
    image_emb: torch.Tensor, text_emb: torch.Tensor, owner: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """For each image, the 0-based rank of its best caption among all texts (``inf`` if it has none)."""
    out = []
    for i in range(0, image_emb.shape[0], chunk):
        scores = image_emb[i : i + chunk] @ text_emb.T
        ids = torch.arange(i, i + scores.shape[0])
        own = owner[None, :] == ids[:, None]
        has = own.any(1)
        masked = scores.masked_fill(~own, float("-inf"))
        best = masked.max(1).values
        # lowest-index own caption reaching the best score
        first = (own & (scores == best[:, None])).float().argmax(1)
        rank = _rank_of(scores, first)
        out.append(
            torch.where(has, rank.double(), torch.full_like(rank, 0, dtype=torch.double) + float("inf"))
        )
    return torch.cat(out)


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_owner: np.ndarray | torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    chunk: int = 4096,
) -> dict[str, float]:
    """Recall@K both directions and median ranks. ``text_owner[k]`` = index of text k's image."""
    check_embeddings("image_emb", image_emb)
    check_embeddings("text_emb", text_emb)
    owner = torch.as_tensor(np.asarray(text_owner), dtype=torch.long)
    if owner.shape != (text_emb.shape[0],):
        raise InputError(f"text_owner must have shape [{text_emb.shape[0]}], got {tuple(owner.shape)}")
    if owner.min() < 0 or owner.max() >= image_emb.shape[0]:
        raise InputError("text_owner holds an index outside the image set")
    if chunk < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}")
    x = F.normalize(image_emb.float(), dim=-1)
    t = F.normalize(text_emb.float(), dim=-1)
    t2i = text_to_image_ranks(x, t, owner, chunk)
    i2t = image_to_text_ranks(x, t, owner, chunk)
    out: dict[str, float] = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = float((i2t < k).float().mean())
        out[f"text_to_image_R@{k}"] = float((t2i < k).float().mean())
    out["image_to_text_median_rank"] = float(np.median(i2t.numpy()) + 1)
    out["text_to_image_median_rank"] = float(np.median(t2i.numpy()) + 1)
    return out
