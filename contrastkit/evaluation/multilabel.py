"""Multi-label retrieval metrics (XMC-style): precision/recall@k, mAP, ROC-AUC [E-AUC], chunked.

Spec ids: E-AUC (docs/evaluation.md); the multi-label mAP of E-ZEROSHOT. Queries
q = 1..Q score labels (documents, classes) l = 1..L: ``S[q, l]``; ``relevance[q, l] ∈ {0, 1}``
(dense array or scipy.sparse; graded relevance is an error). With embeddings, ``S`` is the cosine
of L2-normalised query and label embeddings in float32 (E-* convention).

* precision@k = (1/k)·#{relevant among the top k} per query, mean over *all* queries (the XMC
  definition, e.g. the Extreme Classification Repository's P@k); recall@k = #{relevant in top k} /
  #{relevant}, mean over queries with ≥ 1 relevant label. Top k: ties in score are broken by the
  lower label index (as in E-RETRIEVAL); k > L is an error.
* average precision of a ranking = Σ over distinct score thresholds t (descending) of
  (R_t − R_{t−1})·P_t — scikit-learn ``average_precision_score`` (tied scores form one step, no
  interpolation). A ranking with **no positives has AP 0 and counts in the mean** (scikit-learn also
  returns 0). ``mAP`` = mean over the L classes (columns: each class ranks the queries; macro, as
  E-ZEROSHOT's multi-label mAP); ``query_mAP`` = mean over queries (rows).
* ROC-AUC (E-AUC) over all (query, label) pairs: ``U/(n_pos·n_neg)``, ``U = Σ_{p,n} [S_p > S_n] +
  ½[S_p = S_n]`` (Mann–Whitney; all ties ⇒ 0.5) = scikit-learn ``roc_auc_score`` of the flattened
  matrix. Chunked exactly: pass 1 keeps the sorted positive scores, pass 2 counts, for every negative
  of a query chunk, the positives above / equal to it (``searchsorted``); memory O(#positives +
  chunk·L). ``query_roc_auc`` = mean of per-query AUCs over queries with both classes (average ranks).
  :func:`roc_curve` = scikit-learn ``roc_curve(drop_intermediate=False)`` for plotting.

Query metrics run over chunks of ``chunk`` queries (memory O(chunk·L)); class AP over chunks of
``chunk`` labels (each class needs its whole column). With embeddings the two passes multiply
blocks of different shapes, so a score may differ between them in the last float32 bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult
from contrastkit.evaluation.zeroshot import zero_shot_classifier

__all__ = [
    "attribute_concepts",
    "average_precision",
    "multilabel_metrics",
    "multilabel_retrieval_metrics",
    "multilabel_task",
    "per_query_auc",
    "precision_recall_at_k",
    "relevance_matrix",
    "roc_auc",
    "roc_curve",
]

Array = np.ndarray | torch.Tensor
Scores = Callable[[int, int], np.ndarray]  # (start, stop) -> scores of those rows / columns


def _np(x: Array, dtype: type = np.float64) -> np.ndarray:
    return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(dtype)


def _pair(scores: Array, relevance: Array) -> tuple[np.ndarray, np.ndarray]:
    """Dense float64 scores and boolean relevance of equal 2-D shape, finite, 0/1."""
    s, r = _np(scores), _np(relevance, np.float64)
    if s.ndim == 1:
        s, r = s[None], r.reshape(1, -1)
    if s.ndim != 2 or s.shape != r.shape or 0 in s.shape:
        raise InputError(f"scores {s.shape} and relevance {r.shape} must be equal non-empty [Q, L]")
    if not np.isfinite(s).all():
        raise InputError(f"scores contain {int((~np.isfinite(s)).sum())} non-finite value(s)")
    if not np.isin(r, (0.0, 1.0)).all():
        raise InputError("relevance must hold only 0/1 (graded relevance is not supported)")
    return s, r.astype(bool)


def relevance_matrix(positives: Sequence[Sequence[int]], n_labels: int) -> sp.csr_matrix:
    """Sparse boolean ``[Q, n_labels]`` relevance from each query's positive label ids."""
    rows = np.repeat(np.arange(len(positives)), [len(p) for p in positives])
    cols = np.concatenate([np.asarray(p, np.int64) for p in positives]) if len(rows) else np.empty(0, int)
    if len(cols) and (cols.min() < 0 or cols.max() >= n_labels):
        raise InputError(f"a positive label id is outside [0, {n_labels})")
    data = np.ones(len(rows), dtype=bool)
    m = sp.csr_matrix((data, (rows, cols)), shape=(len(positives), n_labels))
    m.sum_duplicates()
    return m.astype(bool)


def _top_k_hits(s: np.ndarray, r: np.ndarray, k: int) -> np.ndarray:
    """#relevant among each row's top k (ties: lower column first)."""
    kth = -np.partition(-s, k - 1, axis=1)[:, k - 1 : k]  # the k-th largest score
    above, tied = s > kth, s == kth
    room = k - above.sum(1, keepdims=True)
    take = tied & (np.cumsum(tied, axis=1) <= room)
    return ((above | take) & r).sum(1)


def precision_recall_at_k(
    scores: Array, relevance: Array, ks: Sequence[int] = (1, 3, 5)
) -> dict[str, np.ndarray]:
    """Per-query ``precision@k`` and ``recall@k`` (NaN for a query without relevant labels)."""
    s, r = _pair(scores, relevance)
    n_pos = r.sum(1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if not 1 <= k <= s.shape[1]:
            raise InputError(f"k must be in [1, {s.shape[1]}] (the number of labels), got {k}")
        hits = _top_k_hits(s, r, int(k))
        out[f"precision@{k}"] = hits / k
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"recall@{k}"] = np.where(n_pos > 0, hits / n_pos, np.nan)
    return out


def average_precision(scores: Array, relevance: Array) -> np.ndarray:
    """AP of each row's ranking (scikit-learn's step form; 0 for a row without positives)."""
    s, r = _pair(scores, relevance)
    n, m = s.shape
    order = np.argsort(-s, axis=1, kind="stable")
    ss, rr = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
    tp = np.cumsum(rr, axis=1)
    idx = np.broadcast_to(np.arange(m), (n, m))
    is_end = np.ones((n, m), dtype=bool)
    is_end[:, :-1] = ss[:, :-1] != ss[:, 1:]
    # last position of each tie group: reversed running minimum of the group-end positions
    end = np.minimum.accumulate(np.where(is_end, idx, m)[:, ::-1], axis=1)[:, ::-1]
    prec = np.take_along_axis(tp, end, 1) / (end + 1)
    n_pos = rr.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, (prec * rr).sum(1) / n_pos, 0.0)


def _positives_and_negatives(s: np.ndarray, r: np.ndarray) -> tuple[int, int]:
    n_pos = int(r.sum())
    if n_pos == 0 or n_pos == r.size:
        raise InputError(f"ROC-AUC needs positives and negatives; got {n_pos} of {r.size} positive")
    return n_pos, r.size - n_pos


def _u2(pos_sorted: np.ndarray, neg: np.ndarray) -> int:
    """2·U restricted to these negatives: Σ 2·#{pos > v} + #{pos = v}."""
    left = np.searchsorted(pos_sorted, neg, side="left")
    right = np.searchsorted(pos_sorted, neg, side="right")
    return int((2 * (len(pos_sorted) - right) + (right - left)).sum())


def roc_auc(scores: Array, labels: Array) -> float:
    """ROC-AUC of all (score, label) pairs (any shape), ties counting ½ (= sklearn roc_auc_score)."""
    s, r = _pair(_np(scores).reshape(1, -1), _np(labels).reshape(1, -1))
    n_pos, n_neg = _positives_and_negatives(s, r)
    return _u2(np.sort(s[r]), s[~r]) / (2.0 * n_pos * n_neg)


def roc_curve(scores: Array, labels: Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, descending, from (0, 0) at +inf."""
    s, r = _pair(_np(scores).reshape(1, -1), _np(labels).reshape(1, -1))
    n_pos, n_neg = _positives_and_negatives(s, r)
    order = np.argsort(-s[0], kind="stable")
    ss, rr = s[0, order], r[0, order]
    last = np.r_[ss[:-1] != ss[1:], True]
    tps, fps = np.cumsum(rr)[last], np.cumsum(~rr)[last]
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos], np.r_[np.inf, ss[last]]


def per_query_auc(scores: Array, relevance: Array) -> np.ndarray:
    """ROC-AUC of each row (average ranks); NaN for a row that is all positive or all negative."""
    from scipy.stats import rankdata

    s, r = _pair(scores, relevance)
    ranks = rankdata(s, method="average", axis=1)
    p = r.sum(1).astype(np.float64)
    q = s.shape[1] - p
    u = (ranks * r).sum(1) - p * (p + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((p > 0) & (q > 0), u / (p * q), np.nan)


def _as_relevance(relevance: Array | sp.spmatrix, shape: tuple[int, int]) -> sp.csr_matrix:
    if sp.issparse(relevance):
        m = sp.csr_matrix(relevance, dtype=np.float64)
        m.eliminate_zeros()
        if not np.all(m.data == 1.0):
            raise InputError("relevance must hold only 0/1 (graded relevance is not supported)")
    else:
        dense = _np(relevance)
        if dense.ndim != 2:
            raise InputError(f"relevance must be a [Q, L] matrix, got shape {dense.shape}")
        m = sp.csr_matrix(dense)
        if not np.isin(m.data, (0.0, 1.0)).all():
            raise InputError("relevance must hold only 0/1 (graded relevance is not supported)")
    if m.shape != shape:
        raise InputError(f"relevance has shape {m.shape}, expected {shape} (queries × labels)")
    return m.astype(bool)


def _metrics(
    rows: Scores, cols: Scores, rel: sp.csr_matrix, ks: Sequence[int], chunk: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Shared body: ``rows(a, b)`` → scores of queries a:b, ``cols(a, b)`` → of labels a:b (as rows)."""
    n_q, n_l = rel.shape
    if chunk < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}")
    per: dict[str, list[np.ndarray]] = {}
    pos = []
    for a in range(0, n_q, chunk):
        s, r = rows(a, min(a + chunk, n_q)), rel[a : a + chunk].toarray()
        for key, v in precision_recall_at_k(s, r, ks).items():
            per.setdefault(key, []).append(v)
        per.setdefault("query_AP", []).append(average_precision(s, r))
        per.setdefault("query_roc_auc", []).append(per_query_auc(s, r))
        pos.append(s[r])
    pos_sorted = np.sort(np.concatenate(pos))
    n_pos, n_neg = len(pos_sorted), n_q * n_l - len(pos_sorted)
    u2 = sum(
        _u2(pos_sorted, rows(a, min(a + chunk, n_q))[~rel[a : a + chunk].toarray()])
        for a in range(0, n_q, chunk)
    )
    csc = rel.tocsc()
    class_ap = np.concatenate(
        [
            average_precision(cols(a, min(a + chunk, n_l)), csc[:, a : a + chunk].toarray().T)
            for a in range(0, n_l, chunk)
        ]
    )
    examples = {k: np.concatenate(v) for k, v in per.items()}
    for k in [k for k in examples if k.startswith(("recall@", "query_roc_auc"))]:
        examples[k] = examples[k][~np.isnan(examples[k])]  # queries where the metric is defined
    examples["AP"] = class_ap
    out = {k: float(v.mean()) if len(v) else float("nan") for k, v in examples.items()}
    out["mAP"], out["query_mAP"] = out.pop("AP"), out.pop("query_AP")
    out["roc_auc"] = u2 / (2.0 * n_pos * n_neg) if n_pos and n_neg else float("nan")
    out.update(n_queries=float(n_q), n_labels=float(n_l), n_positives=float(n_pos))
    return out, examples


def multilabel_metrics(
    scores: Array, relevance: Array | sp.spmatrix, ks: Sequence[int] = (1, 3, 5), chunk: int = 1024
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """All metrics of a dense score matrix ``[Q, L]``: ``precision@k``, ``recall@k``, ``mAP`` (over
    classes), ``query_mAP``, ``roc_auc``, ``query_roc_auc``, counts; and the per-query (per-class
    for ``AP``, ``query_AP``) arrays whose means they are."""
    s = _np(scores)
    if s.ndim != 2 or 0 in s.shape or not np.isfinite(s).all():
        raise InputError(f"scores must be a finite non-empty [Q, L] matrix, got shape {s.shape}")
    rel = _as_relevance(relevance, s.shape)
    return _metrics(lambda a, b: s[a:b], lambda a, b: s[:, a:b].T, rel, ks, chunk)


def multilabel_retrieval_metrics(
    query_emb: torch.Tensor,
    label_emb: torch.Tensor,
    relevance: Array | sp.spmatrix,
    ks: Sequence[int] = (1, 3, 5),
    chunk: int = 1024,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """:func:`multilabel_metrics` of the cosine scores of query and label embeddings, computed in
    chunks (memory O(chunk·L + chunk·Q), never the whole [Q, L] matrix)."""
    check_embeddings("query_emb", query_emb)
    check_embeddings("label_emb", label_emb)
    if query_emb.shape[1] != label_emb.shape[1]:
        raise InputError(
            f"embedding dimension mismatch: queries d={query_emb.shape[1]}, labels d={label_emb.shape[1]}"
        )
    q, lab = F.normalize(query_emb.float(), dim=-1), F.normalize(label_emb.float(), dim=-1)
    rel = _as_relevance(relevance, (q.shape[0], lab.shape[0]))
    return _metrics(
        lambda a, b: (q[a:b] @ lab.T).double().numpy(),
        lambda a, b: (lab[a:b] @ q.T).double().numpy(),
        rel,
        ks,
        chunk,
    )


# ----------------------------------------------------------------------------- the registered task
MULTILABEL_DEFAULTS: dict[str, object] = {
    "groups": ("shape", "color"),
    "templates": ("a {}", "there is a {}", "a picture of a {}"),
    "ks": (1, 3, 5),
}


def attribute_concepts(names: Sequence[str], groups: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Concepts of attribute names ``"[slot/]group=value"`` in ``groups``: the sorted distinct
    values, and ``[D, C]`` 0/1 map from attribute entries to them (slots merge: an image is
    relevant to "red" if any of its objects is red)."""
    parsed = []
    for d, name in enumerate(names):
        group, _, value = name.rsplit("/", 1)[-1].partition("=")
        if value and group in groups:
            parsed.append((d, value))
    values = sorted({v for _, v in parsed})
    if not values:
        raise InputError(f"no attribute of the groups {list(groups)} among {list(names)[:6]}…")
    col = {v: c for c, v in enumerate(values)}
    mapping = np.zeros((len(names), len(values)))
    for d, v in parsed:
        mapping[d, col[v]] = 1.0
    return values, mapping


@EVAL_TASKS.register("multilabel")
def multilabel_task(ctx: EvalContext) -> TaskResult:
    """Images as queries ranking attribute concepts (prompt-ensembled, as zero-shot), relevance
    from the pair set's attribute vectors: ``multilabel/{precision@k, recall@k, mAP, roc_auc, …}``.
    Options (``ctx.options["multilabel"]``): ``groups``, ``templates``, ``ks``."""
    raw = dict(ctx.options.get("multilabel", {}))
    unknown = sorted(set(raw) - set(MULTILABEL_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown multilabel option(s) {unknown}; valid: {sorted(MULTILABEL_DEFAULTS)}")
    o = {**MULTILABEL_DEFAULTS, **raw}
    pairs = ctx.pairs
    if pairs.attributes is None or not pairs.attribute_names:
        raise InputError(f"multilabel needs a pair set with named attributes; {pairs.name!r} has none")
    values, mapping = attribute_concepts(pairs.attribute_names, tuple(o["groups"]))  # type: ignore[arg-type]
    relevance = (pairs.attributes.double().numpy() @ mapping) > 0
    templates = list(o["templates"])  # type: ignore[call-overload]
    classifier = zero_shot_classifier(ctx.enc.texts, [[t.format(v) for t in templates] for v in values])
    metrics, examples = multilabel_retrieval_metrics(
        ctx.image_emb,
        classifier,
        relevance.astype(np.float64),
        tuple(o["ks"]),  # type: ignore[arg-type]
    )
    out = {f"multilabel/{k}": v for k, v in metrics.items()}
    return out, {f"multilabel/{k}": v for k, v in examples.items() if len(v) == len(pairs)}
