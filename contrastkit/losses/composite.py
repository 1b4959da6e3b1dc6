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

__all__ = ["CompositeLoss", "WeightedTerms"]


class WeightedTerms(PairLoss):
    """Base of losses that are weighted sums of registered terms (:class:`CompositeLoss`,
    ``clip_plus_ssl``): each term gets only the batch fields it declares, its value is logged as
    ``loss/<label>``, its own logged values as ``<label>/<key>``, and its post-step constraints run."""

    def _set_terms(
        self, terms: Mapping[str, tuple[float, PairLoss]], labels: Mapping[str, str] | None = None
    ) -> None:
        if not terms:
            raise ConfigError("a composite loss needs at least one term")
        self.terms = nn.ModuleDict({name: loss for name, (_, loss) in terms.items()})
        self.weights = {name: float(w) for name, (w, _) in terms.items()}
        self.labels = {name: (labels or {}).get(name, name) for name in terms}
        self._last: dict[str, float] = {}

    @property
    def accepts(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset().union(*(t.accepts for t in self.terms.values()))

    def term_aux(self, term: PairLoss, aux: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in aux.items() if k in term.accepts and v is not None}

    def add_term(self, total: torch.Tensor | None, name: str, value: torch.Tensor) -> torch.Tensor:
        """``total + w_name · value`` (``total`` None: the first term), logging the value."""
        if value.ndim != 0:
            raise InputError(f"loss term {name!r} returned shape {tuple(value.shape)}, not a scalar")
        self._last[self.labels[name]] = float(value.detach())
        weighted = self.weights[name] * value
        return weighted if total is None else total + weighted

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        for term in self.terms.values():
            term.after_optimizer_step()

    def log_values(self) -> dict[str, float]:
        out = {f"loss/{k}": v for k, v in self._last.items()}
        for name, term in self.terms.items():
            out.update({f"{self.labels[name]}/{k}": v for k, v in term.log_values().items()})
        return out


class CompositeLoss(WeightedTerms):
    """``Σ_k w_k · loss_k(x, y, **aux_k)``."""

    def __init__(self, terms: Mapping[str, tuple[float, PairLoss]]) -> None:
        super().__init__()
        self._set_terms(terms)

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        total = None
        for name, term in self.terms.items():
            total = self.add_term(total, name, term(x, y, **self.term_aux(term, aux)))
        return total  # type: ignore[return-value]
