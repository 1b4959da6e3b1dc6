"""The multi-tower encoder: one tower + projection per named modality.

``DualEncoder`` is the CLIP/SigLIP dual encoder, written for M ≥ 2 named modalities (``image``,
``text``, ``audio``…) so that later multi-modal objectives use the same model. It returns raw
projected embeddings; losses and evaluation L2-normalise them (the loss flag ``normalize``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models.towers import TOWERS, TextTower, Tower, TowerContext

__all__ = ["DualEncoder", "ModelConfig", "TowerConfig", "build_model"]


@dataclass(frozen=True)
class TowerConfig:
    """A tower by registry name (``timm``, ``hf_text``, ``hf_pretrained``) and its parameters.

    ``locked``: freeze the tower (no gradients, kept in eval mode) — LiT-style locked towers.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    locked: bool = False


@dataclass(frozen=True)
class ModelConfig:
    towers: dict[str, TowerConfig] = field(
        default_factory=lambda: {
            "image": TowerConfig(
                "timm",
                {
                    "arch": "resnet18",
                    "kwargs": {"layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256], "stem_width": 32},
                },
            ),
            "text": TowerConfig(
                "hf_text",
                {
                    "hidden_size": 128,
                    "layers": 2,
                    "heads": 2,
                    "intermediate_size": 256,
                    "max_length": 32,
                    "vocab_size": 1000,
                    "dropout": 0.0,
                    "pooling": "mean",
                },
            ),
        }
    )
    embed_dim: int = 128
    projection: Literal["linear", "mlp", "none"] = "linear"

    def __post_init__(self) -> None:
        if len(self.towers) < 2:
            raise ConfigError(f"model.towers needs at least two modalities, got {list(self.towers)}")
        if self.embed_dim < 1:
            raise ConfigError(f"model.embed_dim must be >= 1, got {self.embed_dim}")

    @classmethod
    def tiny(cls) -> ModelConfig:
        """A ~0.2M-parameter model for tests (seconds per hundred steps)."""
        return cls(
            towers={
                "image": TowerConfig(
                    "timm",
                    {
                        "arch": "resnet18",
                        "kwargs": {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 64], "stem_width": 16},
                    },
                ),
                "text": TowerConfig(
                    "hf_text", {"hidden_size": 64, "layers": 1, "heads": 2, "intermediate_size": 128}
                ),
            },
            embed_dim=32,
        )


def _projection(kind: str, d_in: int, d_out: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(d_in, d_out, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(d_in, d_in), nn.GELU(), nn.Linear(d_in, d_out, bias=False))
    if d_in != d_out:
        raise InputError(f"projection 'none' needs tower dim {d_in} == embed_dim {d_out}")
    return nn.Identity()


class DualEncoder(nn.Module):
    """Towers + projections keyed by modality.

    ``forward(batch)`` takes ``{modality: tensor}`` and returns ``{modality: [B, embed_dim]}``
    (unnormalised) for every modality present in the batch that the model has.
    """

    def __init__(
        self,
        towers: Mapping[str, Tower],
        embed_dim: int,
        projection: str = "linear",
        locked: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(dict(towers))
        self.projections = nn.ModuleDict(
            {m: _projection(projection, t.output_dim, embed_dim) for m, t in towers.items()}
        )
        self.embed_dim = embed_dim
        self.locked = tuple(locked)
        for m in self.locked:
            self.towers[m].requires_grad_(False)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.towers.keys())

    def train(self, mode: bool = True) -> DualEncoder:
        super().train(mode)
        for m in self.locked:  # locked towers stay in eval mode (batch-norm stats, dropout)
            self.towers[m].eval()
        return self

    def encode(self, modality: str, inputs: torch.Tensor) -> torch.Tensor:
        if modality not in self.towers:
            raise InputError(f"model has no {modality!r} tower; it has {list(self.modalities)}")
        return self.projections[modality](self.towers[modality](inputs))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {m: self.encode(m, x) for m, x in batch.items() if m in self.towers}
        if not out:
            raise InputError(
                f"batch has none of the model's modalities {list(self.modalities)}: {list(batch)}"
            )
        return out

    def text_tower(self) -> TextTower:
        for tower in self.towers.values():
            if isinstance(tower, TextTower):
                return tower
        raise InputError("model has no text tower")

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.text_tower().tokenize(texts)

    def save_assets(self, folder: Path) -> None:
        for m, tower in self.towers.items():
            tower.save_assets(Path(folder) / m)


def build_model(
    cfg: ModelConfig, texts: Sequence[str] | None = None, assets_dir: Path | None = None
) -> DualEncoder:
    """Build the model of ``cfg``. Fresh: pass training ``texts`` (tokenizers are trained on them).
    Rebuilding a saved run: pass its ``assets_dir`` instead."""
    towers = {}
    for modality, tcfg in cfg.towers.items():
        ctx = TowerContext(
            texts=texts, assets_dir=None if assets_dir is None else Path(assets_dir) / modality
        )
        towers[modality] = TOWERS.build(tcfg.name, context=ctx, **tcfg.params)
    locked = [m for m, t in cfg.towers.items() if t.locked]
    return DualEncoder(towers, cfg.embed_dim, cfg.projection, locked)
