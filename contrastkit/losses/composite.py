"""Weighted sums of losses, each term logged: ``terms: {clip: 1.0, uniformity: 0.1}``.

``CompositeLoss`` holds its terms as submodules (their parameters are trained, their
post-step constraints applied), passes each term only the batch fields it declares (``labels``,
``weights``), and reports every term's last value as ``loss/<name>`` in :meth:`log_values`.
A composite has no single pure function, so the tiled/distributed wrappers refuse it; wrap the
terms that support it instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import PairLoss

__all__ = ["CompositeLoss"]


class CompositeLoss(PairLoss):
    """``Σ_k w_k · loss_k(x, y, **aux_k)``."""

    def __init__(self, terms: Mapping[str, tuple[float, PairLoss]]) -> None:
        super().__init__()
        if not terms:
            raise ConfigError("a composite loss needs at least one term")
        self.terms = nn.ModuleDict({name: loss for name, (_, loss) in terms.items()})
        self.weights = {name: float(w) for name, (w, _) in terms.items()}
        self._last: dict[str, float] = {}

    @property
    def accepts(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset().union(*(t.accepts for t in self.terms.values()))

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        total = None
        for name, term in self.terms.items():
            own = {k: v for k, v in aux.items() if k in term.accepts and v is not None}
            value = term(x, y, **own)
            if value.ndim != 0:
                raise InputError(f"loss term {name!r} returned shape {tuple(value.shape)}, not a scalar")
            self._last[name] = float(value.detach())
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
        return total

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        for term in self.terms.values():
            term.after_optimizer_step()

    def log_values(self) -> dict[str, float]:
        out = {f"loss/{k}": v for k, v in self._last.items()}
        for name, term in self.terms.items():
            out.update({f"{name}/{k}": v for k, v in term.log_values().items()})
        return out
