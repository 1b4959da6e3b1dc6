"""E-LATE — zero-shot and retrieval for token-set (late-interaction) models, exact, plus faiss search.

Models whose towers return token sets (``[N, T, d]``, padding rows zero: ``timm_tokens``,
``hf_text_tokens``, ``qformer``; :mod:`contrastkit.models.late_interaction`) are scored with MaxSim,
texts as queries and images as documents, every token L2-normalised::

    s(text, image) = Σ_{a ∈ text tokens} max_{b ∈ image tokens} t_a · x_b

(one-token texts, as the Q-Former's [CLS], make this ``max_k q_k · t``: BLIP-2's ITC score).
The tasks ``zeroshot`` and ``retrieval`` switch to these functions when an embedding is a token set:

* zero-shot: a token set cannot be averaged over prompts, so the class score is the mean of the
  prompts' scores, ``score(x, c) = (1/M) Σ_m s(template_m(c), x)``, then argmax (top-1/top-5,
  balanced accuracy as :mod:`contrastkit.evaluation.zeroshot`);
* retrieval: the exact ``[texts, images]`` score matrix (computed in tiles by
  :func:`contrastkit.losses.maxsim.maxsim`, held whole: memory O(T·I)); ranks, lower-index tie rule,
  tie counts and random-tie recall exactly as :mod:`contrastkit.evaluation.retrieval` defines them.

Large galleries, :func:`late_search`: ``backend="faiss"`` is ColBERT's candidate generation — every
real gallery token in one exact inner-product index (``faiss.IndexFlatIP``), each query token's
``token_k`` nearest tokens, the union of their documents as the query's candidates — followed by an
exact MaxSim rerank of the candidates. It equals the exact search whenever the candidates hold the
true top ``k`` (always when ``token_k`` covers every gallery token); otherwise it is approximate (a
document none of whose tokens is near any query token is missed). Results are ordered by
(score desc, index asc) on both paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.evaluation.zeroshot import zero_shot_score_metrics
from contrastkit.losses.base import as_float
from contrastkit.losses.late_interaction import late_interaction_scores
from contrastkit.losses.maxsim import maxsim, token_set

__all__ = [
    "is_token_set",
    "late_retrieval",
    "late_scores",
    "late_search",
    "late_zero_shot_metrics",
    "similarity",
]


def is_token_set(x: torch.Tensor) -> bool:
    """Whether ``x`` is a batch of token sets ``[N, T, d]`` (not one vector per row)."""
    return isinstance(x, torch.Tensor) and x.ndim == 3


def _unique_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of ``x`` (whole token sets) and each row's index among them."""
    uniq, inverse = torch.unique(x.reshape(x.shape[0], -1), dim=0, return_inverse=True)
    return uniq.reshape(-1, *x.shape[1:]), inverse


@torch.no_grad()
def late_scores(text_emb: torch.Tensor, image_emb: torch.Tensor) -> torch.Tensor:
    """``[T, I]`` MaxSim scores of texts (queries) against images (documents), float32; either side
    may be ``[N, d]`` (one token each) or a token set ``[N, T, d]``. Each distinct text and image is
    scored once, so equal inputs get bit-equal scores (a matrix product's rounding may depend on
    a row's place in it), which the tie counts of retrieval rely on."""
    texts, t_of = _unique_rows(text_emb.float())
    images, i_of = _unique_rows(image_emb.float())
    return late_interaction_scores(images, texts)[t_of][:, i_of]


def similarity(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """``[I, T]`` image–text similarities: cosine for vectors, MaxSim for token sets."""
    if is_token_set(image_emb) or is_token_set(text_emb):
        return late_scores(text_emb, image_emb).T
    return F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T


def late_zero_shot_metrics(
    image_emb: torch.Tensor,
    encode_texts: Callable[[list[str]], torch.Tensor],
    prompts: Sequence[Sequence[str]],
    labels: np.ndarray | torch.Tensor,
) -> dict:
    """Zero-shot metrics with prompt-score averaging: class c's score for an image is the mean over
    its prompts of ``s(prompt, image)``; metrics of :func:`zero_shot_score_metrics`."""
    if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
        raise InputError("zero-shot needs at least one class, each with at least one prompt")
    flat = [t for p in prompts for t in p]
    scores = late_scores(encode_texts(flat), image_emb)  # [P, N]
    owner = torch.tensor([c for c, p in enumerate(prompts) for _ in p])
    per_class = torch.zeros(len(prompts), scores.shape[1]).index_add_(0, owner, scores)
    per_class /= torch.bincount(owner, minlength=len(prompts)).clamp_min(1)[:, None].float()
    return zero_shot_score_metrics(per_class.T, labels)


def _ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of column ``target[r]`` in each row (ties: lower index first)."""
    s_t = scores.gather(1, target[:, None])
    cols = torch.arange(scores.shape[1])[None, :]
    return ((scores > s_t) | ((scores == s_t) & (cols < target[:, None]))).sum(1)


def _best_own(scores: torch.Tensor, own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: best positive score (−inf without one) and the lowest-index positive reaching it."""
    best = scores.masked_fill(~own, float("-inf")).max(1).values
    first = (own & (scores == best[:, None])).float().argmax(1)
    return best, first


def _tie_counts(scores: torch.Tensor, own: torch.Tensor) -> np.ndarray:
    """``[rows, 3]``: (ahead, tied others, tied positives) at each row's best positive score."""
    best = _best_own(scores, own)[0][:, None]
    eq = scores == best
    counts = [(scores > best).sum(1), (eq & ~own).sum(1), (eq & own).sum(1)]
    return torch.stack(counts, 1).numpy().astype(np.int64)


def late_retrieval(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_owner: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``(text→image ranks, image→text ranks, ties)`` from the exact MaxSim matrix: 0-based float64
    ranks (``inf``: an image without captions) and ``{"text_to_image", "image_to_text"}`` tie counts,
    as :func:`~contrastkit.evaluation.retrieval.retrieval_ranks` and ``retrieval_ties`` define them."""
    owner = torch.as_tensor(np.asarray(text_owner), dtype=torch.long)
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    if owner.shape != (n_txt,) or (n_txt and (owner.min() < 0 or owner.max() >= n_img)):
        raise InputError(
            f"text_owner must be [{n_txt}] image indices below {n_img}, got {tuple(owner.shape)}"
        )
    s = late_scores(text_emb, image_emb)  # [T, I]
    t2i = _ranks(s, owner).double().numpy()
    own_t = owner[:, None] == torch.arange(n_img)[None, :]  # [T, I]
    s_i, own_i = s.T.contiguous(), own_t.T.contiguous()
    _, first = _best_own(s_i, own_i)
    has = own_i.any(1)
    i2t = torch.where(has, _ranks(s_i, first).double(), torch.tensor(float("inf"), dtype=torch.double))
    ties = {"text_to_image": _tie_counts(s, own_t), "image_to_text": _tie_counts(s_i, own_i)}
    return t2i, i2t.numpy(), ties


def _order(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` by (score desc, id asc)."""
    order = np.lexsort((ids, -scores))[:k]
    return scores[order], ids[order]


@torch.no_grad()
def late_search(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    *,
    backend: str = "exact",
    token_k: int = 64,
    doc_mask_mode: str = "v2",
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` gallery items per query by MaxSim: ``(scores [Q, k], ids [Q, k])``, float64/int64,
    ordered by (score desc, id asc); rows with fewer candidates than ``k`` are padded with −inf / −1.

    ``backend``: ``"exact"`` (the full score matrix) or ``"faiss"`` (candidate generation from each
    query token's ``token_k`` nearest gallery tokens, then exact rerank; module docstring). Both
    sides are token sets (``[N, T, d]``, padding rows zero) or ``[N, d]``; tokens are normalised."""
    if backend not in ("exact", "faiss"):
        raise ConfigError(f"late_search backend must be 'exact' or 'faiss', got {backend!r}")
    if k < 1 or token_k < 1:
        raise InputError(f"k and token_k must be >= 1, got k={k}, token_k={token_k}")
    qt, qm = token_set(as_float(queries), "queries")
    gt, gm = token_set(as_float(gallery).to(as_float(queries).dtype), "gallery")
    qt, gt = F.normalize(qt, dim=-1), F.normalize(gt, dim=-1)
    n_q, n_g = qt.shape[0], gt.shape[0]
    out_s, out_i = np.full((n_q, k), -np.inf), np.full((n_q, k), -1, dtype=np.int64)
    if backend == "exact":
        cands = [np.arange(n_g)] * n_q
    else:
        cands = _faiss_candidates(qt, qm, gt, gm, token_k)
    for r, cand in enumerate(cands):
        c = torch.as_tensor(cand, dtype=torch.long)
        s = maxsim(qt[r : r + 1], gt[c], qm[r : r + 1], gm[c], doc_mask_mode=doc_mask_mode)[0]  # type: ignore[arg-type]
        sc, ids = _order(s.double().numpy(), cand.astype(np.int64), k)
        out_s[r, : len(sc)], out_i[r, : len(ids)] = sc, ids
    return out_s, out_i


def _faiss_candidates(qt, qm, gt, gm, token_k: int) -> list[np.ndarray]:
    """Per query: the sorted union of the documents of its tokens' ``token_k`` nearest gallery tokens."""
    import faiss

    flat = gt[gm].numpy().astype(np.float32)  # real gallery tokens only
    doc_of = torch.nonzero(gm)[:, 0].numpy()
    index = faiss.IndexFlatIP(flat.shape[1])
    index.add(np.ascontiguousarray(flat))
    q_flat = np.ascontiguousarray(qt[qm].numpy().astype(np.float32))
    q_of = torch.nonzero(qm)[:, 0].numpy()
    _, hits = index.search(q_flat, min(token_k, index.ntotal))
    out: list[np.ndarray] = []
    for r in range(qt.shape[0]):
        found = hits[q_of == r].ravel()
        out.append(np.unique(doc_of[found[found >= 0]]))
    return out
