"""Contrast between the parts of examples: within one example across its parts (Align and Attend's
intra-sample loss) and Jigsaw Clustering's patches of shuffled montages.

* ``intra_sample`` — no spec entry; He et al. 2023, "Align and Attend: Multimodal Summarization with
  Dual Contrastive Losses" (A2Summ, seed 23). UNVERIFIED: spec form from the abstract ("intra-sample
  correlations"), not checked against the original (A2Summ picks its positive / negative frames from
  predicted saliency; here the parts are aligned by position). Inputs are token sets (the
  late-interaction towers' ``[N, T, d]`` outputs, padding rows zero;
  :func:`~contrastkit.losses.maxsim.token_set`) of two modalities or views whose part t corresponds
  (a video frame and its transcript sentence, patch t of two photometric views of one image). Part
  t of x in example i is contrasted with part t of y *against the other parts of the same
  example* — no other example enters::

      ℓ_it = LSE_{s∈V_i} (x̂_it·ŷ_is/τ) − x̂_it·ŷ_it/τ,   V_i = parts present in both x_i and y_i
      loss = ½ (mean_{i,t} ℓ_it + the same with x and y swapped)     (symmetric=False: the first)

  the mean over every part of every example with |V_i| ≥ 2 (an example with one part has no
  negative and is left out; a batch with none is an InputError). τ = 0.1 (our choice). The
  inter-sample half of A2Summ is an ordinary pooled contrastive loss: combine them as terms,
  ``terms: {maxsim: 1.0, intra_sample: 0.5}`` (both read the token sets).
* ``jigsaw`` — no spec entry; Chen et al. 2021, "Jigsaw Clustering for Unsupervised Visual
  Representation Learning" (seed 93). UNVERIFIED: spec form from the abstract, not checked against
  the original. A batch of B images is cut into G = g×g patches each, the B·G patches shuffled
  across the batch and re-assembled into B montages (:func:`contrastkit.data.jigsaw.jigsaw_views`, a
  data-side function over uint8 images); the network sees only the montages (one forward per batch).
  Its feature map is cut back into the G cells (:func:`jigsaw_cells`), and the cell embeddings
  ``x [B·G, d]`` carry ``labels`` (the source image of each cell) and ``positions`` (its original
  cell)::

      L = SupCon_out(x; labels, τ)  +  λ · CE(W x + b, positions)        (clustering + localisation)

  τ = 0.2, λ = 1 (our choices); the localisation head ``Linear(d, G)`` is held by the loss. An
  optional second view ``y`` of the same cells joins the clustering term (two-view SupCon) and the
  localisation term (mean of both). Without ``labels`` the clustering term is two-view NT-Xent
  (SupCon without labels); without ``positions`` there is no localisation term.

Exactness: dense formulas; values and gradients equal naive float64 loops (tests). Tiled /
distributed: dense only; gather token sets / cells and their fields first. Related: M-MAXSIM
(:mod:`contrastkit.losses.late_interaction`), L-SUPCON, L-NTXENT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.checks import check_embeddings, check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive, PositiveInt
from contrastkit.losses.base import LOSSES, PairLoss, as_float
from contrastkit.losses.maxsim import token_set
from contrastkit.losses.supcon import supcon_loss

__all__ = ["IntraSampleLoss", "JigsawLoss", "intra_sample_loss", "jigsaw_cells", "jigsaw_loss"]


def _one_direction(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = torch.einsum("ntd,nsd->nts", a, b) / temperature  # [N, T, T]: parts of one example
    # an example without any shared part keeps finite logits: no all −inf row (NaN in backward)
    logits = logits.masked_fill(~valid[:, None, :] & valid.any(1)[:, None, None], float("-inf"))
    pos = logits.diagonal(dim1=1, dim2=2)
    rows = valid & (valid.sum(1, keepdim=True) >= 2)  # anchors with at least one negative part
    per = torch.where(rows, logits.logsumexp(2) - pos.masked_fill(~valid, 0.0), 0.0)
    return per.sum() / rows.sum()


def intra_sample_loss(
    x: torch.Tensor, y: torch.Tensor, *, temperature: float = 0.1, symmetric: bool = True
) -> torch.Tensor:
    """Align and Attend's intra-sample contrast over aligned parts (module docstring).

    Args:
        x: ``[N, T, d]`` token sets (padding rows zero). y: ``[N, T, d]``, part t aligned with x's.
        temperature: τ. symmetric: average the x→y and y→x directions (default).
    """
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    xt, xm = token_set(x, "x")
    yt, ym = token_set(y, "y")
    if xt.shape != yt.shape:
        raise InputError(
            f"x and y must be aligned token sets of one shape, got {tuple(xt.shape)}, {tuple(yt.shape)}"
        )
    valid = xm & ym
    if not bool((valid.sum(1) >= 2).any()):
        raise InputError("intra_sample_loss needs an example with >= 2 parts present in both x and y")
    xn = F.normalize(as_float(xt), dim=-1)
    yn = F.normalize(as_float(yt), dim=-1).to(xn.dtype)
    loss = _one_direction(xn, yn, valid, temperature)
    return 0.5 * (loss + _one_direction(yn, xn, valid, temperature)) if symmetric else loss


def jigsaw_cells(features: torch.Tensor, grid: int) -> torch.Tensor:
    """The cell embeddings ``[B·G, C]`` of montage feature maps ``[B, C, h, w]``: average-pooled over
    each of the g×g cells (adaptive pooling), cell k = row-major (r, c), in montage order (montage b's
    cells at rows ``b·G … b·G + G − 1``, matching :func:`contrastkit.data.jigsaw.jigsaw_views`)."""
    if features.ndim != 4:
        raise InputError(f"features must be a feature map [B, C, h, w], got {tuple(features.shape)}")
    if grid < 1 or features.shape[2] < grid or features.shape[3] < grid:
        raise InputError(f"a {tuple(features.shape[2:])} feature map cannot be cut into {grid}×{grid} cells")
    pooled = F.adaptive_avg_pool2d(features, grid)  # [B, C, g, g]
    return pooled.flatten(2).transpose(1, 2).reshape(-1, features.shape[1])


def jigsaw_loss(
    x: torch.Tensor,
    y: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    temperature: float = 0.2,
    loc_weight: float = 1.0,
) -> torch.Tensor:
    """Jigsaw Clustering: SupCon over the cells by source image + λ·localisation CE (module docstring).

    Args:
        x: ``[M, d]`` cell embeddings. y: optional second view ``[M, d]`` of the same cells.
        weight: ``[G, d]`` localisation head. bias: ``[G]``.
        labels: ``[M]`` source image of each cell. positions: ``[M]`` original cell in ``[0, G)``.
        temperature: τ of the clustering term. loc_weight: λ.
    """
    if not loc_weight >= 0:
        raise ConfigError(f"loc_weight must be >= 0, got {loc_weight}")
    loss = supcon_loss(x, y, temperature, labels=labels)
    if positions is None or not loc_weight:
        return loss
    m, g = x.shape[0], weight.shape[0]
    if not isinstance(positions, torch.Tensor) or positions.shape != (m,) or positions.is_floating_point():
        raise InputError(f"positions must be an integer tensor of shape [M]=[{m}]")
    if bool((positions < 0).any()) or bool((positions >= g).any()):
        raise InputError(f"positions must lie in [0, G={g}) (the cells of the grid)")
    views = [x] if y is None else [x, y]
    loc = sum(F.cross_entropy(F.linear(as_float(v).to(weight.dtype), weight, bias), positions) for v in views)
    return loss + loc_weight * loc / len(views)


@LOSSES.register("intra_sample")
class IntraSampleLoss(PairLoss):
    """Module form of :func:`intra_sample_loss` (x, y: aligned token sets ``[N, T, d]``)."""

    def __init__(self, temperature: Positive = 0.1, symmetric: bool = True) -> None:
        super().__init__()
        self.temperature, self.symmetric = float(temperature), symmetric

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return intra_sample_loss, {"temperature": self.temperature, "symmetric": self.symmetric}


@LOSSES.register("jigsaw")
class JigsawLoss(PairLoss):
    """Module form of :func:`jigsaw_loss` holding the localisation head ``Linear(d, g²)``.

    Args:
        grid: g (2: 2×2 patches). dim: embedding width d (``None``: lazy, read from the first batch).
        temperature: τ (0.2). loc_weight: λ (1).
    Batch fields ``labels [M]`` (source image of each cell) and ``positions [M]`` (its original cell).
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"labels", "positions"})

    def __init__(
        self,
        grid: PositiveInt = 2,
        dim: PositiveInt | None = None,
        temperature: Positive = 0.2,
        loc_weight: NonNegative = 1.0,
    ) -> None:
        super().__init__()
        cells = int(grid) ** 2
        self.head = nn.Linear(dim, cells) if dim is not None else nn.LazyLinear(cells)
        self.temperature, self.loc_weight = float(temperature), float(loc_weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        check_embeddings("x", x)
        if y is not None:
            check_pair(x, y)
        if isinstance(self.head, nn.LazyLinear):
            with torch.no_grad():
                self.head(as_float(x[:1]))  # sizes the head from the first batch
        return jigsaw_loss(
            x,
            y,
            self.head.weight,
            self.head.bias,
            labels=aux.get("labels"),
            positions=aux.get("positions"),
            temperature=self.temperature,
            loc_weight=self.loc_weight,
        )
