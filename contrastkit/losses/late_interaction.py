"""L-MAXSIM and L-QFORMER-ITC — contrastive losses over late-interaction (MaxSim) scores.

Spec ids: M-MAXSIM (ColBERT/CLaMR contrastive form), M-QFORMER-ITC (BLIP-2 stage-1 ITC).
Papers: Khattab & Zaharia 2020 "ColBERT"; CLaMR (seed 56); Li et al. 2023 "BLIP-2" (seed 9),
read in salesforce/LAVIS ``blip2_qformer.py``.

Inputs are token sets (:func:`contrastkit.losses.maxsim.token_set`: ``[N, T, d]`` with zero rows
as padding, or ``[N, d]`` as one token each). ``x`` holds the documents (the trainer's first
modality: images), ``y`` the queries (texts). Every token is L2-normalised, then::

    S_ij = MaxSim(y_i, x_j) = Σ_a max_b  y_ia · x_jb          (maxsim.maxsim, exact, tiled)
    L    = s·S  (+ per-query hard-negative columns s·MaxSim(y_i, n_ik))
    loss = CE(L, diag)                                       (query → documents)
    symmetric: ½ [CE(L, diag) + CE(L_{:, :N}ᵀ, diag)]         (+ document → queries)

with optional label smoothing inside each CE (``F.cross_entropy(label_smoothing=ε)``).

* ``maxsim`` (ColBERT/CLaMR): ``s = 1/τ``, ``τ = 1`` fixed by default (ColBERT trains without a
  temperature), one direction by default; CLaMR's InfoNCE over one bag of tokens per document is
  this loss (its modality list is whatever the document tower puts in the bag; UNVERIFIED: no CLaMR
  code was found, so its numbers stay configurable).
* ``qformer_itc`` (BLIP-2): queries are texts with ONE token ([CLS]) and documents the image's K
  query outputs, so ``S_ij = max_k q_k^(j) · t_i`` in both directions; symmetric, label smoothing
  0.1, learnable temperature ``temp`` (init 0.07, logits ``S/temp``, parametrised directly as in
  LAVIS). LAVIS does not clamp ``temp``; contrastkit keeps ``temp ≥ min_temperature`` (0.001) after
  each step so the logits never flip sign. With K = 1 it is CLIP's loss with label smoothing 0.1.

Exactness: values are the naive loops' up to float rounding; gradients are the argmax
subgradient (only the winning token of each max gets gradient). Memory: the score matrix is
computed in tiles (``tile``), see :mod:`contrastkit.losses.maxsim`.
N = 1 without hard negatives has no negative: an error unless ``allow_single``.
Related: L-CLIP (one vector per side), :mod:`contrastkit.evaluation.late_interaction`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.checks import check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Fraction, Positive, PositiveInt
from contrastkit.losses.base import LOSSES, MaxScale, PairLoss, as_float, learnable_log_scale
from contrastkit.losses.maxsim import maxsim, maxsim_pairs, token_set

__all__ = ["MaxSimLoss", "QFormerITCLoss", "late_interaction_loss", "late_interaction_scores"]


def _normalized(x: torch.Tensor, name: str, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, mask = token_set(as_float(x), name)
    return (F.normalize(tokens, dim=-1) if normalize else tokens), mask  # zero rows stay zero


def late_interaction_scores(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    normalize: bool = True,
    doc_mask_mode: Literal["v2", "zero_vector"] = "v2",
    tile: int | None = None,
) -> torch.Tensor:
    """``S[i, j] = MaxSim(y_i, x_j)``, ``[N_y, N_x]``: queries ``y`` against documents ``x``, both
    packed token sets (or ``[N, d]`` one-token sets), every token L2-normalised first."""
    xt, xm = _normalized(x, "x", normalize)
    yt, ym = _normalized(y, "y", normalize)
    return maxsim(yt, xt.to(yt.dtype), ym, xm, doc_mask_mode=doc_mask_mode, tile=tile)


def late_interaction_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor | float,
    *,
    symmetric: bool = False,
    label_smoothing: float = 0.0,
    doc_mask_mode: Literal["v2", "zero_vector"] = "v2",
    normalize: bool = True,
    tile: int | None = None,
    negatives: torch.Tensor | None = None,
    in_batch_negatives: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """Contrastive loss over MaxSim scores (module docstring).

    Args:
        x: ``[N, n_d, d]`` documents (images) as packed token sets, or ``[N, d]``.
        y: ``[N, n_q, d]`` queries (texts), or ``[N, d]``; ``y[i]`` is the positive of ``x[i]``.
        scale: logit multiplier ``s = 1/τ`` (a tensor for a learnable one).
        symmetric: add the document → queries direction (columns of the in-batch block).
        label_smoothing: ``ε`` of every cross-entropy, in [0, 1).
        doc_mask_mode: ``"v2"`` or ``"zero_vector"`` (:mod:`contrastkit.losses.maxsim`).
        normalize: L2-normalise every token first (default).
        tile: queries/documents per tile side of the score matrix (default: automatic).
        negatives: ``[N, K, n_d, d]`` extra documents per query (packed), scored as extra columns.
        in_batch_negatives: use the other rows' documents as negatives (ColBERT v1 trains with its
            hard negative only: ``False``, which needs ``negatives``).
        allow_single: accept N = 1 without negatives (the loss is then 0).
    Returns:
        0-d tensor (float32, float64 for float64 input).
    """
    n = x.shape[0] if isinstance(x, torch.Tensor) else 0
    if not isinstance(y, torch.Tensor) or y.shape[0] != n:
        raise InputError(f"x and y must pair row by row: got {n} documents and {len(y)} queries")
    if not 0.0 <= label_smoothing < 1.0:
        raise InputError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if isinstance(scale, torch.Tensor):
        check_scalar_param("scale", scale)
    if not in_batch_negatives and (negatives is None or symmetric):
        raise InputError("in_batch_negatives=False needs negatives and symmetric=False (no in-batch block)")
    if n == 1 and negatives is None and not allow_single:
        raise InputError(
            "late_interaction_loss got a batch of 1 pair: with no negatives the loss is identically 0; "
            "pass allow_single=True if that is intended"
        )
    xt, xm = _normalized(x, "x", normalize)
    yt, ym = _normalized(y, "y", normalize)
    xt = xt.to(yt.dtype)
    target = torch.arange(n, device=yt.device)
    cols: list[torch.Tensor] = []
    if in_batch_negatives:
        cols.append(maxsim(yt, xt, ym, xm, doc_mask_mode=doc_mask_mode, tile=tile))
    else:
        cols.append(_positive_scores(yt, xt, ym, xm, doc_mask_mode))
        target = torch.zeros_like(target)
    if negatives is not None:
        neg = as_float(negatives).to(yt.dtype)
        if neg.ndim == 3:  # [N, K, d]: one token per negative
            neg = neg[:, :, None, :]
        if neg.ndim != 4 or neg.shape[0] != n or neg.shape[-1] != yt.shape[-1]:
            raise InputError(
                f"negatives must be [N={n}, K, n_d, d={yt.shape[-1]}], got {tuple(negatives.shape)}"
            )
        nm = (neg != 0).any(-1)
        nt = F.normalize(neg, dim=-1) if normalize else neg
        cols.append(maxsim_pairs(yt, nt, ym, nm, doc_mask_mode=doc_mask_mode))
    logits = scale * torch.cat(cols, dim=1)
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if not symmetric:
        return loss
    back = F.cross_entropy(logits[:, :n].T, target, label_smoothing=label_smoothing)
    return 0.5 * (loss + back)


def _positive_scores(yt, xt, ym, xm, mode) -> torch.Tensor:
    """``[N, 1]``: each query against its own document only."""
    return maxsim_pairs(yt, xt[:, None], ym, xm[:, None], doc_mask_mode=mode)


@LOSSES.register("maxsim")
class MaxSimLoss(PairLoss):
    """L-MAXSIM — ColBERT/CLaMR contrastive loss over MaxSim scores of token sets (texts are the
    queries, images the documents): ``CE(S/τ, diag)``, optionally symmetric.

    Args:
        tau: temperature τ (logits ``S/τ``); ColBERT: 1.0, no temperature.
        learnable: learn ``log(1/τ)`` (clamped to ``[0, ln max_scale]`` after each step, as CLIP).
        max_scale: the clamp bound of a learnable ``1/τ``.
        symmetric: also the document → queries direction (CLIP-like); ColBERT: False.
        doc_mask_mode: ``"v2"`` (−9999 before the max, default) or ``"zero_vector"`` (ColBERT v1).
        label_smoothing: ε of the cross-entropies.
        tile: queries/documents per tile side of the score matrix (default: automatic).
        allow_single: accept a batch of one pair (loss 0).
    """

    def __init__(
        self,
        tau: Positive = 1.0,
        learnable: bool = False,
        max_scale: MaxScale = 100.0,
        symmetric: bool = False,
        doc_mask_mode: Literal["v2", "zero_vector"] = "v2",
        label_smoothing: Fraction = 0.0,
        tile: PositiveInt | None = None,
        allow_single: bool = False,
    ) -> None:
        super().__init__()
        self.log_scale, self.max_log_scale = learnable_log_scale(tau, max_scale, learnable)
        self.options = {
            "symmetric": symmetric,
            "doc_mask_mode": doc_mask_mode,
            "label_smoothing": label_smoothing,
            "tile": tile,
            "allow_single": allow_single,
        }

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return late_interaction_loss, {"scale": self.log_scale.exp(), **self.options}

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.log_scale.requires_grad:
            self.log_scale.clamp_(0.0, self.max_log_scale)

    def log_values(self) -> dict[str, float]:
        return {"logit_scale": float(self.log_scale.detach().exp())}


@LOSSES.register("qformer_itc")
class QFormerITCLoss(PairLoss):
    """L-QFORMER-ITC — BLIP-2's image–text contrastive loss: ``s(i, j) = max_k q_k^(i) · t_j`` over
    an image's K query vectors, symmetric CE with label smoothing, learnable temperature.

    Args:
        init_temperature: initial ``temp`` (BLIP-2: 0.07); logits are ``s/temp``.
        learnable: learn ``temp`` (BLIP-2) or keep it fixed.
        label_smoothing: ε of both cross-entropies (BLIP-2: 0.1).
        min_temperature: ``temp`` is clamped to at least this after each step (LAVIS: no clamp).
        tile: queries/documents per tile side of the score matrix (default: automatic).
        allow_single: accept a batch of one pair (loss 0).
    """

    def __init__(
        self,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        label_smoothing: Fraction = 0.1,
        min_temperature: Positive = 0.001,
        tile: PositiveInt | None = None,
        allow_single: bool = False,
    ) -> None:
        super().__init__()
        if init_temperature < min_temperature:
            raise ConfigError(
                f"init_temperature {init_temperature} is below min_temperature {min_temperature}"
            )
        self.temp = nn.Parameter(torch.tensor(float(init_temperature)), requires_grad=learnable)
        self.min_temperature = min_temperature
        self.options = {"label_smoothing": label_smoothing, "tile": tile, "allow_single": allow_single}

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return late_interaction_loss, {"scale": 1.0 / self.temp, "symmetric": True, **self.options}

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.temp.clamp_(min=self.min_temperature)

    def log_values(self) -> dict[str, float]:
        t = float(self.temp.detach())
        return {"temperature": t, "logit_scale": 1.0 / t}
