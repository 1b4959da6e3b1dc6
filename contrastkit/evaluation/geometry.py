"""E-ALIGNUNIF, E-MODGAP, E-RANK and neural collapse — the geometry of an embedding space.

Spec ids (docs/evaluation.md); inputs are L2-normalised image embeddings ``x`` [I, d], text
embeddings ``y`` [T, d] and ``owner[k]`` = the image of caption k. Exact definitions (also in
docs/evaluation.md):

* E-ALIGNUNIF (Wang & Isola; formulas of L-ALIGN/L-UNIFORM, α = 2, t = 2):
  ``alignment = mean_k ‖x_owner(k) − y_k‖^α`` over the T caption pairs;
  ``uniformity(z) = log mean_{i<j} exp(−t‖z_i − z_j‖²)`` per modality; ``cross_uniformity =
  log mean_{(i,k): owner(k)≠i} exp(−t‖x_i − y_k‖²)`` (off-diagonal pairs, L-CUA's L_xuniform). Exact
  log-sum-exp in row chunks: memory O(chunk·N). Beyond ``max_uniformity`` items per modality the task
  uses a seeded subsample and reports the N used (uniformity is biased in N).
* E-MODGAP (Liang et al. 2022): ``Δ = mean_i x_i − mean_k y_k`` (each image once, each caption
  once); ``gap = ‖Δ‖₂``; ``gap_cos = cos(mean x, mean y)``; ``separability`` = balanced accuracy of a
  logistic regression (lbfgs, C = 1, class-balanced weights) telling images from texts, fit on a
  seeded half of each modality and scored on the other half (chance 0.5). The λ-shift analysis is
  not implemented.
* E-RANK (RankMe as in DHEL-KCL): σ = singular values of Z as given (not centred),
  ``p_k = σ_k/‖σ‖₁ + ε`` (ε = 1e-7, not renormalised), ``erank = exp(−Σ_k p_k log p_k)``. Spectrum:
  eigenvalues of ``C = (1/N) Σ (z_i − z̄)(z_i − z̄)ᵀ``, descending; ``numerical_rank = #{λ_k >
  tol·λ_1}`` (tol 1e-5); ``matrix_rank`` = torch.linalg.matrix_rank (default tolerance).
* Neural collapse (Papyan et al. 2020), per labelled class task on the image embeddings ``h``
  (classes present, C ≥ 2): class means μ_c; μ_G = mean of the class means (Papyan's global mean
  when classes are balanced); ``Σ_W = (1/N) Σ_i (h_i − μ_{c_i})(h_i − μ_{c_i})ᵀ``;
  ``Σ_B = (1/C) Σ_c (μ_c − μ_G)(μ_c − μ_G)ᵀ``; ``NC1 = tr(Σ_W Σ_B⁺)/C`` (pseudo-inverse keeping
  singular values of the centred means above ``rtol``·max, rtol 1e-8); ``equinorm`` = std/mean of
  ‖μ_c − μ_G‖ (population std); ``equiangular`` = std over pairs c < c' of cos(μ_c − μ_G, μ_c' − μ_G);
  ``maxangle`` = mean over those pairs of |cos + 1/(C−1)|. A simplex ETF gives 0 for all four
  when within-class variance is 0.
* Dense alignment/uniformity: ``dense_alignment_uniformity(px, py)`` on patch tokens [N, P, D]
  (token p of x paired with token p of y; uniformity over all N·P tokens pooled). The task computes
  it when the encoders expose the image tower's token grid (``Encoders.image_patches``; contrastkit
  timm towers do: a CNN's last feature map or a ViT's patch tokens) on the first ``max_dense``
  images: x = the tokens of each image, y = the tokens of its mirror image with the grid mirrored
  back, so token p of x and of y see the same image region — ``geometry/dense/alignment`` measures
  how consistent local features are under a flip, ``geometry/dense/uniformity`` how spread the
  (normalised) local features are. Tower feature space, before the projection.

Plots (``ctx.options["plot_dir"]``): normalised covariance spectra (λ_k/λ_1, log scale) and a 2-D
PCA projection of the union of both modalities, written atomically with matplotlib Agg.
Options (``ctx.options["geometry"]``): see ``GEOMETRY_DEFAULTS``; unknown keys raise ConfigError.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.io import save_png
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult

__all__ = [
    "GEOMETRY_DEFAULTS",
    "alignment",
    "covariance_spectrum",
    "cross_uniformity",
    "dense_alignment_uniformity",
    "effective_rank",
    "geometry_task",
    "modality_gap",
    "modality_separability",
    "neural_collapse",
    "numerical_rank",
    "plot_modality_projection",
    "plot_spectrum",
    "uniformity",
]

GEOMETRY_DEFAULTS: dict[str, Any] = {
    "t": 2.0,
    "alpha": 2.0,
    "max_uniformity": 5000,  # items per modality for (cross-)uniformity; seeded subsample beyond
    "max_separability": 5000,
    "rank_tol": 1e-5,
    "nc_rtol": 1e-8,
    "chunk": 1024,
    "seed": 0,
    "max_dense": 128,  # images for the dense (patch-level) metrics; 0 turns them off
}


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _pair_lse(a: torch.Tensor, b: torch.Tensor, t: float, chunk: int, keep: Any) -> float:
    """``log Σ_{(i,j) kept} exp(−t‖a_i − b_j‖²)``; ``keep(row0, rows)`` → bool mask [rows, len(b)]."""
    if chunk < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}")
    total = torch.tensor(-math.inf, dtype=torch.float64)
    bn = b.pow(2).sum(1)
    for s in range(0, a.shape[0], chunk):
        blk = a[s : s + chunk]
        d2 = (blk.pow(2).sum(1)[:, None] + bn[None, :] - 2 * blk @ b.T).clamp_min(0)
        v = (-t * d2).masked_fill(~keep(s, blk.shape[0]), -math.inf)
        total = torch.logaddexp(total, torch.logsumexp(v.flatten(), 0).double())
    return float(total)


def alignment(
    x: torch.Tensor, y: torch.Tensor, owner: np.ndarray | torch.Tensor | None = None, alpha: float = 2.0
) -> torch.Tensor:
    """Per pair ``‖x_owner(k) − y_k‖^α`` (``owner`` None: row k of x with row k of y)."""
    check_embeddings("x", x)
    check_embeddings("y", y)
    own = torch.arange(y.shape[0]) if owner is None else torch.as_tensor(np.asarray(owner), dtype=torch.long)
    if own.shape != (y.shape[0],) or own.min() < 0 or own.max() >= x.shape[0] or x.shape[1] != y.shape[1]:
        raise InputError(f"alignment needs owner [T] indexing x; got x {tuple(x.shape)}, y {tuple(y.shape)}")
    return (_float(x)[own] - _float(y)).norm(dim=1).pow(alpha)


def uniformity(z: torch.Tensor, t: float = 2.0, chunk: int = 1024) -> float:
    """``log mean_{i<j} exp(−t‖z_i − z_j‖²)`` exactly, in row chunks (N ≥ 2)."""
    check_embeddings("z", z)
    n = z.shape[0]
    if n < 2:
        raise InputError(f"uniformity needs at least 2 points, got {n}")
    cols = torch.arange(n)
    lse = _pair_lse(
        _float(z), _float(z), t, chunk, lambda s, r: cols[None, :] > torch.arange(s, s + r)[:, None]
    )
    return lse - math.log(n * (n - 1) / 2)


def cross_uniformity(
    x: torch.Tensor,
    y: torch.Tensor,
    owner: np.ndarray | torch.Tensor | None = None,
    t: float = 2.0,
    chunk: int = 1024,
) -> float:
    """``log mean exp(−t‖x_i − y_k‖²)`` over pairs with ``owner[k] ≠ i`` (owner −1: no pair excluded)."""
    check_embeddings("x", x)
    check_embeddings("y", y)
    own = torch.arange(y.shape[0]) if owner is None else torch.as_tensor(np.asarray(owner), dtype=torch.long)
    if own.shape != (y.shape[0],) or x.shape[1] != y.shape[1]:
        raise InputError(f"owner must have shape [{y.shape[0]}] and dimensions must match")
    n_pairs = x.shape[0] * y.shape[0] - int(((own >= 0) & (own < x.shape[0])).sum())
    if n_pairs < 1:
        raise InputError("cross-uniformity needs at least one non-paired (image, text) pair")
    lse = _pair_lse(
        _float(x), _float(y), t, chunk, lambda s, r: own[None, :] != torch.arange(s, s + r)[:, None]
    )
    return lse - math.log(n_pairs)


def modality_gap(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``gap = ‖mean x − mean y‖₂`` and ``gap_cos = cos(mean x, mean y)`` (NaN if a mean is 0)."""
    check_embeddings("x", x)
    check_embeddings("y", y)
    if x.shape[1] != y.shape[1]:
        raise InputError(f"dimension mismatch: x has d={x.shape[1]}, y has d={y.shape[1]}")
    mx, my = x.double().mean(0), y.double().mean(0)
    den = float(mx.norm() * my.norm())
    return {"gap": float((mx - my).norm()), "gap_cos": float(mx @ my) / den if den > 0 else float("nan")}


def _subsample(n: int, m: int, seed: int) -> np.ndarray:
    return np.arange(n) if n <= m else np.sort(np.random.default_rng(seed).choice(n, m, replace=False))


def modality_separability(x: torch.Tensor, y: torch.Tensor, seed: int = 0, max_n: int = 5000) -> float:
    """Held-out balanced accuracy of a logistic regression telling rows of x from rows of y."""
    from sklearn.linear_model import LogisticRegression

    check_embeddings("x", x)
    check_embeddings("y", y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise InputError("separability needs at least 2 items per modality")
    rng = np.random.default_rng(seed)
    halves = []
    for z in (x, y):
        z = z.double().numpy()[_subsample(len(z), max_n, seed)]
        perm = rng.permutation(len(z))
        halves.append((z[perm[: len(z) // 2]], z[perm[len(z) // 2 :]]))
    fit = np.concatenate([halves[0][0], halves[1][0]])
    lab = np.r_[np.zeros(len(halves[0][0])), np.ones(len(halves[1][0]))]
    clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000, class_weight="balanced").fit(fit, lab)
    return float(np.mean([(clf.predict(h[1]) == c).mean() for c, h in enumerate(halves)]))


def effective_rank(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe ``exp(−Σ p_k log p_k)``, ``p_k = σ_k/‖σ‖₁ + ε`` (σ of Z as given, float64)."""
    check_embeddings("z", z)
    s = torch.linalg.svdvals(z.double())
    if float(s.sum()) <= 0:
        raise InputError("effective rank of an all-zero matrix is undefined")
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def covariance_spectrum(z: torch.Tensor) -> np.ndarray:
    """Eigenvalues of the (1/N) covariance of the rows of z, descending, clamped at 0 (float64)."""
    check_embeddings("z", z)
    zc = z.double() - z.double().mean(0)
    ev = torch.linalg.eigvalsh(zc.T @ zc / z.shape[0]).flip(0).clamp_min(0)
    return ev.numpy()


def numerical_rank(spectrum: np.ndarray, tol: float = 1e-5) -> int:
    """``#{λ_k > tol·λ_1}`` of a descending spectrum (0 for an all-zero spectrum)."""
    spectrum = np.asarray(spectrum)
    return int((spectrum > tol * spectrum[0]).sum()) if len(spectrum) and spectrum[0] > 0 else 0


def neural_collapse(h: torch.Tensor, labels: np.ndarray, rtol: float = 1e-8) -> dict[str, float]:
    """NC1, equinorm, equiangular and maxangle of features ``h`` by ``labels`` (≥ 0; −1 ignored)."""
    check_embeddings("h", h)
    labels = np.asarray(labels)
    if labels.shape != (h.shape[0],):
        raise InputError(f"labels must have shape [{h.shape[0]}], got {labels.shape}")
    keep = labels >= 0
    z, lab = h.double().numpy()[keep], labels[keep]
    classes, inv = np.unique(lab, return_inverse=True)
    c = len(classes)
    if c < 2:
        raise InputError(f"neural-collapse statistics need at least 2 classes, got {c}")
    means = np.stack([z[inv == k].mean(0) for k in range(c)])
    within = z - means[inv]
    sigma_w = within.T @ within / len(z)
    m = means - means.mean(0)  # centred class means, rows
    _, s, vt = np.linalg.svd(m, full_matrices=False)
    r = s > rtol * s[0]
    # Σ_B = mᵀm / C ⇒ Σ_B⁺ = C · V diag(1/s²) Vᵀ over the kept singular values
    v = vt[r].T / s[r]
    nc1 = float(np.trace(v.T @ sigma_w @ v))  # = tr(Σ_W Σ_B⁺)/C
    norms = np.linalg.norm(m, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a class mean at μ_G: NaN angles
        unit = m / norms[:, None]
    cos = (unit @ unit.T)[np.triu_indices(c, 1)]
    return {
        "nc1": nc1 if s[0] > 0 else float("nan"),
        "equinorm": float(norms.std() / norms.mean()),
        "equiangular": float(cos.std()),
        "maxangle": float(np.abs(cos + 1 / (c - 1)).mean()),
        "n_classes": float(c),
    }


def dense_alignment_uniformity(
    patch_tokens_x: torch.Tensor,
    patch_tokens_y: torch.Tensor,
    t: float = 2.0,
    alpha: float = 2.0,
    chunk: int = 1024,
) -> dict[str, float]:
    """Patch-level alignment (token p of x with token p of y) and per-side pooled uniformity."""
    px, py = patch_tokens_x, patch_tokens_y
    if px.ndim != 3 or px.shape != py.shape:
        raise InputError(f"patch tokens must both be [N, P, D]; got {tuple(px.shape)}, {tuple(py.shape)}")
    fx = F.normalize(_float(px).reshape(-1, px.shape[-1]), dim=-1)
    fy = F.normalize(_float(py).reshape(-1, py.shape[-1]), dim=-1)
    return {
        "alignment": float(alignment(fx, fy, alpha=alpha).mean()),
        "uniformity_x": uniformity(fx, t, chunk),
        "uniformity_y": uniformity(fy, t, chunk),
        "n_tokens": float(fx.shape[0]),
    }


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_spectrum(spectra: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Normalised covariance spectra ``λ_k/λ_1`` (log scale) of each named embedding set (PNG)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, ev in spectra.items():
        ev = np.asarray(ev, dtype=np.float64)
        if len(ev) == 0 or ev[0] <= 0:
            raise InputError(f"spectrum {name!r} is empty or all zero")
        ax.semilogy(np.arange(1, len(ev) + 1), np.maximum(ev / ev[0], 1e-16), label=name)
    ax.set_xlabel("eigenvalue index k (largest first)")
    ax.set_ylabel("λ_k / λ_1 (relative variance, log scale)")
    what = "normalised embedding covariance spectrum"
    ax.set_title(f"{title}: {what}" if title else what, fontsize=9)
    ax.legend()
    fig.tight_layout()  # keeps the axis labels inside the fixed-size figure
    return save_png(fig, path)


def plot_modality_projection(
    x: torch.Tensor, y: torch.Tensor, path: str | Path, title: str = "", max_points: int = 2000
) -> Path:
    """Both modalities projected on the top-2 principal axes of their union, centroids marked (PNG)."""
    check_embeddings("x", x)
    check_embeddings("y", y)
    xs, ys = x.double()[_subsample(len(x), max_points, 0)], y.double()[_subsample(len(y), max_points, 1)]
    u = torch.cat([xs, ys])
    mu = u.mean(0)
    svd = torch.linalg.svd(u - mu, full_matrices=False)
    axes = svd.Vh[:2].T
    share = (svd.S**2 / (svd.S**2).sum()).numpy()  # variance explained, for the axis labels
    px, py = ((xs - mu) @ axes).numpy(), ((ys - mu) @ axes).numpy()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for pts, name, col in ((px, "image", "tab:blue"), (py, "text", "tab:orange")):
        ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.4, c=col, label=name)
        ax.scatter(*pts.mean(0), s=120, marker="X", c=col, edgecolors="k", label=f"{name} centroid")
    ax.plot(*np.stack([px.mean(0), py.mean(0)]).T, "k--", lw=1, label="modality gap")
    for i, set_label in enumerate((ax.set_xlabel, ax.set_ylabel)):
        set_label(f"PC {i + 1}, {100 * share[i]:.0f}% of variance (embedding units)")
    what = "PCA of image ∪ text embeddings (X: centroids)"
    ax.set_title(f"{title}: {what}" if title else what, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()  # keeps the axis labels inside the fixed-size figure
    return save_png(fig, path)


def _options(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(GEOMETRY_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown geometry option(s) {unknown}; valid: {sorted(GEOMETRY_DEFAULTS)}")
    opts = {**GEOMETRY_DEFAULTS, **raw}
    if int(opts["max_uniformity"]) < 2 or int(opts["max_separability"]) < 2 or int(opts["chunk"]) < 1:
        raise ConfigError(f"geometry options out of range: {opts}")
    return opts


def _uniformities(x: torch.Tensor, y: torch.Tensor, owner: np.ndarray, o: dict[str, Any]) -> dict[str, float]:
    m, seed, t, ch = int(o["max_uniformity"]), int(o["seed"]), float(o["t"]), int(o["chunk"])
    xi, yi = _subsample(len(x), m, seed), _subsample(len(y), m, seed + 1)
    pos = np.searchsorted(xi, owner[yi]).clip(max=len(xi) - 1)
    sub_owner = np.where(xi[pos] == owner[yi], pos, -1)  # caption's image position in the subsample
    out = {"image_uniformity": uniformity(x[xi], t, ch) if len(xi) > 1 else float("nan")}
    out["text_uniformity"] = uniformity(y[yi], t, ch) if len(yi) > 1 else float("nan")
    unpaired = len(xi) * len(yi) - int((sub_owner >= 0).sum())
    out["cross_uniformity"] = cross_uniformity(x[xi], y[yi], sub_owner, t, ch) if unpaired else float("nan")
    out["uniformity_n_image"], out["uniformity_n_text"] = float(len(xi)), float(len(yi))
    return out


def _dense(ctx: EvalContext, o: dict[str, Any]) -> dict[str, float]:
    images = ctx.pairs.images[: int(o["max_dense"])]
    grid = ctx.enc.image_patches(images)  # type: ignore[misc]
    mirrored = ctx.enc.image_patches(images.flip(-1)).flip(2)  # W axis of the token grid
    n, h, w, c = grid.shape
    d = dense_alignment_uniformity(
        grid.reshape(n, h * w, c),
        mirrored.reshape(n, h * w, c),
        float(o["t"]),
        float(o["alpha"]),
        int(o["chunk"]),
    )
    return {
        "geometry/dense/alignment": d["alignment"],
        "geometry/dense/uniformity": d["uniformity_x"],
        "geometry/dense/n_tokens": d["n_tokens"],
    }


@EVAL_TASKS.register("geometry")
def geometry_task(ctx: EvalContext) -> TaskResult:
    """Alignment/uniformity, modality gap, effective rank and spectra, neural collapse per class task."""
    from threadpoolctl import threadpool_limits

    o = _options(dict(ctx.options.get("geometry", {})))
    with threadpool_limits(torch.get_num_threads()):  # BLAS threads = torch's (oversubscription)
        return _geometry_all(ctx, o)


def _geometry_all(ctx: EvalContext, o: dict[str, Any]) -> TaskResult:
    x, y, owner = ctx.image_emb, ctx.text_emb, ctx.captions[1]
    al = alignment(x, y, owner, float(o["alpha"])).double().numpy()
    out: dict[str, float] = {"geometry/alignment": float(al.mean()), "geometry/n_pairs": float(len(al))}
    examples = {"geometry/alignment": al}
    out.update({f"geometry/{k}": v for k, v in _uniformities(x, y, owner, o).items()})
    out.update({f"geometry/modality_{k}": v for k, v in modality_gap(x, y).items()})
    if len(x) >= 2 and len(y) >= 2:
        sep = modality_separability(x, y, int(o["seed"]), int(o["max_separability"]))
        out["geometry/modality_separability"] = sep
    spectra = {}
    for name, z in (("image", x), ("text", y)):
        spectra[name] = covariance_spectrum(z)
        out[f"geometry/{name}/erank"] = effective_rank(z)
        out[f"geometry/{name}/numerical_rank"] = float(numerical_rank(spectra[name], float(o["rank_tol"])))
        out[f"geometry/{name}/matrix_rank"] = float(torch.linalg.matrix_rank(z.double()))
    for tname, task in ctx.pairs.tasks.items():
        if len(np.unique(task.labels[task.labels >= 0])) >= 2:
            nc = neural_collapse(x, task.labels, float(o["nc_rtol"]))
            out.update({f"geometry/nc/{tname}/{k}": v for k, v in nc.items()})
    if ctx.enc.image_patches is not None and int(o["max_dense"]) > 0:
        out.update(_dense(ctx, o))
    plot_dir = ctx.options.get("plot_dir")
    if plot_dir:
        safe = re.sub(r"[^\w.-]+", "_", ctx.pairs.name)  # "shapes/test" → "shapes_test"
        stem = f"geometry_{safe}" if safe else "geometry"
        if all(s[0] > 0 for s in spectra.values()):
            plot_spectrum(spectra, Path(plot_dir) / f"{stem}_spectrum.png", ctx.pairs.name)
        plot_modality_projection(x, y, Path(plot_dir) / f"{stem}_gap.png", ctx.pairs.name)
    return out, examples
