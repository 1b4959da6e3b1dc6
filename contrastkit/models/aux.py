"""Auxiliary losses that towers produce during their forward pass, and what they rule out.

What: a tower whose objective has a term of its own — LIMoE's routing-entropy regularisers
(:mod:`contrastkit.models.limoe`), FuseLIP's masked modelling (:mod:`contrastkit.models.fuselip`) —
records it with :meth:`AuxLosses.add_aux_loss` while it runs. :func:`pop_aux_losses` collects every
recorded term of a model (each module once, terms of one name summed over forward calls) and
clears them; the trainer adds their sum to the contrastive loss of the step, so the optimiser sees
``L = L_contrastive + Σ_name aux[name]``, and logs each term as ``aux/<name>``.

Protocol: a term is recorded only in training mode with gradients enabled (the trainer's step);
evaluation, ``torch.no_grad`` scoring (JEST, noisy-pair fits) and eval-mode forwards record nothing,
so nothing accumulates outside a step. The trainer also discards leftovers before a step's forward.

Exactness and limits: a term is a function of the whole batch the tower saw (LIMoE's marginal
routing entropy, its expert capacity; FuseLIP's mean over masked tokens), so

* gradient caching (``scale.chunk_size``, :mod:`contrastkit.scale.grad_cache`) cannot reproduce it
  chunk by chunk: pass 1 runs most chunks without a graph and per-chunk terms are not the batch's
  term. Such towers declare why (:func:`declare_chunking`), and both the run config check and
  ``embed_in_chunks`` refuse the combination with a :class:`ConfigError` (:func:`chunking_refusal`);
* several processes: each rank computes the term on its local batch and gradients are averaged,
  so the objective is the mean over ranks of ``L_contrastive,r + aux_r`` — per-shard regularisers,
  as V-MoE's per-device auxiliary losses; equal to the single-process objective for one rank only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "AuxLosses",
    "chunking_refusal",
    "declare_chunking",
    "model_chunking_refusal",
    "pop_aux_losses",
]


class AuxLosses:
    """Mixin for an ``nn.Module`` that records auxiliary loss terms during its forward."""

    def add_aux_loss(self, name: str, value: torch.Tensor) -> None:
        """Record ``value`` (a scalar with its graph) under ``name``: added to what is pending
        under that name. Ignored outside training or without gradients (see the module docs)."""
        if not (getattr(self, "training", False) and torch.is_grad_enabled()):
            return
        pending: dict[str, torch.Tensor] = self.__dict__.setdefault("_aux_pending", {})
        pending[name] = pending[name] + value if name in pending else value

    def take_aux_losses(self) -> dict[str, torch.Tensor]:
        """The pending terms of this module, which are cleared."""
        return self.__dict__.pop("_aux_pending", {})


def pop_aux_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every pending auxiliary term of ``model``'s modules (each module once), summed by name and
    cleared; ``{}`` for a model without any."""
    out: dict[str, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, AuxLosses):
            for name, value in module.take_aux_losses().items():
                out[name] = out[name] + value if name in out else value
    return out


def declare_chunking(why: Callable[[Mapping[str, Any]], str | None]) -> Callable[[Callable], Callable]:
    """Decorator for a registered tower builder: ``why(params)`` says why gradient caching cannot
    be exact for a tower built with ``params`` (``None``: it can)."""

    def deco(fn: Callable) -> Callable:
        fn.chunking_refusal = why  # type: ignore[attr-defined]
        return fn

    return deco


def chunking_refusal(builder: Callable, params: Mapping[str, Any]) -> str | None:
    """Why a tower of ``builder`` with ``params`` cannot be gradient-cached (``None``: it can)."""
    why = getattr(builder, "chunking_refusal", None)
    return None if why is None else why(params)


def model_chunking_refusal(model: nn.Module) -> str | None:
    """Why a built model cannot be gradient-cached: the first module that says so (its
    ``chunking_refusal`` attribute, a string), else ``None``."""
    for module in model.modules():
        why = getattr(module, "chunking_refusal", None)
        if isinstance(why, str) and why:
            return why
    return None
