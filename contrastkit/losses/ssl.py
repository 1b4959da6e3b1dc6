"""Non-contrastive self-supervised losses (BYOL, Barlow Twins, SimSiam) and CLIP + SSL.

* :func:`byol_loss` (registry ``byol``), spec id L-BYOL [PARTIAL: training recipe recalled; the
  formula is standard]. Paper: Grill et al. 2020, "Bootstrap Your Own Latent". Online predictions
  ``p_v = q_θ(g_θ(f_θ(view v)))``, target projections ``z′_v = g_ξ(f_ξ(view v))`` (EMA copy ξ)::

      ℓ(p, z′) = ‖norm(p) − norm(sg z′)‖² = 2 − 2 cos(p, z′),   loss = mean_i [ℓ(p₁, z′₂) + ℓ(p₂, z′₁)]

  Each term lies in [0, 4], the sum in [0, 8]. The predictor (and the projector, with or without
  batch norm — the improved-baselines paper's "with and without BN" variants) lives in the model,
  or in the loss with ``predictor_hidden > 0`` (then the model's projections are the online
  outputs). The target EMA rate schedule is :func:`contrastkit.losses.momentum.byol_momentum`
  (τ_base = 0.996). N = 1 works.

* :func:`barlow_loss` (registry ``barlow``), spec id L-BARLOW [VERIFIED]. Paper: Zbontar et al.
  2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction". Each dimension is
  standardised over the batch (BatchNorm without affine: biased variance, eps 1e-5)::

      C = z̃ᴬᵀ z̃ᴮ / N (D×D),   L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²

  λ = 5e-3 (paper; the official code's flag is 0.0051). No row L2-normalisation in the method, so
  ``normalize`` defaults to False here. Memory: one D×D matrix. N = 1 is an error (no variance).
  Distributed: the reference uses SyncBatchNorm statistics and all-reduces C over the global
  batch; here dense only — gather the embeddings of all ranks first (then identical).

* :func:`simsiam_loss` (registry ``simsiam``), no spec entry. Paper: Chen & He 2021, "Exploring
  Simple Siamese Representation Learning". With ``D(p, z) = −mean_i cos(p_i, sg z_i)``::

      loss = ½ D(p₁, z₂) + ½ D(p₂, z₁)        ∈ [−1, 1]

  The standard form from the paper. SimSiam has no momentum encoder; by default the module reads
  the targets under ``":ema"`` keys, which a momentum wrapper with m = 0 fills with exactly the
  online projections (SimSiam = BYOL's architecture with m = 0); point ``projections`` at the
  model's projection keys otherwise.

* ``clip_plus_ssl`` (:class:`CLIPPlusSSLLoss`), no spec entry. Paper: Fini et al. 2023, "Improved
  baselines for vision-language pre-training" (from its abstract; spec form, not checked against
  the original): an image–text contrastive loss (CLIP) plus a weighted image–image SSL loss
  (``ntxent`` = SLIP's SimCLR term, ``byol``, ``barlow``, ``simsiam``, ``moco3``…) on two
  augmented views::

      L = w_it · CLIP(image@0, text) + w_ssl · SSL(views)

  Both terms are registered losses built by name; each term's value is logged.

Shapes: ``[N, D]`` per embedding set → 0-d tensor (float32, or float64 for float64 input). Targets
are always detached (stop-gradient). Tiled / distributed: dense only (``barlow``'s ``pure()`` is not
a clip/siglip form); gather embeddings first. Related: L-MOCO3 (contrastive with a momentum key
encoder), L-NTXENT, L-CLIP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from contrastkit.core.checks import check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, NonNegInt, PositiveInt

# imported so the terms clip_plus_ssl builds by name are registered (clip, siglip, ntxent, moco*)
from contrastkit.losses import clip, infonce, momentum, siglip  # noqa: F401
from contrastkit.losses.base import LOSSES, MultiLoss, PairLoss, as_float, maybe_normalize
from contrastkit.losses.composite import WeightedTerms

__all__ = [
    "BYOLLoss",
    "BarlowTwinsLoss",
    "CLIPPlusSSLLoss",
    "SimSiamLoss",
    "barlow_loss",
    "byol_loss",
    "predictor_mlp",
    "simsiam_loss",
]


def _cosine_to_target(p: torch.Tensor, z: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Per-row ``norm(p)·norm(sg z)`` (plain dot product when ``normalize`` is off), ``[N]``."""
    p = maybe_normalize(p, normalize)
    return (p * maybe_normalize(z.detach(), normalize).to(p.dtype)).sum(dim=1)


def byol_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, *, normalize: bool = True
) -> torch.Tensor:
    """BYOL: ``mean_i [(2 − 2cos(p₁ᵢ, sg z₂ᵢ)) + (2 − 2cos(p₂ᵢ, sg z₁ᵢ))]``.

    Args:
        p1: ``[N, D]`` online predictions of view 1 (gradient flows).
        p2: the same for view 2.
        z1: ``[N, D]`` target projections of view 1 (detached).
        z2: the same for view 2.
        normalize: L2-normalise first (default, BYOL); off: ``‖p − z‖²`` of the raw vectors.
    """
    for a, b, names in ((p1, p2, ("p1", "p2")), (z1, z2, ("z1", "z2")), (p1, z1, ("p1", "z1"))):
        check_pair(a, b, names)
    if normalize:
        return (4.0 - 2.0 * (_cosine_to_target(p1, z2, True) + _cosine_to_target(p2, z1, True))).mean()
    p1, p2 = as_float(p1), as_float(p2)
    d12 = (p1 - as_float(z2.detach()).to(p1.dtype)).square().sum(1)
    d21 = (p2 - as_float(z1.detach()).to(p2.dtype)).square().sum(1)
    return (d12 + d21).mean()


def simsiam_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, *, normalize: bool = True
) -> torch.Tensor:
    """SimSiam: ``½ D(p₁, z₂) + ½ D(p₂, z₁)``, ``D(p, z) = −mean_i cos(p_i, sg z_i)``.

    Args:
        p1: ``[N, D]`` predictions of view 1 (gradient flows).
        p2: the same for view 2.
        z1: ``[N, D]`` projections of view 1 (detached).
        z2: the same for view 2.
        normalize: cosine (default); off: negative raw dot product.
    """
    for a, b, names in ((p1, p2, ("p1", "p2")), (z1, z2, ("z1", "z2")), (p1, z1, ("p1", "z1"))):
        check_pair(a, b, names)
    return -0.5 * (_cosine_to_target(p1, z2, normalize) + _cosine_to_target(p2, z1, normalize)).mean()


def barlow_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lambd: float = 5e-3,
    eps: float = 1e-5,
    normalize: bool = False,
) -> torch.Tensor:
    """Barlow Twins: ``Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²`` with ``C = z̃ᴬᵀ z̃ᴮ / N``.

    Args:
        x: ``[N, D]`` projections of view A, N ≥ 2.
        y: ``[N, D]`` projections of view B.
        lambd: λ, weight of the redundancy-reduction (off-diagonal) term (paper 5e-3; code 0.0051).
        eps: added to the biased per-dimension variance before the square root (BatchNorm: 1e-5).
        normalize: L2-normalise rows before standardising (off by default: not part of the method).
    """
    check_pair(x, y)
    n = x.shape[0]
    if n < 2:
        raise InputError(
            "barlow_loss needs N >= 2: per-dimension standardisation over a batch of 1 is undefined"
        )
    if not lambd >= 0:
        raise ConfigError(f"lambd must be >= 0, got {lambd}")
    if not eps >= 0:
        raise ConfigError(f"eps must be >= 0, got {eps}")
    za, zb = maybe_normalize(x, normalize), maybe_normalize(y, normalize)
    zb = zb.to(za.dtype)

    def standardise(z: torch.Tensor) -> torch.Tensor:
        centred = z - z.mean(dim=0)
        return centred / (centred.square().mean(dim=0) + eps).sqrt()  # biased variance, as BatchNorm

    c = standardise(za).T @ standardise(zb) / n
    diag = c.diagonal()
    # Σ_{i≠j} C_ij² = Σ C² − Σ diag²: no second D×D matrix for a mask
    return (1.0 - diag).square().sum() + lambd * (c.square().sum() - diag.square().sum())


@LOSSES.register("barlow")
class BarlowTwinsLoss(PairLoss):
    """Module form of :func:`barlow_loss` on two views ``x``, ``y`` (no learnable parameters).

    Args:
        lambd: λ (5e-3; the official code uses 0.0051). eps: BatchNorm eps (1e-5).
    """

    def __init__(self, lambd: NonNegative = 5e-3, eps: NonNegative = 1e-5) -> None:
        super().__init__()
        if not lambd >= 0 or not eps >= 0:
            raise ConfigError(f"lambd and eps must be >= 0, got {lambd}, {eps}")
        self.lambd, self.eps = float(lambd), float(eps)

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return barlow_loss, {"lambd": self.lambd, "eps": self.eps}


def _two(value: Sequence[str], what: str) -> tuple[str, str]:
    names = tuple(value) if not isinstance(value, str) else ()
    if len(names) != 2 or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{what} must be two key names, got {value!r}")
    return names  # type: ignore[return-value]


def predictor_mlp(dim: int, hidden: int, batch_norm: bool = True) -> nn.Sequential:
    """BYOL / SimSiam predictor ``Linear(d, h) → [BatchNorm] → ReLU → Linear(h, d)``."""
    if dim < 1 or hidden < 1:
        raise ConfigError(f"predictor needs dim >= 1 and hidden >= 1, got {dim}, {hidden}")
    norm: list[nn.Module] = [nn.BatchNorm1d(hidden)] if batch_norm else []
    return nn.Sequential(nn.Linear(dim, hidden), *norm, nn.ReLU(), nn.Linear(hidden, dim))


class _PredictionTargetLoss(MultiLoss):
    """Reads two online outputs and the two targets they regress onto (crossed views).

    With ``predictor_hidden > 0`` the loss owns the predictor q (:func:`predictor_mlp`, width
    ``dim`` → ``predictor_hidden`` → ``dim``) and applies it to both online outputs, so a plain
    projection model trains BYOL / SimSiam; with 0 the online outputs are taken as predictions.
    """

    fn: Callable[..., torch.Tensor]

    def __init__(
        self,
        predictions: Sequence[str],
        targets: Sequence[str],
        predictor_hidden: int = 0,
        dim: int | None = None,
        predictor_bn: bool = True,
    ) -> None:
        super().__init__()
        self.inputs = _two(predictions, "predictions") + _two(targets, "targets")
        self.predictor: nn.Module | None = None
        if predictor_hidden:
            if dim is None:
                raise ConfigError("predictor_hidden > 0 needs dim (the embedding width)")
            self.predictor = predictor_mlp(dim, predictor_hidden, predictor_bn)

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        p1, p2, z1, z2 = self.select(emb)
        if self.predictor is not None:  # one call per view: per-view batch-norm statistics, as
            p1, p2 = self.predictor(p1), self.predictor(p2)  # SimSiam's reference code does
        return type(self).fn(p1, p2, z1, z2)


@LOSSES.register("byol")
class BYOLLoss(_PredictionTargetLoss):
    """Module form of :func:`byol_loss`.

    Args:
        predictions: keys of the online outputs of views 1, 2 (``("image@0", "image@1")``).
        targets: keys of the target projections of views 1, 2 (``("image@0:ema", "image@1:ema")``).
        predictor_hidden: width of the loss-owned predictor q (0: none, the inputs are predictions;
            BYOL: 4096 for d = 256). dim: embedding width d (needed with a predictor).
        predictor_bn: batch norm in the predictor (the "with / without BN" variants).
    """

    fn = staticmethod(byol_loss)

    def __init__(
        self,
        predictions: Sequence[str] = ("image@0", "image@1"),
        targets: Sequence[str] = ("image@0:ema", "image@1:ema"),
        predictor_hidden: NonNegInt = 0,
        dim: PositiveInt | None = None,
        predictor_bn: bool = True,
    ) -> None:
        super().__init__(predictions, targets, predictor_hidden, dim, predictor_bn)


@LOSSES.register("simsiam")
class SimSiamLoss(_PredictionTargetLoss):
    """Module form of :func:`simsiam_loss`.

    Args:
        predictions: keys of the online outputs of views 1, 2 (``("image@0", "image@1")``).
        projections: keys of the (stop-gradient) projections of views 1, 2; default
            ``("image@0:ema", "image@1:ema")`` (a momentum wrapper with m = 0 gives exactly SimSiam).
        predictor_hidden: the loss-owned predictor's hidden width, as :class:`BYOLLoss`
            (SimSiam: hidden 512 for d = 2048, i.e. a bottleneck of d/4).
        dim: embedding width d (needed with a predictor), as ``BYOLLoss``.
        predictor_bn: batch norm in the predictor, as ``BYOLLoss``.
    """

    fn = staticmethod(simsiam_loss)

    def __init__(
        self,
        predictions: Sequence[str] = ("image@0", "image@1"),
        projections: Sequence[str] = ("image@0:ema", "image@1:ema"),
        predictor_hidden: NonNegInt = 0,
        dim: PositiveInt | None = None,
        predictor_bn: bool = True,
    ) -> None:
        super().__init__(predictions, projections, predictor_hidden, dim, predictor_bn)


@LOSSES.register("clip_plus_ssl")
class CLIPPlusSSLLoss(MultiLoss, WeightedTerms):
    """``w_it · contrastive(image, text) + w_ssl · ssl(views)``, each term a registered loss.

    Args:
        ssl: registry name of the image–image loss (``"ntxent"`` default = SLIP; ``"byol"``,
            ``"barlow"``, ``"simsiam"``, ``"moco3"``, ``"moco2"``…).
        ssl_weight: w_ssl (1.0). image_text_weight: w_it (1.0).
        ssl_params: constructor parameters of the SSL loss (e.g. its keys for byol/simsiam).
        contrastive: registry name of the image–text pair loss (``"clip"``; ``"siglip"`` works).
        contrastive_params: its constructor parameters (e.g. ``init_temperature``).
        image_text: the two keys the contrastive loss reads (``("image@0", "text")``).
        views: the two keys a *pair* SSL loss (ntxent, barlow) reads (``("image@0", "image@1")``);
            a multi-input SSL loss (byol, simsiam, moco*) reads its own keys from ``ssl_params``.

    The SSL loss's and the contrastive loss's learnable parameters are trained, their post-step
    constraints applied; batch fields (``labels``…) go to the terms that declare them.
    """

    def __init__(
        self,
        ssl: str = "ntxent",
        ssl_weight: NonNegative = 1.0,
        ssl_params: dict[str, Any] | None = None,
        contrastive: str = "clip",
        contrastive_params: dict[str, Any] | None = None,
        image_text_weight: NonNegative = 1.0,
        image_text: Sequence[str] = ("image@0", "text"),
        views: Sequence[str] = ("image@0", "image@1"),
    ) -> None:
        super().__init__()
        it_loss = LOSSES.build(contrastive, **(contrastive_params or {}))
        if isinstance(it_loss, MultiLoss):
            raise ConfigError(f"contrastive must be a pair loss (two embeddings), {contrastive!r} is not")
        terms = {
            "image_text": (image_text_weight, it_loss),
            "ssl": (ssl_weight, LOSSES.build(ssl, **(ssl_params or {}))),
        }
        self._set_terms(terms, labels={"image_text": contrastive, "ssl": f"ssl_{ssl}"})
        self.image_text, self.views = _two(image_text, "image_text"), _two(views, "views")
        ssl_keys = self.terms["ssl"].inputs if isinstance(self.terms["ssl"], MultiLoss) else self.views
        if ssl_keys is None:
            raise ConfigError(f"ssl loss {ssl!r} reads all embeddings; give it explicit keys")
        self.inputs = tuple(dict.fromkeys(self.image_text + tuple(ssl_keys)))

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        self.select(emb)  # every key present, or an error naming the missing ones
        total = None
        for name, term in self.terms.items():
            own = self.term_aux(term, aux)
            if isinstance(term, MultiLoss):
                value = term(emb, **own)
            else:
                keys = self.image_text if name == "image_text" else self.views
                value = term(emb[keys[0]], emb[keys[1]], **own)
            total = self.add_term(total, name, value)
        return total  # type: ignore[return-value]
