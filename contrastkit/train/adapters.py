"""Adapters on frozen encoders: heads trained over cached features (LiT heads, FuseMix).

When both towers are frozen, their features are computed once (memory-mapped cache,
:func:`contrastkit.models.cache.cached_features`) and only small heads are trained — seconds on
a CPU. ``heads="linear"`` is a linear projection per modality (the classic frozen-tower
baseline); ``heads="mlp"`` a two-layer MLP. ``mixup="fusemix"`` is FuseMix (Vouitsis et al.,
"Data-Efficient Multimodal Fusion on a Single GPU", 2024): each step mixes pairs *in the frozen
latent spaces* with one λ ~ Beta(α, α) per pair shared by both modalities,
``x̃ = λ·x_i + (1-λ)·x_π(i)``, ``ỹ = λ·y_i + (1-λ)·y_π(i)``, and trains the heads on the mixed
pairs with the CLIP loss (learnable logit scale, init 1/0.07, clamped to ≤ 100).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.progress import progress_bar
from contrastkit.core.runtime import set_threads
from contrastkit.losses.clip import clip_loss

__all__ = ["AdapterConfig", "Heads", "train_heads"]


@dataclass(frozen=True)
class AdapterConfig:
    """Heads over frozen features; ``mixup_alpha`` is FuseMix's Beta parameter."""

    heads: Literal["linear", "mlp"] = "linear"
    embed_dim: int = 256
    hidden_dim: int = 512
    steps: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    mixup: Literal["none", "fusemix"] = "none"
    mixup_alpha: float = 1.0
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.heads not in ("linear", "mlp"):
            raise ConfigError(f"adapter heads must be 'linear' or 'mlp', got {self.heads!r}")
        if self.mixup not in ("none", "fusemix"):
            raise ConfigError(f"adapter mixup must be 'none' or 'fusemix', got {self.mixup!r}")
        for name in ("embed_dim", "hidden_dim", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"adapter {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.mixup_alpha <= 0:
            raise ConfigError("adapter lr and mixup_alpha must be > 0")


def _head(kind: str, d_in: int, d_hidden: int, d_out: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(d_in, d_out, bias=False)
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class Heads(nn.Module):
    """One head per modality over frozen features, and the CLIP logit scale."""

    def __init__(self, cfg: AdapterConfig, image_dim: int, text_dim: int) -> None:
        super().__init__()
        self.image = _head(cfg.heads, image_dim, cfg.hidden_dim, cfg.embed_dim)
        self.text = _head(cfg.heads, text_dim, cfg.hidden_dim, cfg.embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @torch.no_grad()
    def embed(
        self, image_feats: np.ndarray | torch.Tensor | None, text_feats: np.ndarray | torch.Tensor | None
    ):
        """Normalised ``(image, text)`` embeddings of feature arrays (either may be ``None``)."""
        self.eval()
        out = []
        for head, f in ((self.image, image_feats), (self.text, text_feats)):
            x = (
                None if f is None else torch.from_numpy(np.array(f, dtype=np.float32))
            )  # a copy: memmaps are read-only
            out.append(None if x is None else F.normalize(head(x).float(), dim=-1))
        return tuple(out)


def _rows(feats: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(feats[idx], dtype=np.float32))


def train_heads(
    image_feats: np.ndarray, text_feats: np.ndarray, cfg: AdapterConfig
) -> tuple[Heads, list[float]]:
    """Train :class:`Heads` on paired rows ``(image_feats[i], text_feats[i])``; returns the heads
    and the loss every step. Features are only read (a memory-mapped cache works)."""
    if len(image_feats) != len(text_feats) or len(image_feats) < 2:
        raise InputError(f"need >= 2 paired rows, got {len(image_feats)} images and {len(text_feats)} texts")
    previous = torch.get_num_threads()
    set_threads(cfg.threads)
    try:
        return _fit(image_feats, text_feats, cfg)
    finally:
        torch.set_num_threads(previous)


def _fit(image_feats: np.ndarray, text_feats: np.ndarray, cfg: AdapterConfig) -> tuple[Heads, list[float]]:
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    heads = Heads(cfg, image_feats.shape[1], text_feats.shape[1])
    decay = [p for n, p in heads.named_parameters() if n != "log_scale" and p.ndim > 1]
    rest = [p for n, p in heads.named_parameters() if n == "log_scale" or p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    beta = torch.distributions.Beta(cfg.mixup_alpha, cfg.mixup_alpha)
    n, b = len(image_feats), min(cfg.batch_size, len(image_feats))
    losses = []
    heads.train()
    for _ in progress_bar(range(cfg.steps), "train heads", unit="step", leave=False):
        idx = torch.randperm(n, generator=gen)[:b].numpy()
        x, y = _rows(image_feats, idx), _rows(text_feats, idx)  # read from the (memory-mapped) arrays
        if cfg.mixup == "fusemix":
            lam = beta.sample((b, 1))
            perm = torch.randperm(b, generator=gen)
            x, y = lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
        loss = clip_loss(heads.image(x), heads.text(y), heads.log_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            heads.log_scale.clamp_(0.0, math.log(100.0))
        losses.append(float(loss.detach()))
    return heads.eval(), losses
