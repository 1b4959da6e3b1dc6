"""Representational similarity of two embeddings of the same N samples: CKA and mutual k-NN.

Pure functions on ``x [N, d1]`` and ``y [N, d2]`` (row i of both = sample i; d1 ≠ d2 allowed), in
float64, used by the ``alignment`` evaluation task (:mod:`contrastkit.evaluation.alignment`) to
compare modalities of one model, two runs, or checkpoints of one run.

* **HSIC** of Gram matrices K, L (n × n). Default, the standard *biased* estimator (Gretton et
  al. 2005): ``HSIC_0 = tr(K H L H) / (n − 1)²``, ``H = I − 11ᵀ/n``. Option ``unbiased``: the
  unbiased estimator of Song et al. (2012), with K̃, L̃ = K, L with zeroed diagonals (n ≥ 4)::

      HSIC_1 = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3))

* **CKA** (Kornblith et al. 2019): ``HSIC(K, L) / sqrt(HSIC(K, K)·HSIC(L, L))``; the HSIC
  normalisations cancel. ``linear_cka``: K = XXᵀ, L = YYᵀ; the biased one is computed in feature
  space, ``‖X̄ᵀȲ‖²_F / (‖X̄ᵀX̄‖_F‖ȲᵀȲ‖_F)`` with column-centred X̄, Ȳ (the same number, O(N·d²)
  when d ≤ N); invariant to orthogonal transforms and isotropic scaling of either input.
  ``rbf_cka``: ``K_ij = exp(−‖x_i − x_j‖²/(2σ²))`` with ``σ = sigma · median_{i<j} ‖x_i − x_j‖``
  (default 0.8, the paper's; σ set per input, so RBF CKA is invariant to orthogonal transforms and
  isotropic scaling too). The median is over the N(N−1)/2 distinct pairs; Kornblith et al.'s
  reference code takes it over all N² entries, zero diagonal included (a difference O(1/N)).
  Biased CKA is biased upwards for few samples per dimension: independent isotropic Gaussians
  give ≈ ``sqrt(d1·d2 / ((n+d1)(n+d2)))``, not 0 (unbiased: ≈ 0); the tests check both.
* **Mutual k-NN alignment** (Huh et al. 2024, the platonic representation hypothesis): with
  ``S_x(i)`` the k nearest neighbours of sample i by cosine similarity of L2-normalised rows
  (i itself excluded, ties to the lower index), ``m_i = |S_x(i) ∩ S_y(i)| / k``; the score is
  ``mean_i m_i`` (:func:`mutual_knn` returns the m_i). Independent representations give
  ``E = k/(N − 1)``; identical ones 1.

Cost: the Gram forms hold N × N float64 matrices (two per CKA, 8N² bytes each: 200 MB at
N = 5000), so the task caps N (a seeded subsample); the mutual k-NN works in row chunks
(``chunk × N`` similarities). Related: E-ALIGNUNIF, E-MODGAP in :mod:`~contrastkit.evaluation.geometry`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings
from contrastkit.core.errors import InputError

__all__ = [
    "center_gram",
    "cka",
    "gram_linear",
    "gram_rbf",
    "hsic",
    "knn_indices",
    "linear_cka",
    "mutual_knn",
    "rbf_cka",
    "subsample_rows",
]


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_embeddings("x", x)
    check_embeddings("y", y)
    if x.shape[0] != y.shape[0]:
        raise InputError(f"x and y must hold the same samples: {x.shape[0]} rows vs {y.shape[0]}")
    if x.shape[0] < 2:
        raise InputError("representational similarity needs at least 2 samples")
    return x.double(), y.double()


def subsample_rows(n: int, max_n: int, seed: int) -> np.ndarray:
    """All ``n`` row indices, or a sorted seeded sample of ``max_n`` of them."""
    if n <= max_n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_n, replace=False))


def gram_linear(x: torch.Tensor) -> torch.Tensor:
    """``K = X Xᵀ`` in float64."""
    check_embeddings("x", x)
    x = x.double()
    return x @ x.T


def gram_rbf(x: torch.Tensor, sigma: float = 0.8) -> tuple[torch.Tensor, float]:
    """``(K, σ)``: ``K_ij = exp(−‖x_i − x_j‖²/(2σ²))``, ``σ = sigma · median_{i<j} ‖x_i − x_j‖``."""
    check_embeddings("x", x)
    if not sigma > 0:
        raise InputError(f"sigma (a fraction of the median distance) must be > 0, got {sigma}")
    x = x.double()
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * (x @ x.T)).clamp_(min=0)
    d2.fill_diagonal_(0)
    iu = torch.triu_indices(len(x), len(x), 1)
    median = float(np.median(d2[iu[0], iu[1]].sqrt().numpy())) if len(x) > 1 else 0.0
    if median == 0:
        raise InputError("rbf kernel: the median pairwise distance is 0 (most rows identical)")
    s = sigma * median
    return d2.div_(-2 * s * s).exp_(), s


def center_gram(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` (rows and columns centred)."""
    k = k.double()
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def hsic(k: torch.Tensor, l: torch.Tensor, unbiased: bool = False) -> float:  # noqa: E741
    """HSIC of two n × n Gram matrices: biased ``tr(KHLH)/(n−1)²`` or, with ``unbiased``, Song et
    al.'s estimator (module docstring; n ≥ 4)."""
    n = k.shape[0]
    if k.shape != (n, n) or l.shape != (n, n):
        raise InputError(
            f"hsic needs two square Gram matrices of one size, got {tuple(k.shape)}, {tuple(l.shape)}"
        )
    if not unbiased:
        return float((center_gram(k) * l.double()).sum()) / (n - 1) ** 2
    if n < 4:
        raise InputError(f"the unbiased HSIC estimator needs n >= 4 samples, got {n}")
    kt, lt = k.double().clone(), l.double().clone()
    kt.fill_diagonal_(0)
    lt.fill_diagonal_(0)
    kr, lr = kt.sum(1), lt.sum(1)
    value = (kt * lt).sum() + kr.sum() * lr.sum() / ((n - 1) * (n - 2)) - 2 * (kr @ lr) / (n - 2)
    return float(value) / (n * (n - 3))


def cka(k: torch.Tensor, l: torch.Tensor, unbiased: bool = False) -> float:  # noqa: E741
    """CKA of two Gram matrices: ``HSIC(K, L)/sqrt(HSIC(K, K)·HSIC(L, L))``."""
    kk, ll = hsic(k, k, unbiased), hsic(l, l, unbiased)
    if not (kk > 0 and ll > 0):
        raise InputError("CKA is undefined: a representation has no variance (HSIC(K, K) <= 0)")
    return hsic(k, l, unbiased) / float(np.sqrt(kk * ll))


def linear_cka(x: torch.Tensor, y: torch.Tensor, unbiased: bool = False) -> float:
    """Linear CKA of ``x [N, d1]`` and ``y [N, d2]`` (biased HSIC by default; module docstring)."""
    x, y = _pair(x, y)
    if unbiased or max(x.shape[1], y.shape[1]) > x.shape[0]:
        return cka(x @ x.T, y @ y.T, unbiased)
    xc, yc = x - x.mean(0), y - y.mean(0)  # feature space: O(N·d²), the same number as the Grams
    den = float(torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc))
    if not den > 0:
        raise InputError("CKA is undefined: a representation has no variance (all rows equal)")
    return float((xc.T @ yc).pow(2).sum()) / den


def rbf_cka(x: torch.Tensor, y: torch.Tensor, sigma: float = 0.8, unbiased: bool = False) -> float:
    """RBF-kernel CKA, ``σ = sigma · median pairwise distance`` of each input (module docstring)."""
    x, y = _pair(x, y)
    return cka(gram_rbf(x, sigma)[0], gram_rbf(y, sigma)[0], unbiased)


def knn_indices(x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """``[N, k]`` indices of each row's k nearest other rows by cosine similarity (nearest first;
    ties to the lower index)."""
    check_embeddings("x", x)
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise InputError(f"k must be in [1, N-1] = [1, {n - 1}], got {k}")
    if chunk < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}")
    z = F.normalize(x.double(), dim=-1)
    out = []
    for lo in range(0, n, chunk):
        rows = torch.arange(lo, min(lo + chunk, n))
        s = z[rows] @ z.T
        s[torch.arange(len(rows)), rows] = float("-inf")  # a sample is not its own neighbour
        out.append(torch.argsort(-s, dim=1, stable=True)[:, :k])  # stable: ties to the lower index
    return torch.cat(out)


def mutual_knn(x: torch.Tensor, y: torch.Tensor, k: int = 10, chunk: int = 1024) -> np.ndarray:
    """Per-sample mutual k-NN overlap ``|S_x(i) ∩ S_y(i)| / k`` (float64 ``[N]``; its mean is
    Huh et al.'s alignment score)."""
    x, y = _pair(x, y)
    a, b = knn_indices(x, k, chunk), knn_indices(y, k, chunk)
    shared = (a[:, :, None] == b[:, None, :]).any(-1).sum(-1)
    return shared.double().numpy() / k
