"""E-LINPROBE — probes on frozen image embeddings: linear, kNN, few-shot, generative.

Spec id: E-LINPROBE (docs/evaluation.md); generative probes after "Revisiting
Discriminative vs. Generative Classifiers" (seeds/papers.txt). Features are the L2-normalised image
embeddings (``ctx.enc.images``); the probe is fit on ``ctx.train_pairs`` and reported on
``ctx.pairs``. Definitions (documented in docs/evaluation.md):

* **linear** — multinomial logistic regression, scikit-learn ``LogisticRegression(solver="lbfgs",
  C=1/λ)`` (L2, intercept unpenalised), i.e. ``min Σ_i CE_i + (λ/2)‖W‖²``; max_iter 1000 (CLIP).
  λ is chosen by CLIP_benchmark's sweep (the variant the spec marks as read): grid ``LAMBDA_GRID =
  logspace(−6, 2, 97)``; coarse pass at indices 0, 16, …, 96 (= ``logspace(−6, 2, 7)``; chosen by
  index, not by float equality); then, for spans 8, 4, 2, 1, evaluate ``[p−span, p, p+span]``
  (clipped) and move p to the best. Score: validation top-1; the first candidate in visiting order
  wins ties (CLIP_benchmark's strict ``<``), except that a round where every score is 0 keeps its
  first candidate rather than jumping to index 0. The validation split is a seeded 20 % of the
  training features; the final model is refit on train+val with the chosen λ (CLIP_benchmark's
  full-data path). CLIP_benchmark trains a Linear layer with AdamW; contrastkit uses L-BFGS as the
  CLIP paper does. Binary tasks use scikit-learn's single-logit binary form (λ is then effectively
  halved relative to a 2-logit softmax). Reports top-1, top-5 (NaN when the task has < 5 classes),
  balanced accuracy (mean recall over classes present in the test labels) and λ.
* **kNN** — cosine similarity (float32), k = 20 nearest training features, *unweighted* majority
  vote; neighbours tied in similarity: lower training index first; classes tied in votes: lower
  class index (agrees with scikit-learn ``KNeighborsClassifier(weights="uniform", metric="cosine")``
  away from similarity ties).
* **few-shot** — for k in ``shots`` (1, 5, 10) and each seed: k training features per class drawn
  without replacement (``default_rng([seed, k])``), logistic regression with the λ chosen by the
  full-data sweep (CLIP_benchmark would re-sweep each draw against the validation set), top-1
  averaged over seeds. NaN when a training class has fewer than k features.
* **generative** — ``GaussianNB()`` and ``LinearDiscriminantAnalysis()`` (svd solver), defaults,
  fit on all training features (no hyper-parameter to tune). LDA is NaN when samples ≤ classes.

When ``train_pairs`` is missing or has no labels for a task, the *evaluated* set's labelled images
are split 50/50 by a seeded permutation (``split_seed``): the first half is fit, the second half is
reported, ``probe/<task>/self_split`` is 1, and a warning is logged (``contrastkit.evaluation``
loggers; a report also records it in ``eval.json``'s ``protocol.fit_split``). Reports pass the data
set's training split by default (:mod:`contrastkit.evaluation.report`). Options
(``ctx.options["probe"]``): see ``PROBE_DEFAULTS``; unknown keys raise ConfigError.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.pairs import PairSet
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult

__all__ = [
    "COARSE_INDICES",
    "LAMBDA_GRID",
    "PROBE_DEFAULTS",
    "fewshot_indices",
    "fewshot_probe",
    "generative_probes",
    "knn_predict",
    "linear_probe",
    "probe_task",
    "search_peak",
]

LAMBDA_GRID = np.logspace(-6, 2, 97)
COARSE_INDICES = tuple(range(0, 97, 16))
_log = logging.getLogger(__name__)
REFINE_SPANS = (8, 4, 2, 1)
PROBE_DEFAULTS: dict[str, Any] = {
    "max_train": 5000,  # training features per task (seeded subsample)
    "seeds": (0, 1, 2),  # few-shot draws
    "shots": (1, 5, 10),
    "knn_k": 20,
    "val_fraction": 0.2,  # validation split carved from the training features for the λ sweep
    "max_iter": 1000,
    "split_seed": 0,  # train subsample, validation split, 50/50 self split
    "lam": None,  # a fixed λ skips the sweep
}


def search_peak(
    score: Callable[[int], float],
    n_grid: int = len(LAMBDA_GRID),
    coarse: Sequence[int] = COARSE_INDICES,
    spans: Sequence[int] = REFINE_SPANS,
) -> tuple[int, list[int]]:
    """CLIP_benchmark's coarse-then-refine search of the grid index maximising ``score``.

    Returns the chosen index and the distinct indices evaluated, in order (each scored once)."""
    cache: dict[int, float] = {}
    visited: list[int] = []

    def peak(idxs: Sequence[int]) -> int:
        best, best_s = idxs[0], -np.inf
        for i in idxs:
            if i not in cache:
                cache[i] = float(score(i))
                visited.append(i)
            if cache[i] > best_s:
                best, best_s = i, cache[i]
        return best

    p = peak(list(coarse))
    for span in spans:
        p = peak([max(p - span, 0), p, min(p + span, n_grid - 1)])
    return p, visited


def _logreg(x: np.ndarray, y: np.ndarray, lam: float, max_iter: int) -> Any:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        raise InputError(f"a linear probe needs training samples of at least 2 classes, got {np.unique(y)}")
    clf = LogisticRegression(C=1.0 / lam, solver="lbfgs", max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="The number of unique classes")  # few-shot fits
        return clf.fit(x, y)


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)``: (kept, held out) with ``round(fraction·n)`` held out, sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    k = round(fraction * n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def _balanced(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
    lam: float | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 1000,
) -> dict[str, Any]:
    """Logistic-regression probe; λ swept on a validation split when ``lam`` is None.

    Returns top1, top5, balanced_accuracy, lambda, n_visited, ``correct`` (0/1 per test item) and
    ``classifier`` (the fitted scikit-learn model)."""
    x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test) or len(x_test) == 0:
        raise InputError("linear probe needs matching features/labels and a non-empty test set")
    visited: list[int] = []
    if lam is None:
        fit_i, val_i = _split(len(y_train), val_fraction, seed)
        if len(val_i) == 0 or len(np.unique(y_train[fit_i])) < 2:
            raise InputError(f"{len(y_train)} training samples are too few for a validation split")

        def score(i: int) -> float:
            clf = _logreg(x_train[fit_i], y_train[fit_i], float(LAMBDA_GRID[i]), max_iter)
            return float((clf.predict(x_train[val_i]) == y_train[val_i]).mean())

        idx, visited = search_peak(score)
        lam = float(LAMBDA_GRID[idx])
    clf = _logreg(x_train, y_train, lam, max_iter)
    proba = clf.predict_proba(x_test)
    order = np.argsort(-proba, axis=1, kind="stable")
    ranked = clf.classes_[order]
    correct = (ranked[:, 0] == y_test).astype(np.float64)
    top5 = (ranked[:, :5] == y_test[:, None]).any(1).mean() if n_classes >= 5 else float("nan")
    return {
        "top1": float(correct.mean()),
        "top5": float(top5),
        "balanced_accuracy": _balanced(y_test, ranked[:, 0]),
        "lambda": lam,
        "n_visited": len(visited),
        "correct": correct,
        "classifier": clf,
    }


def knn_predict(
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray,
    x_test: np.ndarray | torch.Tensor,
    k: int = 20,
    chunk: int = 1024,
) -> np.ndarray:
    """Unweighted majority vote of the ``k`` most cosine-similar training features (ties: see module)."""
    if k < 1 or chunk < 1:
        raise InputError(f"k and chunk must be >= 1, got k={k}, chunk={chunk}")
    xt = F.normalize(torch.as_tensor(np.asarray(x_train), dtype=torch.float32), dim=-1)
    xq = F.normalize(torch.as_tensor(np.asarray(x_test), dtype=torch.float32), dim=-1)
    yt = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    if xt.shape[0] != yt.shape[0] or xt.shape[0] == 0 or xq.ndim != 2 or xq.shape[1] != xt.shape[1]:
        raise InputError(f"kNN needs [N, d] train/test features and N labels; got {tuple(xt.shape)}")
    k = min(k, xt.shape[0])
    n_cls = int(yt.max()) + 1
    out = []
    for i in range(0, xq.shape[0], chunk):
        sims = xq[i : i + chunk] @ xt.T
        nbr = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]
        votes = torch.zeros(nbr.shape[0], n_cls).scatter_add_(1, yt[nbr], torch.ones(nbr.shape))
        out.append(votes.argmax(1))  # first maximum: lowest class index
    return torch.cat(out).numpy()


def fewshot_indices(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` indices per class present in ``labels`` (≥ 0), drawn without replacement, sorted."""
    labels = np.asarray(labels)
    out = []
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        if len(members) < k:
            raise InputError(f"class {c} has {len(members)} training samples, fewer than {k} shots")
        out.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(out))


def fewshot_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    shots: Sequence[int],
    seeds: Sequence[int],
    lam: float,
    max_iter: int = 1000,
) -> dict[int, float]:
    """Mean test top-1 over seeds of k-shot logistic regression (λ fixed) for each k (NaN if too few)."""
    counts = np.bincount(y_train)
    out: dict[int, float] = {}
    for k in shots:
        if k < 1:
            raise ConfigError(f"few-shot k must be >= 1, got {k}")
        if counts[counts > 0].min() < k:
            out[int(k)] = float("nan")
            continue
        accs = []
        for s in seeds:
            idx = fewshot_indices(y_train, k, np.random.default_rng([int(s), int(k)]))
            clf = _logreg(x_train[idx], y_train[idx], lam, max_iter)
            accs.append(float((clf.predict(x_test) == y_test).mean()))
        out[int(k)] = float(np.mean(accs))
    return out


def generative_probes(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> dict[str, float]:
    """Test top-1 of Gaussian naive Bayes (``gnb``) and linear discriminant analysis (``lda``)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.naive_bayes import GaussianNB

    out = {"gnb": float((GaussianNB().fit(x_train, y_train).predict(x_test) == y_test).mean())}
    if len(y_train) > len(np.unique(y_train)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "variables are collinear"
            lda = LinearDiscriminantAnalysis().fit(x_train, y_train)
        out["lda"] = float((lda.predict(x_test) == y_test).mean())
    else:
        out["lda"] = float("nan")
    return out


def _options(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(PROBE_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown probe option(s) {unknown}; valid: {sorted(PROBE_DEFAULTS)}")
    opts = {**PROBE_DEFAULTS, **raw}
    bad_lam = opts["lam"] is not None and not float(opts["lam"]) > 0
    if (
        int(opts["max_train"]) < 2
        or int(opts["knn_k"]) < 1
        or not 0 < float(opts["val_fraction"]) < 1
        or bad_lam
    ):
        raise ConfigError(f"probe options out of range: {opts}")
    return opts


def _train_index(ctx: EvalContext, opts: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per class task, the (seeded, capped, sorted) labelled train_pairs images it is fit on."""
    out: dict[str, np.ndarray] = {}
    if ctx.train_pairs is None:
        return out
    for name, task in ctx.pairs.tasks.items():
        train = ctx.train_pairs.tasks.get(name)
        if train is None or not (train.labels >= 0).any():
            continue
        if tuple(train.classnames) != tuple(task.classnames):
            raise InputError(f"task {name!r} has different class names in train_pairs")
        perm = np.random.default_rng(int(opts["split_seed"])).permutation(np.flatnonzero(train.labels >= 0))
        out[name] = np.sort(perm[: int(opts["max_train"])])
    return out


def _embed(ctx: EvalContext, pairs: PairSet, idx: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Normalised image embeddings of ``pairs.images[idx]`` (float64), in chunks."""
    ids = torch.from_numpy(idx)
    outs = [ctx.enc.images(pairs.images[ids[i : i + chunk]]).float() for i in range(0, len(ids), chunk)]
    return F.normalize(torch.cat(outs), dim=-1).double().numpy()


def _splits(
    ctx: EvalContext, opts: dict[str, Any]
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]]:
    """Per labelled class task: (x_fit, y_fit, x_test, y_test, self_split); train images embedded once."""
    train_idx = _train_index(ctx, opts)
    union = np.unique(np.concatenate(list(train_idx.values()))) if train_idx else np.empty(0, np.int64)
    train_emb = _embed(ctx, ctx.train_pairs, union) if len(union) else None  # type: ignore[arg-type]
    x_all = ctx.image_emb.double().numpy()
    out = {}
    for name, task in ctx.pairs.tasks.items():
        labelled = np.flatnonzero(task.labels >= 0)
        if len(labelled) == 0:
            continue
        if name in train_idx:
            idx = train_idx[name]
            y_fit = ctx.train_pairs.tasks[name].labels[idx]  # type: ignore[union-attr]
            x_fit = train_emb[np.searchsorted(union, idx)]  # type: ignore[index]
            out[name] = (x_fit, y_fit, x_all[labelled], task.labels[labelled], False)
            continue
        _log.warning(
            "probe: task %r has no training split with labels: fitting on a seeded half of the %d "
            "labelled images of %r and reporting the other half (probe/%s/self_split = 1)",
            name,
            len(labelled),
            ctx.pairs.name,
            name,
        )
        perm = np.random.default_rng(int(opts["split_seed"])).permutation(labelled)
        half = len(perm) // 2
        fit, test = np.sort(perm[:half][: int(opts["max_train"])]), np.sort(perm[half:])
        out[name] = (x_all[fit], task.labels[fit], x_all[test], task.labels[test], True)
    return out


@EVAL_TASKS.register("probe")
def probe_task(ctx: EvalContext) -> TaskResult:
    """Linear, kNN, few-shot, GNB and LDA probes for every labelled class task (keys in module doc)."""
    from threadpoolctl import threadpool_limits

    opts = _options(dict(ctx.options.get("probe", {})))
    with threadpool_limits(torch.get_num_threads()):  # BLAS threads = torch's (oversubscription)
        return _probe_all(ctx, opts)


def _probe_all(ctx: EvalContext, opts: dict[str, Any]) -> TaskResult:
    out: dict[str, float] = {}
    examples: dict[str, np.ndarray] = {}
    for name, (x_fit, y_fit, x_te, y_te, self_split) in _splits(ctx, opts).items():
        task = ctx.pairs.tasks[name]
        if len(np.unique(y_fit)) < 2 or len(y_te) == 0:
            warnings.warn(f"probe: task {name!r} skipped (fewer than 2 training classes)", stacklevel=2)
            continue
        p = f"probe/{name}"
        lin = linear_probe(
            x_fit,
            y_fit,
            x_te,
            y_te,
            len(task.classnames),
            opts["lam"],
            float(opts["val_fraction"]),
            int(opts["split_seed"]),
            int(opts["max_iter"]),
        )
        for key in ("top1", "top5", "balanced_accuracy"):
            out[f"{p}/linear_{key}"] = lin[key]
        out[f"{p}/linear_lambda"] = lin["lambda"]
        examples[f"{p}/linear_top1"] = lin["correct"]
        knn = (knn_predict(x_fit, y_fit, x_te, int(opts["knn_k"])) == y_te).astype(np.float64)
        out[f"{p}/knn_top1"], examples[f"{p}/knn_top1"] = float(knn.mean()), knn
        shots = fewshot_probe(
            x_fit, y_fit, x_te, y_te, opts["shots"], opts["seeds"], lin["lambda"], int(opts["max_iter"])
        )
        out.update({f"{p}/fewshot_{k}_top1": v for k, v in shots.items()})
        out.update({f"{p}/{k}_top1": v for k, v in generative_probes(x_fit, y_fit, x_te, y_te).items()})
        out[f"{p}/n_train"], out[f"{p}/n_test"] = float(len(y_fit)), float(len(y_te))
        out[f"{p}/self_split"] = float(self_split)
    return out, examples
