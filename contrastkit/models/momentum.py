"""Momentum (EMA) encoders — the key encoders of MoCo, the targets of BYOL.

A :class:`MomentumEncoder` holds, per modality, a copy of the online tower + projection. It is
initialised as an exact copy, never receives gradients (``requires_grad=False``), always runs in
eval mode, and after every optimizer step follows the online weights by the exact EMA

    θ_k ← m·θ_k + (1 − m)·θ_q          (parameters)

while buffers (batch-norm running statistics, normalisation constants) are copied from the online
modules. The momentum ``m`` is ``m`` throughout (``schedule: constant``, MoCo) or rises from ``m``
to 1 along a half cosine (``schedule: cosine``, BYOL): ``m_t = 1 − (1 − m)·(cos(π t / T) + 1) / 2``
for the optimizer step ``t`` (0-based) of ``T``. With ``start = S > 0`` (SigLIP 2's late
self-distillation teacher) the copy is frozen (m = 1) until optimizer step S − 2, set to the online
weights after step S − 1 (m = 0, so the teacher of step S is the student of that moment), and
follows the schedule from step S on.

Its weights are ordinary parameters/buffers of the model (``momentum.encoders.<modality>.*``), so
checkpoints save and restore them with everything else.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError

__all__ = ["MomentumConfig", "MomentumEncoder", "momentum_at"]


@dataclass(frozen=True)
class MomentumConfig:
    """``model.momentum``: EMA copies of the towers (+ projections) of ``modalities``."""

    modalities: tuple[str, ...] = ("image",)
    m: float = 0.999
    schedule: Literal["constant", "cosine"] = "constant"
    start: int = 0  # optimizer steps before the EMA starts (frozen, then a copy of the online weights)

    def __post_init__(self) -> None:
        if not self.modalities:
            raise ConfigError("model.momentum.modalities must name at least one modality")
        if not 0.0 <= self.m <= 1.0:
            raise ConfigError(f"model.momentum.m must be in [0, 1], got {self.m}")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"model.momentum.schedule must be constant or cosine, got {self.schedule!r}")
        if self.start < 0:
            raise ConfigError(f"model.momentum.start must be >= 0, got {self.start}")


def momentum_at(m: float, schedule: str, step: int, total_steps: int, start: int = 0) -> float:
    """The EMA momentum after optimizer step ``step`` (0-based) of ``total_steps`` (module docstring)."""
    if step < start - 1:  # before the start: frozen
        return 1.0
    if step == start - 1:  # the teacher of step ``start`` is the online encoder of that moment
        return 0.0
    if schedule == "constant":
        return m
    if schedule == "cosine":
        progress = min(1.0, max(0.0, step / max(1, total_steps)))
        return 1.0 - (1.0 - m) * (math.cos(math.pi * progress) + 1.0) / 2.0
    raise InputError(f"unknown momentum schedule {schedule!r}; available: constant, cosine")


class MomentumEncoder(nn.Module):
    """EMA copies of ``online[modality]`` modules (``forward(x) -> [B, D]``)."""

    def __init__(
        self, online: Mapping[str, nn.Module], m: float = 0.999, schedule: str = "constant", start: int = 0
    ) -> None:
        super().__init__()
        if not online:
            raise InputError("a momentum encoder needs at least one module")
        self.encoders = nn.ModuleDict({k: copy.deepcopy(mod) for k, mod in online.items()})
        self.encoders.requires_grad_(False)
        self.m = float(m)
        self.schedule = schedule
        self.start = int(start)
        self.last_m = float(m)
        momentum_at(self.m, schedule, 0, 1)  # validates the schedule name
        self.train(False)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders.keys())

    def train(self, mode: bool = True) -> MomentumEncoder:
        """Always eval mode: no dropout, batch norm uses (copied) running statistics."""
        return super().train(False)

    def forward(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        if modality not in self.encoders:
            raise InputError(
                f"no momentum encoder for {modality!r}; momentum modalities: {list(self.modalities)}"
            )
        with torch.no_grad():
            return self.encoders[modality](x)

    def momentum(self, step: int, total_steps: int) -> float:
        return momentum_at(self.m, self.schedule, step, total_steps, self.start)

    @torch.no_grad()
    def update(self, online: Mapping[str, nn.Module], m: float) -> None:
        """One EMA step toward ``online`` (same structure as at construction) with momentum ``m``."""
        ema_p: list[torch.Tensor] = []
        src_p: list[torch.Tensor] = []
        for key, ema in self.encoders.items():
            if key not in online:
                raise InputError(f"online modules lack {key!r}; need {list(self.modalities)}")
            src = online[key]
            e_params, s_params = dict(ema.named_parameters()), dict(src.named_parameters())
            if e_params.keys() != s_params.keys():
                raise InputError(f"momentum encoder {key!r} and its online module differ in structure")
            for name, p in e_params.items():
                ema_p.append(p)
                src_p.append(s_params[name].detach())
            s_bufs = dict(src.named_buffers())
            for name, b in ema.named_buffers():
                b.copy_(s_bufs[name])
        if ema_p:
            torch._foreach_mul_(ema_p, m)
            torch._foreach_add_(ema_p, src_p, alpha=1.0 - m)
        self.last_m = float(m)

    @torch.no_grad()
    def step(self, online: Mapping[str, nn.Module], step: int, total_steps: int) -> float:
        """EMA update after optimizer step ``step`` (0-based) of ``total_steps``; returns the ``m`` used."""
        m = self.momentum(step, total_steps)
        if step < self.start - 1:  # frozen before the start: weights and buffers untouched
            self.last_m = m
            return m
        self.update(online, m)
        return m
