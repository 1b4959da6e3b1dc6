"""Data filters: which image–caption rows to keep, selectable by name (``FILTERS``).

A filter is a frozen dataclass of its parameters; :meth:`Filter.apply` takes the rows that reach
it (:class:`FilterInput`: their captions and, if the filter ``needs`` them, L2-normalised image and
caption embeddings) and returns a :class:`FilterResult`: a keep mask, the per-row score the rule
compared and why each removed row was removed. :func:`contrastkit.curation.curate` runs filters in
sequence over a data source and writes the kept rows; the filters also work on arrays directly.

* ``clip_score`` (needs image and caption embeddings): keep image–caption cosine ≥ τ, τ given as
  ``threshold`` or set by the ``keep`` fraction (default ``keep=0.3``);
* ``near_duplicates`` (needs image embeddings): keep a row unless an earlier *kept* row has image
  cosine ≥ ``threshold`` with it;
* ``complexity`` (needs captions only): keep caption complexity ≥ ``min_complexity`` (and
  relations ≥ ``min_relations``).

Several captions per image: each caption is scored, and ``caption_rule`` reduces a row's scores
to one — ``mean`` (default of ``clip_score``: a row whose captions mostly miss the image goes),
``max`` (default of ``complexity``: one rich caption makes the image informative), ``min`` or
``first``. A row is kept or removed whole, with all its captions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from annotated_types import Ge, Le

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.progress import progress_bar
from contrastkit.core.registry import NonNegInt, Probability, Registry
from contrastkit.curation.complexity import caption_complexity

__all__ = [
    "FILTERS",
    "CaptionRule",
    "ClipScore",
    "Complexity",
    "Filter",
    "FilterInput",
    "FilterResult",
    "NearDuplicates",
    "clip_score_keep",
    "near_duplicate_keep",
    "reduce_captions",
]

CaptionRule = Literal["mean", "max", "min", "first"]
Cosine = Annotated[float, Ge(-1), Le(1)]
DATACOMP_KEEP = 0.3  # DataComp's CLIP-score baseline keeps the top 30%

FILTERS: Registry[Filter] = Registry("filter")

COSINE_TOLERANCE = 1e-6
"""Near duplicates: a float32 cosine this far below the threshold still counts (identical images
have cosine 1 only up to rounding, and must meet ``threshold=1``)."""


@dataclass(frozen=True)
class FilterInput:
    """The rows that reach a filter. ``captions[i]``: row i's non-empty captions; ``image_emb``:
    ``[n, d]``; ``text_emb``: ``[m, d]`` for the m captions in order, ``text_owner[k]`` the row of
    caption k (embeddings L2-normalised float32, ``None`` when the filter does not need them)."""

    captions: tuple[tuple[str, ...], ...]
    image_emb: np.ndarray | None = None
    text_emb: np.ndarray | None = None
    text_owner: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.captions)


@dataclass(frozen=True)
class FilterResult:
    """``keep[i]``: row i stays; ``scores[i]``: the number the rule compared (plotted, written as a
    column); ``reasons[i]``: why row i was removed (``""`` when kept); ``threshold``: the cut, drawn
    on the histogram with ``rule`` as its legend; ``partner[i]``: a near duplicate's kept twin
    (row index into the input, −1 none); ``details``: JSON-able facts for the report."""

    keep: np.ndarray
    scores: np.ndarray
    reasons: tuple[str, ...]
    threshold: float
    score_name: str
    partner: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)
    rule: str = "threshold"


class Filter:
    """Base of the registered filters: ``needs`` ⊆ {"image", "text"}; :meth:`apply` decides."""

    needs: ClassVar[frozenset[str]] = frozenset()

    def apply(self, x: FilterInput) -> FilterResult:
        raise NotImplementedError


def reduce_captions(values: np.ndarray, owner: np.ndarray, n: int, rule: CaptionRule) -> np.ndarray:
    """Per-row reduction of per-caption ``values`` (``owner[k]``: caption k's row, rows in
    ascending order, every row with ≥ 1 caption): mean, max, min, or the first caption's value."""
    if len(values) != len(owner):
        raise InputError(f"{len(values)} caption scores for {len(owner)} owners")
    counts = np.bincount(owner, minlength=n)
    if (counts == 0).any():
        raise InputError(f"row {int(np.argmin(counts))} has no caption")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    values = values.astype(np.float64)
    if rule == "mean":
        return np.add.reduceat(values, starts) / counts
    if rule == "max":
        return np.maximum.reduceat(values, starts)
    if rule == "min":
        return np.minimum.reduceat(values, starts)
    if rule == "first":
        return values[starts]
    raise ConfigError(f"caption_rule must be one of mean, max, min, first; got {rule!r}")


def clip_score_keep(
    scores: np.ndarray, keep: float | None = None, threshold: float | None = None, exact_count: bool = False
) -> tuple[np.ndarray, float]:
    """D-CLIPSCORE-FILTER keep rule: the keep mask and the threshold τ over ``scores``.

    Exactly one of ``threshold`` (keep ``s ≥ τ``, inclusive) and ``keep`` = f: τ is the element at
    0-based index ``min(⌊n·f⌋, n−1)`` of the scores sorted in descending order, and ``s ≥ τ`` is
    kept — ``⌊n·f⌋ + 1`` rows plus ties, as DataComp's reference code does; ``exact_count=True``
    keeps exactly the ``⌊n·f⌋`` best (stable sort: among equal scores the earlier row wins).
    Example: scores ``[0.1, 0.4, 0.3, 0.2, 0.5]``, f = 0.4 → τ = 0.3, keeps 0.5, 0.4, 0.3.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0:
        raise InputError(f"scores must be a non-empty 1-d array, got shape {s.shape}")
    if np.isnan(s).any():
        raise InputError(f"{int(np.isnan(s).sum())} scores are NaN")
    if (keep is None) == (threshold is None):
        raise ConfigError("clip_score: give exactly one of keep (a fraction) and threshold (a cosine)")
    if threshold is not None:
        return s >= threshold, float(threshold)
    assert keep is not None
    if not 0.0 <= keep <= 1.0:
        raise ConfigError(f"clip_score: keep must be in [0, 1], got {keep}")
    k = int(np.floor(len(s) * keep))
    order = np.argsort(-s, kind="stable")
    if exact_count:
        mask = np.zeros(len(s), dtype=bool)
        mask[order[:k]] = True
        tau = float(s[order[k - 1]]) if k > 0 else float("inf")
        return mask, tau
    tau = float(s[order[min(k, len(s) - 1)]])
    return s >= tau, tau


def near_duplicate_keep(
    emb: np.ndarray, threshold: float, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy near-duplicate removal in row order, exact (faiss ``IndexFlatIP`` range search).

    Row i is kept iff no earlier *kept* row j < i has ``cos(e_i, e_j) ≥ threshold``: the first row
    of each group of near duplicates stays, and no two kept rows are near duplicates (cosines in
    float32, compared with :data:`COSINE_TOLERANCE` of slack). Returns the
    keep mask, each row's nearest-neighbour cosine over all other rows (the histogram's score; NaN
    for a single row) and ``partner``: for a removed row the first kept row it duplicates, else −1.
    Cost: one pass of exact inner products, O(n²·d), in chunks of ``chunk`` query rows.
    """
    import faiss

    x = np.ascontiguousarray(emb, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise InputError(f"embeddings must be a non-empty [n, d] array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError("embeddings contain NaN or inf")
    n = len(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    keep = np.ones(n, dtype=bool)
    partner = np.full(n, -1, dtype=np.int64)
    nearest = np.full(n, np.nan)
    # faiss returns inner products strictly above the radius: the slack below makes ≥ inclusive
    cut = threshold - COSINE_TOLERANCE
    radius = float(np.nextafter(np.float32(cut), np.float32(-np.inf)))
    for start in progress_bar(range(0, n, chunk), "near duplicates", unit="chunk", leave=False):
        q = x[start : start + chunk]
        lims, sims, ids = index.range_search(q, radius)
        if n > 1:
            top, top_ids = index.search(q, 2)
            other = top_ids[:, 0] == np.arange(start, start + len(q))  # self first: take the second
            nearest[start : start + len(q)] = np.where(other, top[:, 1], top[:, 0])
        for r in range(len(q)):
            i = start + r
            hit = ids[lims[r] : lims[r + 1]]
            hit = hit[(hit < i) & (sims[lims[r] : lims[r + 1]] >= cut)]
            hit = np.sort(hit[keep[hit]])
            if len(hit):
                keep[i], partner[i] = False, hit[0]
    return keep, nearest, partner


@FILTERS.register("clip_score")
@dataclass(frozen=True)
class ClipScore(Filter):
    """D-CLIPSCORE-FILTER — keep the rows whose image and captions agree most (DataComp's baseline).

    Score of a caption: ``cos(E_img(x), E_txt(t))`` under the curation model (a contrastkit run or a
    Hugging Face CLIP/SigLIP folder); a row's score reduces its captions' by ``caption_rule``. Keep
    ``s ≥ τ``: ``threshold`` = τ, or ``keep`` = f sets τ to the score at 0-based index ⌊n·f⌋ in
    descending order (⌊n·f⌋ + 1 rows plus ties, DataComp's reference; ``exact_count``: exactly
    ⌊n·f⌋). Neither given: ``keep=0.3``, DataComp's top-30% baseline. Both given: an error. The
    fraction is taken over the rows that reach the filter, all at once (not per shard).
    Paper: Gadre et al. 2023, "DataComp: In search of the next generation of multimodal datasets".

    Args:
        keep: fraction of rows to keep, in [0, 1] (default 0.3 when ``threshold`` is not given).
        threshold: keep rows with score ≥ threshold (a cosine in [−1, 1]).
        exact_count: keep exactly ⌊n·keep⌋ rows instead of the reference's ⌊n·keep⌋ + 1 plus ties.
        caption_rule: how a row's caption scores become one: mean, max, min or first.
    """

    keep: Probability | None = None
    threshold: Cosine | None = None
    exact_count: bool = False
    caption_rule: CaptionRule = "mean"
    needs: ClassVar[frozenset[str]] = frozenset({"image", "text"})

    def __post_init__(self) -> None:
        if self.keep is not None and self.threshold is not None:
            raise ConfigError("clip_score: give keep (a fraction) or threshold (a cosine), not both")
        if self.keep is None and self.threshold is None:  # the report then shows the rule applied
            object.__setattr__(self, "keep", DATACOMP_KEEP)

    def apply(self, x: FilterInput) -> FilterResult:
        if x.image_emb is None or x.text_emb is None or x.text_owner is None:
            raise InputError("clip_score needs image and caption embeddings")
        per_caption = np.einsum("kd,kd->k", x.text_emb, x.image_emb[x.text_owner])
        scores = reduce_captions(per_caption, x.text_owner, len(x), self.caption_rule)
        mask, tau = clip_score_keep(scores, self.keep, self.threshold, self.exact_count)
        why = f"clip_score < {tau:.4f}"
        return FilterResult(
            mask,
            scores,
            tuple("" if k else why for k in mask),
            tau,
            f"image–caption cosine ({self.caption_rule} over captions)",
            details={"keep_fraction": self.keep, "threshold": tau},
            rule=f"τ = {tau:.4g}: keep ≥ τ",
        )


@FILTERS.register("near_duplicates")
@dataclass(frozen=True)
class NearDuplicates(Filter):
    """Remove image near-duplicates, keeping the first of each group.

    A row goes when an earlier kept row's image embedding has cosine ≥ ``threshold`` with its own
    (exact faiss range search; rows in source order, so the first row of every duplicate group is
    the one kept, deterministically).

    Score plotted: each row's nearest-neighbour cosine over all other rows. Identical images have
    cosine 1; with a trained model, different photos of one scene come next. Cost O(n²·d) (exact
    inner products, faiss BLAS).

    Args:
        threshold: cosine at or above which two images are near duplicates, in [−1, 1].
    """

    threshold: Cosine = 0.95
    needs: ClassVar[frozenset[str]] = frozenset({"image"})

    def apply(self, x: FilterInput) -> FilterResult:
        if x.image_emb is None:
            raise InputError("near_duplicates needs image embeddings")
        keep, nearest, partner = near_duplicate_keep(x.image_emb, self.threshold)
        reasons = tuple("" if k else f"near duplicate (cos ≥ {self.threshold:g})" for k in keep)
        groups = int(np.unique(partner[partner >= 0]).size)
        return FilterResult(
            keep,
            nearest,
            reasons,
            self.threshold,
            "nearest-neighbour image cosine",
            partner=partner,
            details={"threshold": self.threshold, "duplicate_groups": groups},
            rule=f"threshold {self.threshold:g}: removed if ≥ with an earlier kept row",
        )


@FILTERS.register("complexity")
@dataclass(frozen=True)
class Complexity(Filter):
    """S-CAT — keep rows whose captions are complex enough (the complexity rule of DiHT's CAT
    filter). A caption's complexity C = objects + attributes + relations, counted with fixed word
    lists (:mod:`contrastkit.curation.complexity`: no parser, no model, the same everywhere).

    A row's C and relation count reduce its captions' by ``caption_rule`` (default ``max``: one
    rich caption makes an image informative). Keep iff C ≥ ``min_complexity`` and relations ≥
    ``min_relations`` (DiHT's action rule, approximated: relations include listed verbs and -ing
    verbs). Paper: Radenovic et al. 2023, "Filtering, Distillation, and Hard Negatives for
    Vision-Language Pre-Training".

    Args:
        min_complexity: smallest complexity kept (objects + attributes + relations).
        min_relations: smallest number of relations kept (0: no relation rule).
        caption_rule: how a row's caption counts become one: mean, max, min or first.
    """

    min_complexity: NonNegInt = 3
    min_relations: NonNegInt = 0
    caption_rule: CaptionRule = "max"

    def apply(self, x: FilterInput) -> FilterResult:
        owner = np.repeat(np.arange(len(x)), [len(c) for c in x.captions])
        flat = [c for caps in x.captions for c in caps]
        counts = [caption_complexity(c) for c in progress_bar(flat, "complexity", unit="caption")]
        total = reduce_captions(np.array([c.total for c in counts]), owner, len(x), self.caption_rule)
        rel = reduce_captions(np.array([c.relations for c in counts]), owner, len(x), self.caption_rule)
        low_c, low_r = total < self.min_complexity, rel < self.min_relations
        reasons = tuple(
            f"complexity < {self.min_complexity}" if a else (f"relations < {self.min_relations}" if b else "")
            for a, b in zip(low_c, low_r)
        )
        return FilterResult(
            ~(low_c | low_r),
            total,
            reasons,
            float(self.min_complexity),
            f"caption complexity: objects + attributes + relations ({self.caption_rule} over captions)",
            details={"min_complexity": self.min_complexity, "min_relations": self.min_relations},
            rule=f"min_complexity = {self.min_complexity}: keep ≥",
        )
