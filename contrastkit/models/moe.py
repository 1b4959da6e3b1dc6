"""Sparse mixture-of-experts MLP layers with capacity, Batch Priority Routing and LIMoE's entropy
regularisers (M-LIMOE; V-MoE routing).

What: :class:`SparseMoE` replaces a transformer block's MLP by ``E`` expert MLPs and a router.
Each token ``x`` gets router probabilities ``p(e|x) = softmax(W_r x)`` (float32), goes to its
top-``k`` experts, and its output is ``Σ_{chosen e} p(e|x) · expert_e(x)`` (the softmax values of
the chosen experts, not renormalised, as V-MoE). Expert ``e`` takes at most
``C = ceil(capacity_factor · k · n_tokens / E)`` (:func:`expert_capacity`) tokens; an assignment
beyond that is dropped — the token skips that expert and only the block's residual carries it.
Buffers fill choice by choice (every token's first choice before any second choice) and, within a
choice, in sequence order or, with Batch Priority Routing (``bpr``), in decreasing order of the
token's largest routing probability, so the confident tokens keep their slot (:func:`route`).
Only real tokens are routed (padding neither takes capacity nor enters the regularisers).

Regularisers (per layer and modality, over that modality's ``n`` tokens; :func:`local_entropy`,
:func:`global_entropy`, :func:`thresholded_global_entropy`):
``Ω_local = (1/n) Σ_i H(p(·|x_i))`` (minimised: confident routing), ``Ω_global = −H(p̄)`` with
``p̄ = (1/n) Σ_i p(·|x_i)`` (minimised: balanced expert use), and ``Ω_global^τ = max(0, τ − H(p̄))``
(no penalty once the marginal entropy exceeds ``τ``), ``H(p) = −Σ_e p_e log p_e``.

Exactness: the vectorised dispatch equals a per-token loop (``tests/models/test_moe.py``); a
token's output depends on the other tokens of its batch through the capacity (documented for
gradient caching in :mod:`contrastkit.models.aux`). Not implemented: V-MoE's router noise and its
importance/load losses (off by default in the spec). Spec id: M-LIMOE (routing after V-MoE,
Riquelme et al. 2021). Expert usage is counted per modality when recording is on
(:func:`record_usage`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.errors import ConfigError, InputError

__all__ = [
    "Routing",
    "SparseMoE",
    "entropy",
    "expert_capacity",
    "global_entropy",
    "local_entropy",
    "record_usage",
    "route",
    "thresholded_global_entropy",
]


def expert_capacity(n_tokens: int, experts: int, k: int, capacity_factor: float) -> int:
    """``ceil(capacity_factor · k · n_tokens / experts)`` slots per expert (rounded to 9 decimals
    first, so ``1.25 · 64 / 8`` is 10, not 11 from a float's last bit)."""
    return math.ceil(round(capacity_factor * k * n_tokens / experts, 9))


def entropy(p: torch.Tensor) -> torch.Tensor:
    """``H(p) = −Σ_e p_e log p_e`` over the last axis (``0 · log 0 = 0``)."""
    return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1)


def local_entropy(p: torch.Tensor) -> torch.Tensor:
    """``Ω_local = mean_i H(p_i)`` of router probabilities ``p [n, E]``."""
    return entropy(p).mean()


def global_entropy(p: torch.Tensor) -> torch.Tensor:
    """``Ω_global = −H(mean_i p_i)`` of router probabilities ``p [n, E]``."""
    return -entropy(p.mean(0))


def thresholded_global_entropy(p: torch.Tensor, tau: float) -> torch.Tensor:
    """``Ω_global^τ = max(0, τ − H(p̄))``: zero once the marginal entropy reaches ``τ``."""
    return (tau + global_entropy(p)).clamp_min(0.0)


@dataclass(frozen=True)
class Routing:
    """Where each token's ``k`` choices go: ``expert`` and ``gate`` (its probability) ``[n, k]``,
    ``slot`` its place in that expert's buffer, ``keep`` whether the slot is within capacity."""

    expert: torch.Tensor
    gate: torch.Tensor
    slot: torch.Tensor
    keep: torch.Tensor
    capacity: int


def route(probs: torch.Tensor, k: int, capacity: int, bpr: bool = False) -> Routing:
    """Top-``k`` routing of ``probs [n, E]`` into buffers of ``capacity`` slots: choice ``j`` of
    every token is placed before choice ``j+1`` of any; within a choice, tokens go in sequence
    order or, with ``bpr``, by decreasing largest probability (ties: sequence order)."""
    n, n_exp = probs.shape
    if not 1 <= k <= n_exp:
        raise InputError(f"top-k routing needs 1 <= k <= experts={n_exp}, got k={k}")
    gate, expert = probs.topk(k, dim=-1)
    if bpr:
        order = torch.argsort(-probs.max(-1).values, stable=True)
    else:
        order = torch.arange(n, device=probs.device)
    filled = torch.zeros(n_exp, dtype=torch.long, device=probs.device)
    slot = torch.empty_like(expert)
    for j in range(k):
        onehot = F.one_hot(expert[order, j], n_exp)  # [n, E] in priority order
        pos = onehot.cumsum(0) - 1 + filled  # place in the expert's buffer after earlier ones
        slot[order, j] = (pos * onehot).sum(-1)
        filled = filled + onehot.sum(0)
    return Routing(expert, gate, slot, slot < capacity, capacity)


class SparseMoE(nn.Module):
    """``E`` GELU expert MLPs (``width → hidden → width``) behind a top-``k`` router.

    ``forward(x [B, L, d], valid [B, L] | None, modality, bpr)`` returns ``(y [B, L, d], probs)``:
    ``y`` is zero where a token was dropped by every chosen expert (and at padding), ``probs``
    ``[n_valid, E]`` the router probabilities of the real tokens (for the regularisers).
    ``capacity_factor`` applies in training, ``eval_capacity_factor`` (default: the same) in eval.
    """

    def __init__(
        self,
        width: int,
        hidden: int,
        experts: int = 8,
        k: int = 1,
        capacity_factor: float = 1.0,
        eval_capacity_factor: float | None = None,
    ) -> None:
        super().__init__()
        if experts < 1 or not 1 <= k <= experts:
            raise ConfigError(f"MoE needs experts >= 1 and 1 <= k <= experts, got experts={experts}, k={k}")
        if capacity_factor <= 0 or (eval_capacity_factor is not None and eval_capacity_factor <= 0):
            raise ConfigError("MoE capacity factors must be > 0")
        self.experts, self.k = experts, k
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.router = nn.Linear(width, experts, bias=False)
        bound1, bound2 = 1 / math.sqrt(width), 1 / math.sqrt(hidden)  # nn.Linear's init, per expert
        self.w1 = nn.Parameter(torch.empty(experts, width, hidden).uniform_(-bound1, bound1))
        self.b1 = nn.Parameter(torch.zeros(experts, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(experts, hidden, width).uniform_(-bound2, bound2))
        self.b2 = nn.Parameter(torch.zeros(experts, 1, width))
        # modality -> {"tokens", "routed" [E], "kept" [E]}: counts while record_usage() is on;
        # a plain attribute, outside the state dict
        self.usage: dict[str, dict[str, torch.Tensor]] | None = None

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on tokens ``x [m, d]`` (the naive reference uses it)."""
        return F.gelu(x @ self.w1[e] + self.b1[e]) @ self.w2[e] + self.b2[e]

    def capacity(self, n_tokens: int) -> int:
        cf = (
            self.capacity_factor
            if self.training or self.eval_capacity_factor is None
            else self.eval_capacity_factor
        )
        return expert_capacity(n_tokens, self.experts, self.k, cf)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, modality: str = "", bpr: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = x.reshape(-1, x.shape[-1]) if valid is None else x[valid]
        y, probs = self.dispatch(tokens, bpr, modality)
        if valid is None:
            return y.view_as(x), probs
        out = x.new_zeros(x.shape)
        out[valid] = y
        return out, probs

    def dispatch(self, x: torch.Tensor, bpr: bool, modality: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """The layer on tokens ``x [n, d]``: outputs ``[n, d]`` and router probabilities ``[n, E]``."""
        n, d = x.shape
        with torch.autocast(x.device.type, enabled=False):  # routing decisions in float32 (or wider)
            wide = torch.promote_types(x.dtype, torch.float32)
            probs = F.softmax(F.linear(x.to(wide), self.router.weight.to(wide)), dim=-1)
        r = route(probs, self.k, self.capacity(n), bpr)
        self._count(modality, r, n)
        src = torch.arange(n, device=x.device)[:, None].expand(n, self.k)[r.keep]
        at = (r.expert * r.capacity + r.slot)[r.keep]  # flat buffer positions of kept choices
        buf = x.new_zeros(self.experts * r.capacity, d).index_copy(0, at, x[src])
        buf = buf.view(self.experts, r.capacity, d)
        h = F.gelu(torch.baddbmm(self.b1.to(buf.dtype), buf, self.w1.to(buf.dtype)))
        out = torch.baddbmm(self.b2.to(h.dtype), h, self.w2.to(h.dtype)).view(-1, d)
        weighted = out[at] * r.gate[r.keep].to(out.dtype)[:, None]
        return x.new_zeros(n, d, dtype=weighted.dtype).index_add(0, src, weighted).to(x.dtype), probs

    def _count(self, modality: str, r: Routing, n: int) -> None:
        if self.usage is None:
            return
        rec = self.usage.setdefault(
            modality,
            {
                "tokens": torch.zeros((), dtype=torch.long),
                **{k: torch.zeros(self.experts, dtype=torch.long) for k in ("routed", "kept")},
            },
        )
        rec["tokens"] += n
        rec["routed"] += torch.bincount(r.expert.flatten().cpu(), minlength=self.experts)
        rec["kept"] += torch.bincount(r.expert[r.keep].cpu(), minlength=self.experts)


@contextmanager
def record_usage(model: nn.Module) -> Iterator[Callable[[], dict[str, dict[str, torch.Tensor]]]]:
    """Count expert use per modality in every :class:`SparseMoE` of ``model`` while inside;
    yields a function returning ``{modality: {"tokens" [L], "routed" [L, E], "kept" [L, E]}}``
    (``L`` MoE layers in module order; counts of top-``k`` choices, before/after capacity)."""
    layers = [m for m in model.modules() if isinstance(m, SparseMoE)]
    for layer in layers:
        layer.usage = {}

    def read() -> dict[str, dict[str, torch.Tensor]]:
        names = sorted({m for layer in layers for m in (layer.usage or {})})
        out = {}
        for m in names:
            recs = [(layer.usage or {}).get(m) for layer in layers]
            empty = {
                "tokens": torch.zeros((), dtype=torch.long),
                "routed": torch.zeros(layers[0].experts, dtype=torch.long),
            }
            recs = [r if r is not None else {**empty, "kept": empty["routed"]} for r in recs]
            out[m] = {k: torch.stack([r[k] for r in recs]) for k in ("tokens", "routed", "kept")}
        return out

    try:
        yield read
    finally:
        for layer in layers:
            layer.usage = None
