"""R-SWAV — SwAV's swapped assignment between image and text (SwALIP, prototype form).

Papers: Caron et al. 2020 "SwAV"; Fini et al. 2023 "Improved baselines for vision-language
pre-training" (seed 2). Verified against facebookresearch/swav (``main_swav.py``) and
facebookresearch/clip-rocket (``losses.py`` SwALIPV1Loss, ``models.py`` SWALIPV1).

Sinkhorn–Knopp (:func:`sinkhorn_knopp`, no gradient) on scores ``P ∈ R^{B×K}``::

    Q = exp(P/ε − max(P/ε))ᵀ (K×B);  Q /= Σ Q
    n_iters times:  Q_k· /= Σ_b Q_kb, then /= K     (each prototype gets 1/K of the mass)
                    Q_·b /= Σ_k Q_kb, then /= B     (each sample gets 1/B)
    Q *= B; return Qᵀ                               (each sample's row sums to 1)

ε = 0.05, 3 iterations; float64 for float64 input, else float32. Subtracting the max changes
nothing after the first normalisation (it only avoids overflow). Across processes the loss runs
as ``GatherAllLoss``: Sinkhorn sees the global batch, which equals the reference's all-reduces.

Swapped prediction (:func:`swapped_prediction_loss`) with cosine scores ``p = ẑ Ĉᵀ``::

    L_swap = ½ [CE_soft(p_img/T, q_txt) + CE_soft(p_txt/T, q_img)],  q = Sinkhorn(sg(p))
    CE_soft(l, q) = −mean_i Σ_k q_ik log softmax(l_i)_k

Module ``swalip`` (:class:`SwALIPLoss`): per modality a projector ``Linear(d, 2048) → BatchNorm →
ReLU → Linear(2048, 128)`` (input width lazy unless ``dim``), K = 3000 prototypes shared between
image and text (``shared_prototypes=False``: one set each), used at unit norm (clip-rocket's weight
norm with gain 1) and renormalised after every optimizer step (SwAV); their gradient is dropped for
the first ``freeze_prototypes_steps`` = 100 optimizer steps (clip-rocket's default; they stay
bitwise unchanged then). T = 0.1, not learned unless ``learn_temperature``. Alone
(``loss: {name: swalip}``) or added to CLIP with λ = 0.2 (the paper's weight):
``loss: {terms: {clip: 1.0, swalip: 0.2}}``. The projectors read the joint embeddings (the
reference reads the towers' features). Not implemented: the prototype-free form over augmented
views and momentum-encoder targets.

TEST ORACLES: Sinkhorn rows sum to 1 and equal a naive loop; columns → B/K; constant P ⇒ uniform
1/K; small ε ⇒ near one-hot; no gradient into q; values and gradients of L_swap against the formula
in float64; prototype norms 1 after a step; frozen prototypes unchanged bitwise.
Dense only (no ``pure()``: the module holds projectors). Related: L-CLIP, L-MLCD (prototypes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.checks import check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegInt, Positive, PositiveInt
from contrastkit.losses.base import LOSSES, PairLoss

__all__ = ["SwALIPLoss", "sinkhorn_knopp", "soft_cross_entropy", "swapped_prediction_loss"]


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, n_iters: int = 3) -> torch.Tensor:
    """Balanced soft assignments ``[B, K]`` of ``scores [B, K]`` (rows sum to 1; no gradient)."""
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise InputError(f"sinkhorn_knopp needs scores [B, K], got {tuple(scores.shape)}")
    if not epsilon > 0 or n_iters < 0:
        raise ConfigError(f"sinkhorn_knopp needs epsilon > 0 and n_iters >= 0, got {epsilon}, {n_iters}")
    p = scores.detach().to(torch.float64 if scores.dtype == torch.float64 else torch.float32) / epsilon
    q = torch.exp(p - p.max()).T  # the global max: overflow-safe, cancelled by the normalisation
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(n_iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.T


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``−mean_i Σ_k q_ik log softmax(l_i)_k``."""
    return -(targets.to(logits.dtype) * logits.log_softmax(dim=1)).sum(dim=1).mean()


def swapped_prediction_loss(
    p_x: torch.Tensor,
    p_y: torch.Tensor,
    temperature: float | torch.Tensor = 0.1,
    *,
    epsilon: float = 0.05,
    n_iters: int = 3,
) -> torch.Tensor:
    """``½[CE_soft(p_x/T, q_y) + CE_soft(p_y/T, q_x)]`` with ``q = sinkhorn_knopp(sg(p))``."""
    if p_x.shape != p_y.shape or p_x.ndim != 2:
        raise InputError(f"scores must both be [B, K]; got {tuple(p_x.shape)}, {tuple(p_y.shape)}")
    q_x, q_y = sinkhorn_knopp(p_x, epsilon, n_iters), sinkhorn_knopp(p_y, epsilon, n_iters)
    return 0.5 * (soft_cross_entropy(p_x / temperature, q_y) + soft_cross_entropy(p_y / temperature, q_x))


def _projector(dim: int | None, hidden: int, out: int) -> nn.Sequential:
    first = nn.LazyLinear(hidden) if dim is None else nn.Linear(dim, hidden)
    return nn.Sequential(first, nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out))


@LOSSES.register("swalip")
class SwALIPLoss(PairLoss):
    """SwAV's swapped assignment between x (image) and y (text) through learnable prototypes.

    Args:
        prototypes: K (3000). proj_dim: projector output (128). hidden_dim: its hidden width (2048).
        temperature: T (0.1). learn_temperature: learn ``log(1/T)`` (off, as the reference).
        epsilon: Sinkhorn ε (0.05). n_iters: Sinkhorn iterations (3).
        shared_prototypes: one prototype set for both modalities (default, clip-rocket).
        freeze_prototypes_steps: optimizer steps with the prototypes' gradient dropped (100).
        dim: embedding width (None: lazy, read from the first batch).
    """

    def __init__(
        self,
        prototypes: PositiveInt = 3000,
        proj_dim: PositiveInt = 128,
        hidden_dim: PositiveInt = 2048,
        temperature: Positive = 0.1,
        learn_temperature: bool = False,
        epsilon: Positive = 0.05,
        n_iters: NonNegInt = 3,
        shared_prototypes: bool = True,
        freeze_prototypes_steps: NonNegInt = 100,
        dim: PositiveInt | None = None,
    ) -> None:
        super().__init__()
        if min(prototypes, proj_dim, hidden_dim) < 1 or (dim is not None and dim < 1):
            raise ConfigError("prototypes, proj_dim, hidden_dim and dim must be >= 1")
        if not (temperature > 0 and epsilon > 0) or n_iters < 0 or freeze_prototypes_steps < 0:
            raise ConfigError(
                "swalip needs temperature > 0, epsilon > 0, n_iters >= 0, freeze_prototypes_steps >= 0"
            )
        self.projectors = nn.ModuleDict({m: _projector(dim, hidden_dim, proj_dim) for m in ("image", "text")})
        init = F.normalize(torch.randn(prototypes, proj_dim), dim=1)  # the global RNG: seeded runs
        self.prototypes = nn.ParameterDict({"image": nn.Parameter(init.clone())})
        if not shared_prototypes:
            self.prototypes["text"] = nn.Parameter(F.normalize(torch.randn(prototypes, proj_dim), dim=1))
        self.log_scale = nn.Parameter(torch.tensor(1.0 / temperature).log(), requires_grad=learn_temperature)
        self.epsilon, self.n_iters = float(epsilon), int(n_iters)
        self.freeze_steps = int(freeze_prototypes_steps)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _prototypes(self, modality: str) -> torch.Tensor:
        c = self.prototypes[modality if modality in self.prototypes else "image"]
        if int(self.step) < self.freeze_steps:  # frozen: no gradient, so the optimizer skips them
            c = c.detach()
        return F.normalize(c, dim=1)

    def scores(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine scores ``[N, K]`` of the projected image and text embeddings."""
        check_pair(x, y)
        out = []
        for m, e in (("image", x), ("text", y)):
            z = F.normalize(
                self.projectors[m](e.float() if e.dtype in (torch.float16, torch.bfloat16) else e), dim=1
            )
            out.append(z @ self._prototypes(m).to(z.dtype).T)
        return out[0], out[1]

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        if x.shape[0] < 2 and self.training:
            raise InputError("swalip needs a batch of N >= 2 pairs (batch norm and Sinkhorn over the batch)")
        p_x, p_y = self.scores(x, y)
        t = 1.0 / self.log_scale.exp().to(p_x.dtype)
        return swapped_prediction_loss(p_x, p_y, t, epsilon=self.epsilon, n_iters=self.n_iters)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if int(self.step) >= self.freeze_steps:  # frozen ones were not touched: keep them bitwise
            for c in self.prototypes.values():
                c.copy_(F.normalize(c, dim=1))
        self.step += 1

    def log_values(self) -> dict[str, float]:
        return {"swalip_temperature": float(1.0 / self.log_scale.detach().exp())}
