"""E-RETRIEVAL — image↔text recall@K with several captions per image, streamed in chunks.

Spec id: E-RETRIEVAL (docs/evaluation.md), definitions of CLIP_benchmark:

* text→image R@K: a text is a hit if its image is among the K most similar images; mean over texts;
* image→text R@K: an image is a hit if *any* of its captions is among its K most similar texts;
  mean over images (an image with no caption is a miss).

Ranks are computed exactly — ``rank = #{higher scores} + #{equal scores at a lower index}`` — so
ties break by lower index, and chunking the queries never changes a number. Memory is
``O(chunk × gallery)``; the median rank (1-based) of the first correct item is reported too.

Large galleries (``backend="faiss"``, or ``"auto"`` when the larger side has ≥ ``faiss_threshold``
items and faiss is installed): an exact inner-product index (``faiss.IndexFlatIP``) returns each
query's top ``k`` (scores, ids); within the list the order is re-sorted by (score desc, index asc),
so ties break exactly as in the dense path. A rank is *exact* when the first correct item is in the
list with a score strictly above the list's last score (every item ahead of it is then in the list)
or when the list is the whole gallery; otherwise ``#{list scores > last}`` is a lower bound. Queries
whose recall@K (K ≤ max ks) or whose place relative to the median is still undecided are searched
again with ``k ×= 4`` (up to the gallery size), so R@K and the median rank equal the dense path's.
Memory is ``O(rows × k)``; a good model needs one pass with ``k = max(ks)``, a poor one deepens
towards a full sort. Scores come from faiss's float32 BLAS, so a near-tie closer than float32
rounding (~1e-7) may order differently from torch's matmul; exact ties (equal vectors) never do.
Ranks returned by :func:`retrieval_ranks` above ``max(ks)`` may be such lower bounds (faiss path).

Ties (:func:`retrieval_ties`, :func:`random_tie_recall`): when several gallery items share a score
(identical captions have one embedding: Shapes' 4,000 test captions have 2,182 distinct texts), R@K
depends on the tie rule. Per query, with ``s`` items scoring strictly above its best positive score,
``t`` other (non-positive) items and ``m ≥ 1`` positives scoring exactly that score, a uniformly
random order of the tied group puts a positive in the top K with probability
``1 − C(t, j) / C(t + m, j)``, ``j = clip(K − s, 0, t + m)`` (no positive among the group's first
``j`` places: hypergeometric); its mean over queries is the random-tie-break expectation of R@K.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings
from contrastkit.core.errors import ConfigError, InputError

__all__ = [
    "FAISS_THRESHOLD",
    "choose_backend",
    "image_to_text_ranks",
    "random_tie_recall",
    "retrieval_metrics",
    "retrieval_ranks",
    "retrieval_ties",
    "text_to_image_ranks",
]

FAISS_THRESHOLD = 50_000  # gallery/query count from which backend="auto" uses faiss
_BACKENDS = ("auto", "dense", "faiss")


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


def choose_backend(backend: str, n_images: int, n_texts: int, faiss_threshold: int = FAISS_THRESHOLD) -> str:
    """``"dense"`` or ``"faiss"``: ``auto`` picks faiss when ``max(n_images, n_texts) ≥ faiss_threshold``
    and faiss imports; ``faiss`` without faiss installed is an error."""
    if backend not in _BACKENDS:
        raise ConfigError(f"unknown retrieval backend {backend!r}; choose from {list(_BACKENDS)}")
    if backend == "dense":
        return "dense"
    try:
        import faiss  # noqa: F401
    except ImportError as err:
        if backend == "faiss":
            raise ConfigError("retrieval backend 'faiss' needs the faiss-cpu package") from err
        return "dense"
    if backend == "faiss" or max(n_images, n_texts) >= faiss_threshold:
        return "faiss"
    return "dense"


Target = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (query rows [m], ids [m, k]) -> correct? [m, k]


def _search(index, queries: np.ndarray, rows: np.ndarray, k: int, is_target: Target, chunk: int):
    """Ranks of ``rows`` from their faiss top-``k`` lists: (rank or lower bound, exact?)."""
    n_gallery = index.ntotal
    step = max(1, min(chunk, (1 << 22) // k))  # ≤ 4M (score, id) pairs in memory
    ranks, exact = [], []
    for s in range(0, len(rows), step):
        r = rows[s : s + step]
        scores, ids = index.search(queries[r], k)
        order = np.lexsort((ids, -scores), axis=1)  # score desc, then lower index first
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        hit = is_target(r, ids)
        found, pos = hit.any(1), hit.argmax(1)
        last = scores[:, -1]
        if k >= n_gallery:  # the whole gallery: every rank is known
            ex = np.ones(len(r), dtype=bool)
            rank = np.where(found, pos, np.inf)
        else:  # exact iff all items ahead of the target are surely in the list
            ex = found & (scores[np.arange(len(r)), pos] > last)
            rank = np.where(ex, pos, (scores > last[:, None]).sum(1))
        ranks.append(rank.astype(np.float64))
        exact.append(ex)
    return np.concatenate(ranks), np.concatenate(exact)


def _undecided(rank: np.ndarray, exact: np.ndarray, need: int) -> np.ndarray:
    """Queries whose recall@K (K ≤ need) or whose side of the median is still unknown."""
    hi = len(rank) // 2  # the median uses the sorted values at (n-1)//2 and n//2
    known = np.sort(rank[exact])
    threshold = known[hi] if len(known) > hi else np.inf
    return np.flatnonzero(~exact & (rank < max(float(need), threshold)))


def _faiss_ranks(
    queries: np.ndarray, gallery: np.ndarray, is_target: Target, has_target: np.ndarray, need: int, chunk: int
) -> np.ndarray:
    """0-based ranks (exact, or lower bounds that change neither R@K ≤ ``need`` nor the median)."""
    import faiss

    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    rank = np.full(len(queries), np.inf)
    exact = ~has_target  # no correct item at all: rank inf, known
    todo, k = np.flatnonzero(has_target), min(index.ntotal, max(need, 1))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())  # honour the process's thread setting
    try:
        while todo.size:
            rank[todo], exact[todo] = _search(index, queries, todo, k, is_target, chunk)
            if k >= index.ntotal:
                break
            todo, k = _undecided(rank, exact, need), min(index.ntotal, 4 * k)
    finally:
        faiss.omp_set_num_threads(threads)
    return rank


def retrieval_ranks(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_owner: np.ndarray | torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    chunk: int = 4096,
    backend: str = "auto",
    faiss_threshold: int = FAISS_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks ``(text→image per text, image→text per image)`` as float64 (``inf``: an image
    without captions). Faiss path: ranks ≥ ``max(ks)`` may be lower bounds (see the module doc)."""
    check_embeddings("image_emb", image_emb)
    check_embeddings("text_emb", text_emb)
    owner = torch.as_tensor(np.asarray(text_owner), dtype=torch.long)
    if owner.shape != (text_emb.shape[0],):
        raise InputError(f"text_owner must have shape [{text_emb.shape[0]}], got {tuple(owner.shape)}")
    if owner.min() < 0 or owner.max() >= image_emb.shape[0]:
        raise InputError("text_owner holds an index outside the image set")
    if image_emb.shape[1] != text_emb.shape[1]:
        raise InputError(
            f"embedding dimension mismatch: images d={image_emb.shape[1]}, texts d={text_emb.shape[1]}"
        )
    if chunk < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}")
    if not ks or min(ks) < 1:
        raise InputError(f"ks must be positive integers, got {ks}")
    x = F.normalize(image_emb.float(), dim=-1)
    t = F.normalize(text_emb.float(), dim=-1)
    if choose_backend(backend, x.shape[0], t.shape[0], faiss_threshold) == "dense":
        t2i = text_to_image_ranks(x, t, owner, chunk).double().numpy()
        return t2i, image_to_text_ranks(x, t, owner, chunk).numpy()
    xn, tn = (np.ascontiguousarray(a.numpy(), dtype=np.float32) for a in (x, t))
    o = owner.numpy()
    need = max(ks)
    t2i = _faiss_ranks(tn, xn, lambda r, ids: ids == o[r][:, None], np.ones(len(o), bool), need, chunk)
    has_caption = np.bincount(o, minlength=len(xn)) > 0
    i2t = _faiss_ranks(xn, tn, lambda r, ids: o[ids] == r[:, None], has_caption, need, chunk)
    return t2i, i2t


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_owner: np.ndarray | torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    chunk: int = 4096,
    backend: str = "auto",
    faiss_threshold: int = FAISS_THRESHOLD,
) -> dict[str, float]:
    """Recall@K both directions and median ranks. ``text_owner[k]`` = index of text k's image.
    ``backend``: ``"dense"`` (chunked torch), ``"faiss"`` (exact flat index) or ``"auto"``."""
    t2i, i2t = retrieval_ranks(image_emb, text_emb, text_owner, ks, chunk, backend, faiss_threshold)
    out: dict[str, float] = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = float((i2t < k).mean())
        out[f"text_to_image_R@{k}"] = float((t2i < k).mean())
    out["image_to_text_median_rank"] = float(np.median(i2t) + 1)
    out["text_to_image_median_rank"] = float(np.median(t2i) + 1)
    return out


def _tie_counts(
    queries: torch.Tensor, gallery: torch.Tensor, own: Callable[[int, int], torch.Tensor], chunk: int
) -> np.ndarray:
    """``[Q, 3]`` int64: per query (ahead, tied others, tied positives) at its best positive score;
    ``own(start, rows)`` is the ``[rows, G]`` positive mask of the queries from ``start``."""
    out = []
    for i in range(0, queries.shape[0], chunk):
        scores = queries[i : i + chunk] @ gallery.T
        pos = own(i, scores.shape[0])
        best = scores.masked_fill(~pos, float("-inf")).max(1, keepdim=True).values
        eq = scores == best  # a query without positives: best = -inf, nothing equal, all ahead
        counts = [(scores > best).sum(1), (eq & ~pos).sum(1), (eq & pos).sum(1)]
        out.append(torch.stack(counts, 1))
    return torch.cat(out).numpy().astype(np.int64)


def retrieval_ties(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_owner: np.ndarray | torch.Tensor, chunk: int = 4096
) -> dict[str, np.ndarray]:
    """``{"text_to_image": [T, 3], "image_to_text": [I, 3]}``: per query, the gallery items scoring
    strictly above its best positive (``ahead``), the other items scoring exactly that (``tied``)
    and the positives scoring exactly that (``positives``; 0 for an image without captions).
    Same normalisation and chunked float32 products as the dense ranks, so the lower-index rank
    ``r`` of :func:`retrieval_ranks` satisfies ``ahead ≤ r ≤ ahead + tied``."""
    check_embeddings("image_emb", image_emb)
    check_embeddings("text_emb", text_emb)
    owner = torch.as_tensor(np.asarray(text_owner), dtype=torch.long)
    if owner.shape != (text_emb.shape[0],) or image_emb.shape[1] != text_emb.shape[1] or chunk < 1:
        raise InputError(
            f"retrieval_ties needs text_owner [{text_emb.shape[0]}], equal dimensions and chunk >= 1; got "
            f"owner {tuple(owner.shape)}, images {tuple(image_emb.shape)}, texts {tuple(text_emb.shape)}"
        )
    x = F.normalize(image_emb.float(), dim=-1)
    t = F.normalize(text_emb.float(), dim=-1)
    images = torch.arange(x.shape[0])

    def t2i(start: int, rows: int) -> torch.Tensor:
        return owner[start : start + rows, None] == images[None, :]

    def i2t(start: int, rows: int) -> torch.Tensor:
        return owner[None, :] == torch.arange(start, start + rows)[:, None]

    return {"text_to_image": _tie_counts(t, x, t2i, chunk), "image_to_text": _tie_counts(x, t, i2t, chunk)}


def random_tie_recall(counts: np.ndarray, k: int) -> np.ndarray:
    """Per query, the probability of a hit in the top ``k`` when tied scores are ordered uniformly at
    random: ``1 − C(t, j) / C(t + m, j)``, ``j = k − ahead`` (rows of ``counts`` = (ahead, t, m) of
    :func:`retrieval_ties`); exact, as a product of ``min(j, t + 1)`` ratios in float64."""
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    c = np.asarray(counts, dtype=np.int64).reshape(-1, 3)
    ahead, t, m = c[:, 0], c[:, 1].astype(np.float64), c[:, 2].astype(np.float64)
    j = np.clip(k - ahead, 0, c[:, 1] + 1)  # beyond t + 1 places a positive is surely reached
    miss = np.ones(len(c))  # P(no positive among the tied group's first j places)
    safe = np.maximum(t + m, 1.0)
    for i in range(int(j.max(initial=0))):
        step = i < j
        miss = np.where(step, miss * np.maximum(t - i, 0.0) / np.maximum(safe - i, 1.0), miss)
    return np.where(m > 0, 1.0 - miss, 0.0)
