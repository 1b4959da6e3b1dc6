"""WhitenedCSE — contrastive learning on shuffled-group-whitened views.

No spec entry: spec form from the abstract, not checked against the original.
Paper: Zhuang et al. 2023 (ACL), "WhitenedCSE: Whitening-based Contrastive Learning of Sentence
Embeddings" — the feature channels are randomly divided into groups, each group is whitened over the
batch, and re-shuffling the group division gives several distortions (extra positives) of a sample.

Shuffled group whitening (SGW) of a batch ``Z [M, D]`` with a channel permutation π and G groups
(``g = D/G`` channels each):

1. ``Z' = Z[:, π]``; split ``Z'`` into G contiguous blocks ``Z'_k [M, g]``;
2. per block: centre over the batch, ``Σ_k = (1/M) Z̄_kᵀ Z̄_k`` (population covariance),
   ``Σ_k = U Λ Uᵀ``; ZCA (default): ``Z̄_k U (Λ + ε)^{−1/2} Uᵀ``; PCA: ``Z̄_k U (Λ + ε)^{−1/2}``
   (eigenvector signs fixed so each column's largest-magnitude entry is positive);
3. concatenate the blocks and undo π, so output channel c is input channel c whitened within its group.

Each whitened block has covariance ``Λ/(Λ+ε) ≈ I``. Gradients flow through the batch statistics
(``torch.linalg.eigh``; unstable only for repeated eigenvalues, e.g. a rank-deficient block).

Loss, with views ``x, y [N, D]`` (e.g. two dropout passes, SimCSE) and P permutations ``π_1..π_P``:
SGW is estimated on the 2N rows ``[x; y]`` jointly (one transform per permutation, applied to both
views), giving ``a_p = SGW_p(x)``, ``b_p = SGW_p(y)``; with ``u = norm(·)``::

    loss = (1/P²) Σ_{p,q} CE(u(a_p) u(b_q)ᵀ / τ, arange N)

i.e. every whitened x-view is contrasted against every whitened y-view (different groupings of
the same sample are its extra positives; other samples, under the same q, are the negatives).
P = 1 is InfoNCE (SimCSE) on one whitened pair. ZCA commutes with the channel order inside a group,
so a view's whitening depends only on the grouping, not on the order within groups.

Defaults (chosen; not checked against the paper): G = 8 groups, P = 2 shuffles, τ = 0.05 (SimCSE),
ε = 1e-5, ZCA. Requirements: D divisible by G, and 2N > g (a block's batch covariance is singular
otherwise) — both clear errors. Permutations come from a generator seeded with ``(seed, step)``;
``step`` is a buffer advancing in training mode, so runs are reproducible and resume identically.

Shapes: ``x, y: [N, D]`` → scalar. Complexity: P whitened copies of ``[2N, D]``, G eigen-decompositions
of ``g × g`` per copy, P² logit matrices ``[N, N]``. Tiled / distributed: dense only (batch
statistics and RNG state; no ``pure()`` form for ``TiledLoss`` / ``GatherLoss``); for several devices
gather the embeddings first so the whitening sees the global batch. Related: L-NTXENT, L-BARLOW
(decorrelation as a loss instead of a transform), L-CLIP.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings, check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive, PositiveInt
from contrastkit.losses.base import LOSSES, PairLoss, as_float, maybe_normalize

__all__ = ["WhitenedCSELoss", "draw_shuffles", "group_whiten", "whitenedcse_loss"]

_METHODS = ("zca", "pca")


def draw_shuffles(dim: int, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` channel permutations ``[count, dim]`` (LongTensor), drawn in order from ``generator``."""
    if dim < 1 or count < 1:
        raise ConfigError(f"draw_shuffles needs dim >= 1 and count >= 1, got {dim}, {count}")
    return torch.stack([torch.randperm(dim, generator=generator) for _ in range(count)])


def _check_config(groups: int, method: str, eps: float) -> None:
    if groups < 1:
        raise ConfigError(f"groups must be >= 1, got {groups}")
    if method not in _METHODS:
        raise ConfigError(f"method must be one of {_METHODS}, got {method!r}")
    if not eps >= 0:
        raise ConfigError(f"eps must be >= 0, got {eps}")


def _check_perm(perm: Any, dim: int) -> None:
    ok = isinstance(perm, torch.Tensor) and perm.dtype == torch.long and perm.shape == (dim,)
    if not ok or not torch.equal(perm.sort().values, torch.arange(dim, device=perm.device)):
        raise InputError(f"perm must be a permutation of range({dim}) (LongTensor [D])")


def group_whiten(
    z: torch.Tensor, perm: torch.Tensor, groups: int, *, method: str = "zca", eps: float = 1e-5
) -> torch.Tensor:
    """Shuffled group whitening of ``z [M, D]`` (see the module docstring); output ``[M, D]``,
    channels in the input order. Needs ``D % groups == 0`` and ``M > D / groups``."""
    check_embeddings("z", z)
    _check_config(groups, method, eps)
    m, d = z.shape
    if d % groups:
        raise ConfigError(f"the embedding dimension D={d} is not divisible by groups={groups}")
    g = d // groups
    if m <= g:
        raise InputError(
            f"group whitening needs more rows than channels per group (M={m}, g={g}): "
            "the batch covariance of a group is singular otherwise; use more groups or a larger batch"
        )
    _check_perm(perm, d)
    z = as_float(z)
    blocks = z[:, perm.to(z.device)].reshape(m, groups, g).transpose(0, 1)  # [G, M, g]
    centred = blocks - blocks.mean(1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred / m  # [G, g, g]
    evals, evecs = torch.linalg.eigh(cov)
    inv_sqrt = (evals.clamp_min(0) + eps).rsqrt()  # clamp: tiny negative eigenvalues from rounding
    if method == "pca":
        # eigenvectors are defined up to sign: make each column's largest-magnitude entry positive
        idx = evecs.abs().argmax(1, keepdim=True)
        evecs = evecs * evecs.gather(1, idx).sign()
    white = (centred @ evecs) * inv_sqrt.unsqueeze(1)
    if method == "zca":
        white = white @ evecs.transpose(1, 2)
    out = torch.empty_like(z)
    out[:, perm.to(z.device)] = white.transpose(0, 1).reshape(m, d)  # undo the shuffle
    return out


def whitenedcse_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    perms: torch.Tensor,
    *,
    groups: int = 8,
    temperature: float = 0.05,
    method: str = "zca",
    eps: float = 1e-5,
    normalize: bool = True,
) -> torch.Tensor:
    """WhitenedCSE (spec form): mean over (p, q) of ``CE(u(a_p) u(b_q)ᵀ / τ, arange N)`` where
    ``[a_p; b_p] = group_whiten([x; y], perms[p], groups)``.

    Args:
        x: ``[N, D]`` view 1.
        y: ``[N, D]`` view 2; ``y[i]`` is the positive of ``x[i]``.
        perms: ``[P, D]`` channel permutations (:func:`draw_shuffles`).
        groups: G. temperature: τ. method: ``"zca"`` or ``"pca"``. eps: ε added to the eigenvalues.
        normalize: cosine similarities of the whitened views (default) or raw dot products.
    N = 1 is an error (no negatives).
    """
    check_pair(x, y)
    if x.shape[0] < 2:
        raise InputError("whitenedcse_loss needs N >= 2 pairs: the negatives are the other samples")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if not isinstance(perms, torch.Tensor) or perms.ndim != 2 or perms.shape[0] < 1:
        raise InputError("perms must be a LongTensor of shape [P, D] with P >= 1")
    n = x.shape[0]
    dtype = torch.promote_types(as_float(x).dtype, as_float(y).dtype)
    both = torch.cat([x, y]).to(dtype)
    views = torch.stack([group_whiten(both, p, groups, method=method, eps=eps) for p in perms])
    views = maybe_normalize(views, normalize)  # [P, 2N, D]
    a, b = views[:, :n], views[:, n:]
    logits = torch.einsum("pnd,qmd->pqnm", a, b) / temperature
    target = torch.arange(n, device=x.device).expand(*logits.shape[:2], n)
    return F.cross_entropy(logits.reshape(-1, n), target.reshape(-1))


@LOSSES.register("whitenedcse")
class WhitenedCSELoss(PairLoss):
    """Module form of :func:`whitenedcse_loss` drawing ``shuffles`` fresh permutations each step
    from a generator seeded with ``(seed, step)`` (``step`` is a buffer; it advances in training).

    Args:
        groups: G (8).
        shuffles: P (2).
        temperature: τ (0.05).
        method: ``"zca"`` (default) or ``"pca"``.
        eps: ε added to the eigenvalues (1e-5).
        seed: seeds the permutations with ``(seed, step)`` (0).
        normalize: see :func:`whitenedcse_loss`.
    """

    def __init__(
        self,
        groups: PositiveInt = 8,
        shuffles: PositiveInt = 2,
        temperature: Positive = 0.05,
        method: str = "zca",
        eps: NonNegative = 1e-5,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        _check_config(groups, method, eps)
        if shuffles < 1 or not temperature > 0:
            raise ConfigError(f"need shuffles >= 1 and temperature > 0, got {shuffles}, {temperature}")
        self.groups, self.shuffles, self.temperature = int(groups), int(shuffles), float(temperature)
        self.method, self.eps, self.seed, self.normalize = method, float(eps), int(seed), normalize
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def permutations(self, dim: int) -> torch.Tensor:
        """This step's ``[P, dim]`` permutations (deterministic in ``(seed, step)``)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.step))
        return draw_shuffles(dim, self.shuffles, g)

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        check_pair(x, y)
        perms = self.permutations(x.shape[1]).to(x.device)
        out = whitenedcse_loss(
            x,
            y,
            perms,
            groups=self.groups,
            temperature=self.temperature,
            method=self.method,
            eps=self.eps,
            normalize=self.normalize,
        )
        if self.training:
            self.step += 1
        return out
