"""Compositional tests: Winoground/BiVLC scores, group matching, TTM selection, MMVP, blind pairs,
feature-suppression probes.

Score tensors ``s[g, i, j]`` = score(image i, caption j) of group g; caption j belongs to image j.
Comparisons are strict and **ties count as failures** everywhere (except MMVP, see below). Inputs
are compared in float64 (an exact widening of float32, so ties are preserved).

* E-WINOGROUND (Thrush et al. 2022; CLIP_benchmark ``image_caption_selection``) — per 2×2 group:
  text = [s00 > s01] ∧ [s11 > s10] (each image prefers its caption), image = [s00 > s10] ∧
  [s11 > s01] (each caption prefers its image), group = text ∧ image. Chance (continuous random
  scores): 1/4, 1/4, 1/6. :func:`caption_selection_scores` is the general N images × M captions form
  (truth k↔k for k < min(N, M); text = every image k ranks caption k strictly first, image = every
  caption k ranks image k strictly first) — CLIP_benchmark takes an argmax, which credits a tie to
  the lower index; here a tie fails, so N = M = 2 equals the 2×2 formulas exactly.
* E-BIVLC (Miranda et al. 2024) — Ipos2T = s00 > s01, Ineg2T = s11 > s10, Tpos2I = s00 > s10,
  Tneg2I = s11 > s01; I2T = Ipos2T ∧ Ineg2T (= text), T2I = Tpos2I ∧ Tneg2I (= image, the
  text→image direction), group = I2T ∧ T2I.
* E-GROUPMATCH (Zhu et al. 2025, yinglunz/test-time-matching) — a k×k group is correct iff the
  identity is the *unique* maximum-weight matching: 2×2 closed form s00 + s11 > s01 + s10 (chance
  1/2, and group ⇒ group-match); k ≤ 6 enumerates the k! permutations (vectorised over groups);
  larger k: ``scipy.optimize.linear_sum_assignment`` for the best matching avoiding each (i, i), all
  of which must score strictly less than the identity (float64 sums). :func:`global_match_accuracy`:
  Hungarian on a whole [N, M] matrix, fraction of rows matched to their own column (scipy's choice
  among tied optima).
* E-TTM selection — margin m = s00 + s11 − s01 − s10; thresholds τ_t = linspace(2, 0, T) (spec
  form, "decreasing linearly from 2.0 to 0"); select m ≥ τ (identity, +1) or m ≤ −τ (swapped, −1);
  at τ = 0 a zero margin counts as identity; τ = ∞ selects nothing. Fine-tuning is not here.
* E-MMVP (Tong et al. 2024, ``evaluate_vlm.py``) — pair correct iff statement 0 picks image 0
  (p > 0.5 ⇔ s00 > s10) and statement 1 picks image 1, which wins exact ties (s11 ≥ s01); raw
  scores are compared (the softmax is monotone). Blind-pair mining (thresholds UNVERIFIED, config):
  pairs i < j with cos_a > ``hi`` (default 0.95) that a reference says differ — a second encoder
  (cos_b < ``lo``, default 0.6) and/or attribute labels (some attribute labelled in both, unequal;
  −1 = unknown). rate = #blind / #differing pairs; per attribute the same among pairs differing in it.
* Feature suppression (Xue et al. 2023; Zhang et al. 2024) — which attributes a linear probe
  (E-LINPROBE's ``linear_probe``) still reads from the normalised image embedding: accuracy per
  attribute vs chance = the test set's majority-class rate; gain = (acc − chance)/(1 − chance).
  Source ``shapes`` probes shape, color, size, position on generated single-object Shapes
  (:func:`~contrastkit.data.swaps.make_attribute_set`, fit split 0, test split 1); source ``pairs``
  probes the evaluated set's own class tasks (for Shapes: shape, color, shape+color of one-object
  images) fit on ``train_pairs`` or a seeded 50/50 split. ``auto``: shapes for a Shapes set.

Tasks (options under ``ctx.options[name]``; unknown keys raise ConfigError): ``winoground`` →
``winoground/<kind>/{text,image,group,group_match}`` (per-group 0/1 arrays as examples; swap sets of
:mod:`contrastkit.data.swaps` at the evaluated images' size); ``blind_pairs`` → ``blind_pairs/{rate,
count,n_differing}`` and ``blind_pairs/<task>/rate`` over the evaluated set's class tasks;
``suppression`` → ``suppression/<attribute>/{accuracy,chance,gain}`` (per-test-image examples; source
``pairs`` adds ``suppression/self_split``, 1 when it fit on a seeded half of the evaluated set).

``winoground`` and ``suppression`` with source ``shapes`` generate their own images from their seed
(at the evaluated images' size) and never read the evaluated split: their numbers are the same for
every split, so they are registered in ``SPLIT_INDEPENDENT`` and a report evaluates them once.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.pairs import PairSet
from contrastkit.data.swaps import KINDS, SwapSet, make_attribute_set, make_swap_sets
from contrastkit.evaluation.encoders import Encoders
from contrastkit.evaluation.probes import linear_probe
from contrastkit.evaluation.tasks import EVAL_TASKS, SPLIT_INDEPENDENT, EvalContext, TaskResult

__all__ = [
    "BLIND_DEFAULTS",
    "SUPPRESSION_DEFAULTS",
    "WINOGROUND_DEFAULTS",
    "BlindPairs",
    "attribute_probe",
    "bivlc_scores",
    "caption_selection_scores",
    "global_match_accuracy",
    "group_match_scores",
    "mine_blind_pairs",
    "mmvp_pair_scores",
    "swap_scores",
    "ttm_margins",
    "ttm_select",
    "ttm_thresholds",
    "winoground_scores",
]

WINOGROUND_DEFAULTS: dict[str, Any] = {"n": 200, "kinds": KINDS, "seed": 0, "image_size": None}
BLIND_DEFAULTS: dict[str, Any] = {"hi": 0.95, "tasks": None, "chunk": 1024}
SUPPRESSION_DEFAULTS: dict[str, Any] = {
    "source": "auto",  # auto | shapes | pairs
    "n_fit": 2000,
    "n_test": 1000,
    "seed": 0,
    "lam": 1e-3,  # fixed L2 penalty (fast); None runs E-LINPROBE's λ sweep (~20 fits per attribute)
    "image_size": None,
}
_ENUMERATE_MAX_K = 6
_log = logging.getLogger(__name__)


def _as_scores(s: torch.Tensor | np.ndarray, ndim: int = 3) -> np.ndarray:
    a = s.detach().cpu().double().numpy() if isinstance(s, torch.Tensor) else np.asarray(s, np.float64)
    if a.ndim != ndim or 0 in a.shape:
        want = "[groups, images, captions]" if ndim == 3 else "[images, captions]"
        raise InputError(f"scores must have shape {want} with no empty axis, got {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(f"scores contain {int((~np.isfinite(a)).sum())} non-finite value(s)")
    return a


def _two_by_two(s: torch.Tensor | np.ndarray) -> tuple[np.ndarray, ...]:
    a = _as_scores(s)
    if a.shape[1:] != (2, 2):
        raise InputError(f"expected 2×2 groups [G, 2, 2], got {a.shape}")
    return a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1]


def winoground_scores(s: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Per-group 0/1 ``text``, ``image``, ``group`` scores of ``s`` [G, 2, 2] (ties fail)."""
    s00, s01, s10, s11 = _two_by_two(s)
    text, image = (s00 > s01) & (s11 > s10), (s00 > s10) & (s11 > s01)
    return {k: v.astype(np.float64) for k, v in (("text", text), ("image", image), ("group", text & image))}


def bivlc_scores(s: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Per-group 0/1 BiVLC ``i2t``, ``t2i``, ``group`` and the four sub-scores."""
    s00, s01, s10, s11 = _two_by_two(s)
    sub = {"ipos2t": s00 > s01, "ineg2t": s11 > s10, "tpos2i": s00 > s10, "tneg2i": s11 > s01}
    i2t, t2i = sub["ipos2t"] & sub["ineg2t"], sub["tpos2i"] & sub["tneg2i"]
    out = {"i2t": i2t, "t2i": t2i, "group": i2t & t2i, **sub}
    return {k: v.astype(np.float64) for k, v in out.items()}


def caption_selection_scores(s: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """N×M groups: per-group 0/1 ``text``, ``image`` and ``group`` (= both); ties fail."""
    a = _as_scores(s)
    k = min(a.shape[1:])
    d = np.arange(k)
    diag = a[:, d, d]
    rows, cols = a[:, :k, :].copy(), a[:, :, :k].copy()
    rows[:, d, d] = -np.inf
    cols[:, d, d] = -np.inf
    text = (diag > rows.max(2)).all(1)
    image = (diag > cols.max(1)).all(1)
    return {k: v.astype(np.float64) for k, v in (("text", text), ("image", image), ("group", text & image))}


def _identity_is_unique_max(m: np.ndarray) -> bool:
    """Every matching that avoids some (i, i) scores strictly below the identity (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    k, r = len(m), np.arange(len(m))
    ident = m[r, r].sum()
    penalty = m.min() - 1.0 - k * (m.max() - m.min())  # below any matching that avoids it
    for i in range(k):
        w = m.copy()
        w[i, i] = penalty
        _, c = linear_sum_assignment(w, maximize=True)
        if m[r, c].sum() >= ident:
            return False
    return True


def group_match_scores(s: torch.Tensor | np.ndarray, method: str = "auto") -> np.ndarray:
    """Per-group 0/1: the identity is the unique max-weight matching of ``s`` [G, k, k].
    ``method``: ``auto`` (closed form for k = 2, enumeration for k ≤ 6, else Hungarian),
    ``enumerate`` or ``hungarian``."""
    a = _as_scores(s)
    k = a.shape[1]
    if a.shape[2] != k or k < 2:
        raise InputError(f"group matching needs square k×k groups with k >= 2, got {a.shape}")
    if method not in ("auto", "enumerate", "hungarian"):
        raise InputError(f"unknown method {method!r}; choose auto, enumerate or hungarian")
    if method == "auto" and k == 2:
        return (a[:, 0, 0] + a[:, 1, 1] > a[:, 0, 1] + a[:, 1, 0]).astype(np.float64)
    if method == "enumerate" or (method == "auto" and k <= _ENUMERATE_MAX_K):
        perms = np.array(list(itertools.permutations(range(k))))  # identity first
        sums = a[:, np.arange(k), perms].sum(-1)  # [G, k!]
        return (sums[:, 0] > sums[:, 1:].max(1)).astype(np.float64)
    return np.array([_identity_is_unique_max(m) for m in a], dtype=np.float64)


def global_match_accuracy(s: torch.Tensor | np.ndarray) -> np.ndarray:
    """Hungarian matching of a whole [N, M] matrix (N ≤ M): per row, 1 if matched to its own column."""
    from scipy.optimize import linear_sum_assignment

    a = _as_scores(s, ndim=2)
    if a.shape[0] > a.shape[1]:
        raise InputError(f"global matching needs rows <= columns, got {a.shape}")
    r, c = linear_sum_assignment(a, maximize=True)
    return (c == r).astype(np.float64)


def ttm_margins(s: torch.Tensor | np.ndarray) -> np.ndarray:
    """Group margins ``s00 + s11 − s01 − s10`` of 2×2 groups."""
    s00, s01, s10, s11 = _two_by_two(s)
    return s00 + s11 - s01 - s10


def ttm_thresholds(rounds: int = 10, start: float = 2.0, end: float = 0.0) -> np.ndarray:
    """τ_t for t = 0 … rounds−1, linear from ``start`` to ``end``."""
    if rounds < 1:
        raise InputError(f"rounds must be >= 1, got {rounds}")
    return np.linspace(start, end, rounds)


def ttm_select(margins: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """(selected group indices, orientation +1 identity / −1 swapped) for threshold ``tau`` ≥ 0."""
    m = np.asarray(margins, np.float64)
    if tau < 0 or np.isnan(tau):
        raise InputError(f"tau must be >= 0, got {tau}")
    orient = np.where(m >= tau, 1, np.where(m <= -tau, -1, 0))
    idx = np.flatnonzero(orient)
    return idx, orient[idx]


def mmvp_pair_scores(s: torch.Tensor | np.ndarray) -> np.ndarray:
    """MMVP-VLM per-pair 0/1: s00 > s10 and s11 ≥ s01 (an exact tie goes to the second image)."""
    s00, s01, s10, s11 = _two_by_two(s)
    return ((s00 > s10) & (s11 >= s01)).astype(np.float64)


@dataclass(frozen=True)
class BlindPairs:
    """Mined pairs ``[P, 2]`` (i < j, row-major order), their cosines, which attributes differ
    (``[P, A]``, None without labels), rate = P / n_differing, per-attribute rates ``[A]``."""

    pairs: np.ndarray
    cosine: np.ndarray
    differs: np.ndarray | None
    rate: float
    n_differing: int
    attribute_rates: np.ndarray


def _norm(name: str, x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
    if t.ndim != 2 or t.shape[0] < 2 or not torch.isfinite(t).all():
        raise InputError(f"{name} must be finite [N >= 2, d] embeddings, got {tuple(t.shape)}")
    return F.normalize(t, dim=-1)


def mine_blind_pairs(
    emb: torch.Tensor | np.ndarray,
    hi: float = 0.95,
    *,
    labels: np.ndarray | None = None,
    emb_b: torch.Tensor | np.ndarray | None = None,
    lo: float = 0.6,
    chunk: int = 1024,
) -> BlindPairs:
    """Pairs embedded alike (cos > ``hi``) that differ by ``labels`` [N, A] and/or by ``emb_b``."""
    x = _norm("emb", emb)
    n = x.shape[0]
    if labels is None and emb_b is None:
        raise InputError("blind-pair mining needs a reference: attribute labels and/or emb_b")
    lab = None if labels is None else torch.as_tensor(np.asarray(labels, np.int64))
    if lab is not None:
        lab = lab.reshape(n, -1) if lab.shape[0] == n and lab.ndim <= 2 else None
        if lab is None:
            raise InputError(f"labels must have shape [{n}] or [{n}, attributes], got {np.shape(labels)}")
    xb = None if emb_b is None else _norm("emb_b", emb_b)
    if xb is not None and xb.shape[0] != n:
        raise InputError(f"emb_b has {xb.shape[0]} rows for {n} images")
    if chunk < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}")
    n_attr = 0 if lab is None else lab.shape[1]
    found, cos, diffs = [], [], []
    n_diff, per_diff, per_blind = 0, torch.zeros(n_attr), torch.zeros(n_attr)
    cols = torch.arange(n)
    for i0 in range(0, n, chunk):
        rows = torch.arange(i0, min(i0 + chunk, n))
        upper = cols[None, :] > rows[:, None]
        sims = x[rows] @ x.T
        differ = upper.clone()
        if lab is not None:
            a, b = lab[rows][:, None, :], lab[None, :, :]
            by_attr = (a != b) & (a >= 0) & (b >= 0) & upper[..., None]  # [c, N, A]
            differ &= by_attr.any(-1)
        if xb is not None:
            differ &= (xb[rows] @ xb.T) < lo
        blind = differ & (sims > hi)
        n_diff += int(differ.sum())
        r, c = torch.nonzero(blind, as_tuple=True)
        found.append(torch.stack([rows[r], c], 1))
        cos.append(sims[r, c])
        if lab is not None:
            by_attr &= differ[..., None]
            per_diff += by_attr.sum((0, 1))
            per_blind += (by_attr & blind[..., None]).sum((0, 1))
            diffs.append(by_attr[r, c])
    pairs = torch.cat(found).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = (per_blind / per_diff).double().numpy()
    return BlindPairs(
        pairs=pairs,
        cosine=torch.cat(cos).double().numpy(),
        differs=torch.cat(diffs).numpy() if lab is not None else None,
        rate=len(pairs) / n_diff if n_diff else float("nan"),
        n_differing=n_diff,
        attribute_rates=rates,
    )


def attribute_probe(
    x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, lam: float | None = None
) -> dict[str, Any]:
    """Linear-probe ``accuracy`` of one attribute, ``chance`` (majority rate of ``y_test``), ``gain``
    and ``correct`` (0/1 per test item)."""
    y_fit, y_test = np.asarray(y_fit), np.asarray(y_test)
    n_cls = int(max(y_fit.max(), y_test.max())) + 1
    res = linear_probe(x_fit, y_fit, x_test, y_test, n_cls, lam=lam)
    chance = float(np.bincount(y_test).max() / len(y_test))
    gain = (res["top1"] - chance) / (1 - chance) if chance < 1 else float("nan")
    return {"accuracy": res["top1"], "chance": chance, "gain": gain, "correct": res["correct"]}


def _options(ctx: EvalContext, name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    raw = dict(ctx.options.get(name, {}))
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown {name} option(s) {unknown}; valid: {sorted(defaults)}")
    return {**defaults, **raw}


def _embed_images(enc: Encoders, images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    outs = [enc.images(images[i : i + chunk]).float() for i in range(0, len(images), chunk)]
    return F.normalize(torch.cat(outs), dim=-1)


def swap_scores(enc: Encoders, swaps: SwapSet) -> torch.Tensor:
    """``s[g, i, j]`` = cosine(image i, caption j) of every group of ``swaps``."""
    n, _, c, h, w = swaps.images.shape
    x = _embed_images(enc, swaps.images.reshape(2 * n, c, h, w)).reshape(n, 2, -1)
    t = F.normalize(enc.texts([cap for caps in swaps.captions for cap in caps]).float(), dim=-1)
    return torch.einsum("gid,gjd->gij", x, t.reshape(n, 2, -1))


def _image_size(ctx: EvalContext, opts: dict[str, Any]) -> int:
    return int(opts["image_size"] or ctx.pairs.images.shape[-1])


@EVAL_TASKS.register("winoground")
def winoground_task(ctx: EvalContext) -> TaskResult:
    """E-WINOGROUND + E-GROUPMATCH on Shapes swap sets of each kind."""
    opts = _options(ctx, "winoground", WINOGROUND_DEFAULTS)
    out: dict[str, float] = {}
    examples: dict[str, np.ndarray] = {}
    kinds = [opts["kinds"]] if isinstance(opts["kinds"], str) else list(opts["kinds"])
    for kind in kinds:
        swaps = make_swap_sets(int(opts["n"]), kind, _image_size(ctx, opts), int(opts["seed"]))
        s = swap_scores(ctx.enc, swaps)
        per_group = {**winoground_scores(s), "group_match": group_match_scores(s)}
        for key, arr in per_group.items():
            out[f"winoground/{kind}/{key}"] = float(arr.mean())
            examples[f"winoground/{kind}/{key}"] = arr
    return out, examples


SPLIT_INDEPENDENT["winoground"] = lambda ctx: True  # swap sets from (n, kind, seed) only


@EVAL_TASKS.register("blind_pairs")
def blind_pairs_task(ctx: EvalContext) -> TaskResult:
    """E-MMVP blind pairs of the evaluated images, differing in the labels of its class tasks."""
    opts = _options(ctx, "blind_pairs", BLIND_DEFAULTS)
    names = list(opts["tasks"] or [k for k, t in ctx.pairs.tasks.items() if (t.labels >= 0).any()])
    if not names or set(names) - set(ctx.pairs.tasks):
        raise ConfigError(f"blind_pairs tasks {names} must be labelled tasks of {sorted(ctx.pairs.tasks)}")
    labels = np.stack([ctx.pairs.tasks[k].labels for k in names], 1)
    res = mine_blind_pairs(ctx.image_emb, float(opts["hi"]), labels=labels, chunk=int(opts["chunk"]))
    out = {"blind_pairs/rate": res.rate, "blind_pairs/count": float(len(res.pairs))}
    out["blind_pairs/n_differing"] = float(res.n_differing)
    out.update({f"blind_pairs/{k}/rate": float(r) for k, r in zip(names, res.attribute_rates)})
    return out, {}


def _source(ctx: EvalContext, opts: dict[str, Any]) -> str:
    """The suppression source ``auto`` resolves to: shapes for a Shapes set, else pairs."""
    if opts["source"] != "auto":
        return str(opts["source"])
    return "shapes" if ctx.pairs.name.startswith("shapes") else "pairs"


SPLIT_INDEPENDENT["suppression"] = lambda ctx: (
    _source(ctx, _options(ctx, "suppression", SUPPRESSION_DEFAULTS)) == "shapes"
)


def _probe_sets(ctx: EvalContext, opts: dict[str, Any]) -> tuple[PairSet, np.ndarray, PairSet, np.ndarray]:
    """(fit set, its embeddings, test set, its embeddings) for the configured source."""
    source, seed, n_fit = _source(ctx, opts), int(opts["seed"]), int(opts["n_fit"])
    if source == "shapes":
        size = _image_size(ctx, opts)
        fit = make_attribute_set(n_fit, size, seed, split=0)
        test = make_attribute_set(int(opts["n_test"]), size, seed, split=1)
        return fit, _embed_images(ctx.enc, fit.images), test, _embed_images(ctx.enc, test.images)
    if source != "pairs":
        raise ConfigError(f"unknown suppression source {source!r}; choose auto, shapes or pairs")
    rng = np.random.default_rng(seed)
    if ctx.train_pairs is None:  # seeded 50/50 split of the evaluated set
        _log.warning(
            "suppression: no training split, fitting on a seeded half of %r and reporting the other half",
            ctx.pairs.name,
        )
        perm = rng.permutation(len(ctx.pairs))
        fit_i, test_i = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2 :])
        x = ctx.image_emb
        return ctx.pairs.subset(fit_i), x[fit_i], ctx.pairs.subset(test_i), x[test_i]
    train = ctx.train_pairs
    masks = [t.labels >= 0 for t in train.tasks.values()]
    if not masks:
        raise InputError(f"train_pairs {train.name!r} has no class tasks to probe")
    labelled = np.flatnonzero(np.any(masks, axis=0))
    fit = train.subset(np.sort(rng.permutation(labelled)[:n_fit]))
    return fit, _embed_images(ctx.enc, fit.images), ctx.pairs, ctx.image_emb


@EVAL_TASKS.register("suppression")
def suppression_task(ctx: EvalContext) -> TaskResult:
    """Feature-suppression probe: per attribute, linear-probe accuracy vs chance."""
    opts = _options(ctx, "suppression", SUPPRESSION_DEFAULTS)
    fit, x_fit, test, x_test = _probe_sets(ctx, opts)
    xf, xt = x_fit.double().numpy(), x_test.double().numpy()
    out: dict[str, float] = {}
    examples: dict[str, np.ndarray] = {}
    for name, task in fit.tasks.items():
        other = test.tasks.get(name)
        if other is None or tuple(other.classnames) != tuple(task.classnames):
            continue
        f, t = task.labels >= 0, other.labels >= 0
        if len(np.unique(task.labels[f])) < 2 or not t.any():
            continue
        r = attribute_probe(xf[f], task.labels[f], xt[t], other.labels[t], opts["lam"])
        for key in ("accuracy", "chance", "gain"):
            out[f"suppression/{name}/{key}"] = float(r[key])
        examples[f"suppression/{name}/accuracy"] = r["correct"]
    if _source(ctx, opts) == "pairs":
        out["suppression/self_split"] = float(ctx.train_pairs is None)
    return out, examples
