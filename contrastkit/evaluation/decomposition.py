"""R-SPLICE — sparse non-negative concept decomposition of image embeddings (SpLiCE).

Paper: Bhalla, Oesterling et al., NeurIPS 2024, "Interpreting CLIP with Sparse Linear Concept
Embeddings (SpLiCE)". Each image embedding is written as a sparse, non-negative combination of the
text embeddings of a concept vocabulary (evaluation only, nothing is trained)::

    x̂ = norm(x),  z = norm(x̂ − μ_img),  c_k = norm(norm(t_k) − μ_txt)        (C = [c_1 … c_K])
    w* = argmin_{w ≥ 0}  ‖z − Cw‖²₂ + 2λ‖w‖₁                                     (the paper's form)

``μ_img`` is the mean normalised image embedding of the evaluated split (the paper uses a
precomputed MSCOCO mean); ``μ_txt`` the mean of the normalised concept embeddings themselves
(``text_mean: concepts``, what the released code does) or the mean normalised caption embedding of
the split (``captions``, the text modality mean). Solver: scikit-learn's
``Lasso(positive=True, fit_intercept=False)``, which minimises ``(1/(2d))‖z − Cw‖² + α‖w‖₁``;
multiplied by 2d this is the objective above with ``α = λ/d`` (the released code's ``l1_penalty``
equals 2λ: it passes ``α = l1_penalty/(2d)``). Coordinate descent gives exact zeros; ``tol`` and
``max_iter`` are sklearn's (checked against a brute-force solver: every support, KKT-checked).

Measured per image: ``reconstruction_cosine = cos(z, Cw)`` (0 when w = 0; 1 when z lies in the
cone of C and λ → 0), ``recomposed_cosine = cos(x̂, norm(norm(Cw) + μ_img))`` (SpLiCE's dense
recomposition compared with the original embedding), ``n_nonzero = |S|`` with ``S = {k : w_k > 0}``.
Ground truth (a set whose ``attribute_names`` are ``…/key=value``, e.g. Shapes): ``T`` = the
vocabulary words that are words of the value of an active attribute whose key is in ``attributes``
(default shape and colour: "a red circle to the left of a blue square" → {red, circle, blue,
square}). ``precision = |S ∩ T| / |S|`` (mean over images with S ≠ ∅), ``recall = |S ∩ T| / |T|``
and ``r_precision = |top_k ∩ T| / k`` with ``k = |T|`` and ``top_k`` the k largest NON-ZERO weights
(ties: lower index; fewer than k non-zeros count as misses), both means over images with T ≠ ∅.
Also ``empty`` (share of images with w = 0), ``n_concepts`` and ``lambda``.
Options (``ctx.options["concepts"]``, unknown keys raise ConfigError): ``vocabulary`` (a file, one
word a line, or a list; default: the words of the ``attributes`` values — Shapes: its 8 shape and 8
colour names —, else the split's caption words), ``attributes`` (shape, color), ``template`` ("{}",
the bare word as SpLiCE; e.g. "a photo of a {}"), ``lam`` (0.1), ``text_mean`` (concepts),
``max_iter``/``tol`` (sklearn), ``n_examples`` (50), ``top`` (10), ``plot_top`` (25). Outputs in
``plot_dir``: ``concepts.json`` (options, vocabulary, per concept the mean weight and share of
images with w > 0, and the first images' non-zero concepts with their truth) and ``concepts.png``.
TEST ORACLES: z = Cw* with sparse w* ≥ 0 is recovered (support, weights) at small λ with cosine 1;
by the KKT conditions w = 0 exactly when λ ≥ max_k c_k·z; precision/recall on hand-made supports.
Related: ``multilabel`` (images rank the same concepts by cosine, no decomposition).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings
from contrastkit.core.concepts import caption_vocabulary
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.io import atomic_write_json, save_png
from contrastkit.data.pairs import PairSet
from contrastkit.evaluation.late_interaction import is_token_set
from contrastkit.evaluation.prompts import prompt_entries
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult

__all__ = [
    "CONCEPT_DEFAULTS",
    "attribute_truth",
    "center_normalize",
    "concept_scores",
    "concepts_task",
    "plot_concept_histogram",
    "reconstruction_cosine",
    "splice_weights",
]

CONCEPT_DEFAULTS: dict[str, Any] = {
    "vocabulary": None,  # None: the attribute words (Shapes), else the split's caption words; list or file
    "attributes": ("shape", "color"),  # attribute keys whose words are the ground truth
    "template": "{}",  # the bare word, as SpLiCE; e.g. "a photo of a {}"
    "lam": 0.1,  # λ of ‖z − Cw‖² + 2λ‖w‖₁ (SpLiCE's l1_penalty 0.2)
    "text_mean": "concepts",  # the released code's; or "captions" (the text modality mean)
    "max_iter": 10000,
    "tol": 1e-6,
    "n_examples": 50,  # images listed in concepts.json
    "top": 10,  # concepts listed per image
    "plot_top": 25,  # bars in the histogram
}


def center_normalize(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``norm(norm(x) − mean)`` in float64 (rows); ``mean`` is a ``[d]`` modality mean."""
    return F.normalize(F.normalize(x.double(), dim=-1) - mean.double(), dim=-1)


def splice_weights(
    z: torch.Tensor, dictionary: torch.Tensor, lam: float, max_iter: int = 10000, tol: float = 1e-6
) -> np.ndarray:
    """``[N, K]`` weights ``argmin_{w ≥ 0} ‖z_i − Cw‖² + 2λ‖w‖₁`` per row of ``z`` [N, d] over the
    rows of ``dictionary`` [K, d] (sklearn Lasso, ``α = λ/d``; module docstring)."""
    from sklearn.linear_model import Lasso

    check_embeddings("z", z)
    check_embeddings("dictionary", dictionary)
    if z.shape[1] != dictionary.shape[1]:
        raise InputError(f"embeddings have d={z.shape[1]} but the concept dictionary d={dictionary.shape[1]}")
    if not lam > 0:
        raise ConfigError(f"lam must be > 0 (λ of the 2λ‖w‖₁ penalty), got {lam}")
    d = z.shape[1]
    c = dictionary.double().numpy().T  # [d, K]: the concepts are the regression's features
    y = z.double().numpy().T  # [d, N]: one target per image, fitted independently
    lasso = Lasso(alpha=lam / d, fit_intercept=False, positive=True, max_iter=max_iter, tol=tol)
    lasso.fit(c, y)
    return np.maximum(np.asarray(lasso.coef_, dtype=np.float64).reshape(z.shape[0], -1), 0.0)


def reconstruction_cosine(z: torch.Tensor, weights: np.ndarray, dictionary: torch.Tensor) -> np.ndarray:
    """``cos(z_i, Σ_k w_ik c_k)`` per row; 0 for an all-zero ``w_i``."""
    rec = torch.from_numpy(np.asarray(weights, dtype=np.float64)) @ dictionary.double()
    return F.cosine_similarity(z.double(), rec, dim=-1, eps=1e-300).numpy()


def concept_scores(weights: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image ``precision`` (images with a non-zero weight), ``recall`` and ``r_precision``
    (images with a true concept) of the supports ``weights > 0`` against ``truth`` (bool
    ``[N, K]``); module docstring. Each value is the per-image array whose mean is the metric."""
    w, t = np.asarray(weights, dtype=np.float64), np.asarray(truth, dtype=bool)
    if w.shape != t.shape:
        raise InputError(f"weights {w.shape} and truth {t.shape} must have the same shape")
    support = w > 0
    hits = (support & t).sum(1)
    n_s, n_t = support.sum(1), t.sum(1)
    order = np.argsort(-w, axis=1, kind="stable")  # weight desc, lower index first
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(w.shape[1])[None, :].repeat(len(w), 0), axis=1)
    top = support & (rank < n_t[:, None])  # the k = |T| largest non-zero weights
    has_s, has_t = n_s > 0, n_t > 0
    return {
        "precision": hits[has_s] / n_s[has_s],
        "recall": hits[has_t] / n_t[has_t],
        "r_precision": (top & t).sum(1)[has_t] / n_t[has_t],
    }


def _keyed_words(names: Sequence[str], keys: Sequence[str]) -> list[tuple[int, str]]:
    """(attribute column, word) for every word of the value of an attribute ``…/key=value`` with
    ``key`` in ``keys`` (words parsed as captions: "position=on the left" → "left")."""
    out = []
    for j, name in enumerate(names):
        key, _, value = name.rpartition("/")[2].partition("=")
        if key in keys and value:
            try:
                out += [(j, w) for w in caption_vocabulary([value])]
            except InputError:  # a value of stop words only
                continue
    return out


def attribute_truth(pairs: PairSet, vocabulary: Sequence[str], keys: Sequence[str]) -> np.ndarray | None:
    """bool ``[N, K]``: concept k is a word of the value of an active attribute whose key is in
    ``keys`` (``object1/color=red`` → key ``color``, word ``red``); ``None`` when the set has no
    such attributes (then no precision/recall)."""
    cols = _keyed_words(pairs.attribute_names, keys)
    if pairs.attributes is None or not cols:
        return None
    index = {w.lower(): k for k, w in enumerate(vocabulary)}
    active = pairs.attributes.numpy() > 0
    truth = np.zeros((len(pairs), len(vocabulary)), dtype=bool)
    for j, word in cols:
        if word in index:
            truth[:, index[word]] |= active[:, j]
    return truth


def _vocabulary(o: dict[str, Any], pairs: PairSet) -> list[str]:
    """The option's list or file, else the attribute words, else the split's caption words."""
    keyed = list(dict.fromkeys(w for _, w in _keyed_words(pairs.attribute_names, o["attributes"])))
    if o["vocabulary"] is not None:
        words, where = prompt_entries(o["vocabulary"], "concept vocabulary")
    elif keyed:
        words, where = tuple(keyed), "the attribute words"
    else:
        words, where = tuple(caption_vocabulary(pairs.captions)), "the caption words"
    if len({w.lower() for w in words}) < len(words):
        raise ConfigError(f"{where} lists a concept twice (case-insensitive)")
    return list(words)


def _options(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(CONCEPT_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown concepts option(s) {unknown}; valid: {sorted(CONCEPT_DEFAULTS)}")
    o = {**CONCEPT_DEFAULTS, **raw}
    if "{}" not in str(o["template"]):
        raise ConfigError(f"concepts template {o['template']!r} has no '{{}}' placeholder")
    if o["text_mean"] not in ("captions", "concepts"):
        raise ConfigError(f"concepts text_mean must be 'captions' or 'concepts', got {o['text_mean']!r}")
    if isinstance(o["attributes"], str):
        o["attributes"] = (o["attributes"],)
    ints = ("max_iter", "n_examples", "top", "plot_top")
    if not float(o["lam"]) > 0 or not float(o["tol"]) > 0 or any(int(o[k]) < 1 for k in ints):
        raise ConfigError(f"concepts options out of range (lam, tol > 0; counts >= 1): {o}")
    return o


def _examples(pairs: PairSet, words: list[str], w: np.ndarray, truth, o: dict[str, Any]) -> list[dict]:
    out = []
    for i in range(min(int(o["n_examples"]), len(w))):
        order = [k for k in np.argsort(-w[i], kind="stable")[: int(o["top"])] if w[i, k] > 0]
        item: dict[str, Any] = {"index": i, "captions": list(pairs.captions[i])}
        if truth is not None:
            item["truth"] = [words[k] for k in np.flatnonzero(truth[i])]
        item["concepts"] = [{"concept": words[k], "weight": round(float(w[i, k]), 6)} for k in order]
        out.append(item)
    return out


def plot_concept_histogram(
    words: list[str], mean_w: np.ndarray, share: np.ndarray, path: Path, title: str, top: int
) -> None:
    """Horizontal bars: mean weight per concept over the images (SpLiCE's dataset decomposition),
    the ``top`` largest non-zero ones, labelled with the share of images using each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [k for k in np.argsort(-mean_w, kind="stable")[:top] if mean_w[k] > 0][::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * max(len(order), 4) + 1.4))
    ax.barh(range(len(order)), mean_w[order], color="#4c72b0")
    ax.set_yticks(range(len(order)), [f"{words[k]} ({share[k]:.0%})" for k in order], fontsize=8)
    ax.set_xlabel("mean concept weight over images (label: share of images with weight > 0)", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


@EVAL_TASKS.register("concepts")
def concepts_task(ctx: EvalContext) -> TaskResult:
    """Sparse non-negative decomposition of each image embedding over concept text embeddings (SpLiCE,
    Bhalla et al. 2024). z = norm(norm(x) − mean image embedding of the split), C = concept text
    embeddings (defaults: template "{}", the data set's shape and colour words), each
    norm(norm(t) − mean concept embedding); w = argmin_{w ≥ 0} ‖z − Cw‖² + 2λ‖w‖₁
    (sklearn Lasso, positive, α = λ/d, λ = 0.1 by default); reconstruction_cosine = cos(z, Cw) (0 if
    w = 0), n_nonzero = |S|, S = {k: w_k > 0}; with attribute ground truth T: precision = |S∩T|/|S|
    (images with S ≠ ∅), recall = |S∩T|/|T|, r_precision = |top-|T| non-zero ∩ T|/|T| (T ≠ ∅).

    Options, files and the recomposed cosine: the module docstring."""
    o = _options(dict(ctx.options.get("concepts", {})))
    if is_token_set(ctx.image_emb):
        raise InputError("the concepts task needs one embedding per image, not token sets")
    words = _vocabulary(o, ctx.pairs)
    raw = F.normalize(ctx.enc.texts([str(o["template"]).format(w) for w in words]).float(), dim=-1)
    x = ctx.image_emb.double()
    mu_img = x.mean(0)
    mu_txt = (ctx.text_emb if o["text_mean"] == "captions" else raw).double().mean(0)
    z, dictionary = center_normalize(x, mu_img), center_normalize(raw, mu_txt)
    w = splice_weights(z, dictionary, float(o["lam"]), int(o["max_iter"]), float(o["tol"]))
    cos = reconstruction_cosine(z, w, dictionary)
    rec = torch.from_numpy(w) @ dictionary
    recomposed = F.normalize(F.normalize(rec, dim=-1) + mu_img, dim=-1)
    n_nonzero = (w > 0).sum(1).astype(np.float64)
    examples = {
        "concepts/reconstruction_cosine": cos,
        "concepts/recomposed_cosine": (recomposed * F.normalize(x, dim=-1)).sum(-1).numpy(),
        "concepts/n_nonzero": n_nonzero,
    }
    truth = attribute_truth(ctx.pairs, words, tuple(o["attributes"]))
    if truth is not None:
        examples |= {f"concepts/{k}": v.astype(np.float64) for k, v in concept_scores(w, truth).items()}
    out = {k: float(v.mean()) if len(v) else float("nan") for k, v in examples.items()}
    out |= {"concepts/empty": float((n_nonzero == 0).mean()), "concepts/n_concepts": float(len(words))}
    out["concepts/lambda"] = float(o["lam"])
    plot_dir = ctx.options.get("plot_dir")
    if plot_dir:
        mean_w, share = w.mean(0), (w > 0).mean(0)
        record = {
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in o.items()},
            "vocabulary": words,
            "histogram": {
                wd: {"mean_weight": float(m), "share": float(s)} for wd, m, s in zip(words, mean_w, share)
            },
            "images": _examples(ctx.pairs, words, w, truth, o),
        }
        atomic_write_json(Path(plot_dir) / "concepts.json", record)
        title = f"{ctx.pairs.name}: SpLiCE concept histogram (λ = {o['lam']}, {len(words)} concepts)"
        plot_concept_histogram(
            words, mean_w, share, Path(plot_dir) / "concepts.png", title, int(o["plot_top"])
        )
    return out, examples
