"""Set pooling: one embedding for a bag of instances (multiple-instance learning).

A sample may be a set — several photos of one product, several frames of a clip. The ``set_pool``
tower runs any inner tower (``timm``, ``mlp``…) on every instance of a bag and pools the
instance features ``h_1 … h_n ∈ R^M`` into one vector, independent of their order (seed paper:
Wang et al. 2022, "Using Multiple Instance Learning to Build Multimodal Representations":
permutation-invariant bag scores; pooling operator from Ilse, Tomczak, Welling 2018,
"Attention-based Deep Multiple Instance Learning")::

    gated:      s_k = wᵀ (tanh(V h_k + b_V) ⊙ σ(U h_k + b_U)) + b_w      V, U ∈ R^{L×M}, w ∈ R^L
    attention:  s_k = wᵀ tanh(V h_k + b_V) + b_w
    mean:       s_k = 0
    z = Σ_k a_k h_k,   a = softmax_k(s)   (padded instances: s_k = −∞, a_k = 0)

``hidden`` is L (128 in Ilse et al.). Inputs: ``layout: stack`` takes ``[B, K, *instance]`` (any
inner input: images ``uint8 [B, K, 3, H, W]``, vectors ``[B, K, D]``) with an optional ``mask``
``bool [B, K]`` (True = real instance; each bag needs one) for bags of different sizes, given
through the Python call ``tower(x, mask)``; ``layout: strip`` takes ``uint8 [B, 3, H, K·H]``,
the K square instances side by side (how :mod:`contrastkit.data.shape_bags` stores a bag as one
image, so data loaders, evaluation and export see an ordinary image; a single ``H × H`` image is
a bag of one).

Exactness: only real instances reach the inner tower (padding never enters its batch-norm
statistics), and the pooling sorts each bag by score (``mean``: by ``Σ_j h_kj``) and accumulates
in that order, so for given instance features a permutation of the instances or extra padding
gives bit-identical output (up to instances whose sort keys tie exactly), and a bag of one returns
its instance's features exactly (``a = 1``). The whole tower is as order-free as the inner tower's
per-instance features: to rounding (≈1e-16 relative in float64), since a BLAS matrix product may
round a row differently at another position of the batch, and a batch-norm CNN in training mode
normalises with sums over the batch. Related: :mod:`contrastkit.models.towers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import PositiveInt
from contrastkit.models.towers import TOWERS, Tower, TowerContext

__all__ = ["POOLINGS", "AttentionPool", "SetPoolTower", "pool_instances"]

POOLINGS = ("gated", "attention", "mean")


def pool_instances(
    h: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, key: torch.Tensor
) -> torch.Tensor:
    """``z_b = Σ_k softmax(scores_b)_k h_bk`` over the real instances (``mask``) of each bag.

    ``h [B, K, M]`` (padded rows finite), ``scores``/``key``/``mask`` ``[B, K]``. Instances are
    visited in decreasing ``key`` (stable) and summed one by one, so the result does not depend on
    the order of the instances or on padding (exact, not just to rounding)."""
    if not bool(mask.any(dim=1).all()):
        raise InputError("every bag needs at least one instance (a row of mask is all False)")
    order = torch.sort(
        key.detach().masked_fill(~mask, float("-inf")), dim=1, descending=True, stable=True
    ).indices
    s = scores.masked_fill(~mask, float("-inf")).gather(1, order)
    h = h.gather(1, order.unsqueeze(-1).expand_as(h))
    keep = mask.gather(1, order)
    e = torch.exp(s - s[:, :1]).masked_fill(~keep, 0.0)  # s[:, 0] is a real instance's score
    # one instance at a time: the same additions in the same order however the bag was given
    denom, acc = e[:, 0], e[:, :1] * h[:, 0]
    for k in range(1, h.shape[1]):
        denom = denom + e[:, k]
        acc = acc + e[:, k : k + 1] * h[:, k]
    return acc / denom.unsqueeze(-1)


class AttentionPool(nn.Module):
    """Order-free attention-MIL pooling of instance features ``[B, K, M]`` → ``[B, M]``."""

    def __init__(self, dim: int, hidden: int = 128, pooling: str = "gated") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"set pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        if pooling != "mean":
            self.V = nn.Linear(dim, hidden)
            self.U = nn.Linear(dim, hidden) if pooling == "gated" else None
            self.w = nn.Linear(hidden, 1)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """``s [B, K]`` of instance features ``h [B, K, M]``."""
        if self.pooling == "mean":
            return h.new_zeros(h.shape[:2])
        a = torch.tanh(self.V(h))
        if self.U is not None:
            a = a * torch.sigmoid(self.U(h))
        return self.w(a).squeeze(-1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        s = self.scores(h)
        return pool_instances(h, s, mask, h.sum(-1) if self.pooling == "mean" else s)


class SetPoolTower(Tower):
    """An inner tower applied to every instance of a bag, then :class:`AttentionPool`."""

    def __init__(
        self, inner: Tower, hidden: int = 128, pooling: str = "gated", layout: str = "stack"
    ) -> None:
        super().__init__()
        if layout not in ("stack", "strip"):
            raise ConfigError(f"tower 'set_pool': layout must be 'stack' or 'strip', got {layout!r}")
        self.inner = inner
        self.layout = layout
        self.output_dim = int(inner.output_dim)
        self.pool = AttentionPool(self.output_dim, hidden, pooling)

    def instances(self, x: torch.Tensor) -> torch.Tensor:
        """The bags of ``x`` as ``[B, K, *instance]`` (a strip split into its square tiles)."""
        if self.layout == "stack":
            if x.ndim < 3:
                raise InputError(f"set_pool (layout stack) needs bags [B, K, ...], got {tuple(x.shape)}")
            return x
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"set_pool (layout strip) needs images [B, 3, H, K·H], got {tuple(x.shape)}")
        b, c, h, w = x.shape
        if h == 0 or w % h:
            raise InputError(f"set_pool (layout strip): width {w} is not a multiple of the height {h}")
        return x.reshape(b, c, h, w // h, h).permute(0, 3, 1, 2, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        bags = self.instances(x)
        b, k = bags.shape[:2]
        if b == 0 or k == 0:
            raise InputError(f"empty bag batch {tuple(bags.shape)}")
        if mask is None:
            mask = torch.ones((b, k), dtype=torch.bool, device=bags.device)
        if mask.shape != (b, k) or mask.dtype != torch.bool:
            raise InputError(f"mask must be bool [{b}, {k}], got {mask.dtype} {tuple(mask.shape)}")
        if not bool(mask.any(dim=1).all()):
            raise InputError("every bag needs at least one instance (a row of mask is all False)")
        feats = self.inner(bags[mask].contiguous())  # real instances only, in row-major bag order
        idx = mask.nonzero(as_tuple=True)
        h = feats.new_zeros((b, k, feats.shape[-1])).index_put(idx, feats)
        return self.pool(h, mask)

    def save_assets(self, folder: Path) -> None:
        self.inner.save_assets(Path(folder) / "inner")


def _inner_config(inner: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(inner, Mapping) or not isinstance(inner.get("name"), str):
        raise ConfigError(
            "tower 'set_pool' needs params.inner: {name: <tower>, params: {...}}, e.g. "
            f"{{name: timm, params: {{arch: resnet18}}}}; got {inner!r}"
        )
    extra = sorted(set(inner) - {"name", "params"})
    if extra:
        raise ConfigError(f"tower 'set_pool': params.inner takes name and params, not {extra}")
    params = inner.get("params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"tower 'set_pool': params.inner.params must be a mapping, got {params!r}")
    if inner["name"] == "set_pool":
        raise ConfigError("tower 'set_pool': the inner tower cannot be another set_pool")
    return inner["name"], dict(params)


@TOWERS.register("set_pool")
def set_pool_tower(
    inner: dict[str, Any],
    pooling: Literal["gated", "attention", "mean"] = "gated",
    hidden: PositiveInt = 128,
    layout: Literal["stack", "strip"] = "stack",
    context: TowerContext | None = None,
) -> SetPoolTower:
    """A bag of instances through the tower ``inner`` (``{name, params}``, any registered tower),
    pooled order-free by gated attention (Ilse et al. 2018; ``attention``: ungated, ``mean``);
    ``layout: strip`` reads a bag stored as one image of K square tiles side by side."""
    name, params = _inner_config(inner)
    context = context or TowerContext()
    assets = None if context.assets_dir is None else context.assets_dir / "inner"
    built = TOWERS.build(name, context=TowerContext(texts=context.texts, assets_dir=assets), **params)
    if getattr(built, "shares", None) is not None:
        raise ConfigError(f"tower 'set_pool': inner tower {name!r} shares another tower; it cannot be pooled")
    return SetPoolTower(built, hidden, pooling, layout)
