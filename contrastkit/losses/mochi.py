"""L-MOCHI — hard negative mixing (MoCHi) on a MoCo-style negative queue.

Spec id: L-MOCHI (docs/losses.md) [PARTIAL: defaults]. Paper: Kalantidis et al. 2020,
"Hard Negative Mixing for Contrastive Learning".

Per query ``q`` (unit) with positive key ``k`` and queue ``Q`` (K×d, unit rows, detached):
``Q̃_N`` = the N queue entries with the largest ``q·n``; s type-1 synthetics
``h = norm(α n_i + (1−α) n_j)``, i ≠ j from Q̃_N, α ~ U(0, 1); s′ type-2 synthetics
``h′ = norm(β q + (1−β) n_j)``, β ~ U(0, ½); all built from detached q and queue entries::

    loss = mean_b CE([q·k, q·Q, q·H, q·H′] / τ, target 0)

Synthetics are never enqueued; the batch's keys are enqueued *after* the loss is computed.
Shapes: queries ``x = q: [B, d]``, keys ``y = k: [B, d]`` → scalar. B = 1 is valid (negatives
come from the queue). Complexity: top-N selection O(BK), extra logits B×(s+s′), memory O(B(s+s′)d).

Defaults: τ = 0.2 and K = 65536 (MoCo v2). N, s, s′ and the warm-up are required config values
(paper defaults unverified); the paper's examples are MoCHi(N, s, s′) = (1024, 1024, 128),
(256, 512, 256) and s′ = 0 variants, with no mixing during a warm-up of ~10–15 epochs (here
counted in training steps). s = s′ = 0 (or during warm-up) is the plain MoCo InfoNCE against the
queue. Mixing draws from a generator seeded with ``(seed, step)``, so a run is deterministic given
the seed and resumes identically from a ``state_dict`` (queue, pointer, fill count and step are
buffers).

Dense only: the module holds state (queue, RNG), so it has no ``pure()`` form and does not run
under ``contrastkit.scale``'s TiledLoss / GatherLoss; for multi-device training gather the keys
before calling it (MoCo enqueues the all-gathered keys). The momentum key encoder lives in the
model, not in this loss. Related: L-MOCO2 (same loss without mixing), L-HCL / L-HNNCE
(re-weighting instead of synthesis).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_pair, check_queue
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegInt, Positive, PositiveInt
from contrastkit.losses.base import LOSSES, PairLoss, as_float, maybe_normalize

__all__ = ["MoCHiLoss", "MochiSynthetics", "mochi_loss", "mochi_synthetics"]

_SEED_MIX = 0x9E3779B97F4A7C15  # odd constant: (seed, step) → distinct generator seeds


class MochiSynthetics(NamedTuple):
    """Synthetic negatives of one batch and how they were drawn (queue row indices, mix weights)."""

    type1: torch.Tensor  # [B, s, d]   norm(α n_i + (1−α) n_j)
    type2: torch.Tensor  # [B, s′, d]  norm(β q + (1−β) n_j)
    pair_index: torch.Tensor  # [B, s, 2]  queue rows (i, j), i ≠ j
    alpha: torch.Tensor  # [B, s]
    query_index: torch.Tensor  # [B, s′]  queue row j
    beta: torch.Tensor  # [B, s′]


def _check_config(n_hard: int, n_mix: int, n_mix_query: int) -> None:
    if n_hard < 1:
        raise ConfigError(f"n_hard (N, the number of hardest queue entries) must be >= 1, got {n_hard}")
    if n_mix < 0 or n_mix_query < 0:
        raise ConfigError(f"n_mix (s) and n_mix_query (s′) must be >= 0, got {n_mix}, {n_mix_query}")


class _Draws(NamedTuple):
    pair: torch.Tensor  # [B, s, 2]
    alpha: torch.Tensor  # [B, s]
    j: torch.Tensor  # [B, s′]
    beta: torch.Tensor  # [B, s′]


def _draw(
    sims: torch.Tensor,
    n_queue: int,
    n_hard: int,
    n_mix: int,
    n_mix_query: int,
    generator: torch.Generator | None,
) -> _Draws:
    """The random choices of MoCHi for queries with similarities ``sims [B, K]`` to the queue."""
    b, dev, dt = sims.shape[0], sims.device, sims.dtype
    n_eff = min(n_hard, n_queue)  # fewer filled slots than N → use them all
    s1 = n_mix if n_eff >= 2 else 0  # a type-1 pair needs two distinct entries
    s2 = n_mix_query if n_eff >= 1 else 0
    top = sims.topk(n_eff, dim=1).indices if n_eff else sims.new_zeros((b, 0), dtype=torch.long)
    # i uniform over Q̃_N; j uniform over Q̃_N \ {i} (draw from N−1 slots and skip i)
    a = torch.randint(0, max(n_eff, 1), (b, s1), generator=generator, device=dev)
    c = torch.randint(0, max(n_eff - 1, 1), (b, s1), generator=generator, device=dev)
    c = c + (c >= a).long()
    pair = torch.stack([top.gather(1, a), top.gather(1, c)], dim=-1)
    alpha = torch.rand((b, s1), generator=generator, device=dev, dtype=dt)
    j = top.gather(1, torch.randint(0, max(n_eff, 1), (b, s2), generator=generator, device=dev))
    beta = 0.5 * torch.rand((b, s2), generator=generator, device=dev, dtype=dt)
    return _Draws(pair, alpha, j, beta)


def _build(q: torch.Tensor, queue: torch.Tensor, d: _Draws) -> tuple[torch.Tensor, torch.Tensor]:
    """Type-1 ``[B, s, d]`` and type-2 ``[B, s′, d]`` synthetic negatives of the draws ``d``."""
    w = d.alpha.unsqueeze(-1)
    type1 = F.normalize(w * queue[d.pair[..., 0]] + (1 - w) * queue[d.pair[..., 1]], dim=-1)
    w = d.beta.unsqueeze(-1)
    type2 = F.normalize(w * q.unsqueeze(1) + (1 - w) * queue[d.j], dim=-1)
    return type1, type2


def _synthesize(
    q: torch.Tensor,
    queue: torch.Tensor,
    sims: torch.Tensor,
    n_hard: int,
    n_mix: int,
    n_mix_query: int,
    generator: torch.Generator | None,
) -> MochiSynthetics:
    d = _draw(sims, queue.shape[0], n_hard, n_mix, n_mix_query, generator)
    type1, type2 = _build(q, queue, d)
    return MochiSynthetics(type1, type2, d.pair, d.alpha, d.j, d.beta)


def _chunk_logits(
    q: torch.Tensor, q_detached: torch.Tensor, queue: torch.Tensor, *draws: torch.Tensor
) -> torch.Tensor:
    type1, type2 = _build(q_detached, queue, _Draws(*draws))
    return torch.cat([torch.einsum("bd,bsd->bs", q, type1), torch.einsum("bd,bsd->bs", q, type2)], dim=1)


def _synthetic_logits(q: torch.Tensor, queue: torch.Tensor, d: _Draws, budget: int = 1 << 24) -> torch.Tensor:
    """``[q·H, q·H′]`` ``[B, s + s′]`` computed over chunks of queries whose synthetics are rebuilt
    in the backward pass (activation checkpointing): memory O(budget) floats instead of the
    ``B·(s + s′)·d`` of materialising every synthetic negative at once (8 GiB at B = 4096,
    s = 1024, d = 512). The synthetics are built from the detached queries, as in MoCHi."""
    from torch.utils.checkpoint import checkpoint

    per_query = max(1, (d.alpha.shape[1] + d.beta.shape[1]) * q.shape[1])
    chunk = max(1, budget // per_query)
    qd = q.detach()
    out = []
    for lo in range(0, q.shape[0], chunk):
        hi = lo + chunk
        part = (q[lo:hi], qd[lo:hi], queue, *(t[lo:hi] for t in d))
        out.append(checkpoint(_chunk_logits, *part, use_reentrant=False, preserve_rng_state=False))
    return torch.cat(out)


@torch.no_grad()
def mochi_synthetics(
    q: torch.Tensor,
    queue: torch.Tensor,
    *,
    n_hard: int,
    n_mix: int,
    n_mix_query: int,
    generator: torch.Generator | None = None,
    normalize: bool = True,
) -> MochiSynthetics:
    """The MoCHi synthetic negatives of queries ``q: [B, d]`` against ``queue: [K, d]`` (detached).

    Type-1 needs two distinct entries (none are made when fewer than 2 queue rows exist); both
    types are empty for an empty queue. Draw order: i, j, α, then j′, β from ``generator``.
    """
    _check_config(n_hard, n_mix, n_mix_query)
    q = maybe_normalize(q.detach(), normalize)
    check_queue(queue, q.shape[1])
    queue = queue.detach().to(q.dtype)
    return _synthesize(q, queue, q @ queue.T, n_hard, n_mix, n_mix_query, generator)


def mochi_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    *,
    n_hard: int,
    n_mix: int,
    n_mix_query: int,
    temperature: float = 0.2,
    generator: torch.Generator | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """MoCHi InfoNCE: ``CE([q·k, q·Q, q·H, q·H′]/τ, 0)`` averaged over the B queries.

    Args:
        q: ``[B, d]`` queries (gradient flows).
        k: ``[B, d]`` positive keys (normally from the momentum encoder).
        queue: ``[K, d]`` negative keys, used as given (unit rows) and detached; K may be 0.
        n_hard: MoCHi's N, the number of hardest queue entries mixed.
        n_mix: MoCHi's s, type-1 synthetics (two hard negatives; s = s′ = 0 is plain MoCo).
        n_mix_query: MoCHi's s′, type-2 synthetics (the query and a hard negative).
        temperature: τ (MoCo v2: 0.2).
        generator: RNG for the mixing draws (device of ``q``); None uses the global RNG.
        normalize: L2-normalise ``q`` and ``k`` first (default).
    """
    check_pair(q, k, ("q", "k"))
    _check_config(n_hard, n_mix, n_mix_query)
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    check_queue(queue, q.shape[1])
    q = maybe_normalize(q, normalize)
    k = maybe_normalize(k, normalize).to(q.dtype)
    queue = queue.detach().to(q.dtype)
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.T
    parts = [l_pos, l_neg]
    if (n_mix or n_mix_query) and queue.shape[0]:
        draws = _draw(l_neg.detach(), queue.shape[0], n_hard, n_mix, n_mix_query, generator)
        parts.append(_synthetic_logits(q, queue, draws))
    logits = torch.cat(parts, dim=1) / temperature
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


@LOSSES.register("mochi")
class MoCHiLoss(PairLoss):
    """MoCHi loss with its negative queue held as buffers (``x`` = queries, ``y`` = keys).

    Args:
        dim: embedding dimension d (the queue is ``[queue_size, dim]``).
        n_hard: N, hardest queue entries considered for mixing (paper examples: 1024, 256).
        n_mix: s, type-1 synthetics per query (examples: 1024, 512).
        n_mix_query: s′, type-2 synthetics per query (examples: 128, 256, 0).
        warmup_steps: training steps without mixing (paper: ~10–15 epochs' worth of steps).
        queue_size: K (MoCo: 65536).
        temperature: τ (MoCo v2: 0.2).
        seed: seeds the queue initialisation and the per-step mixing generator.
        random_init: start with K random unit keys counted as filled (MoCo); False starts empty and
            uses only filled slots.

    In training mode each call mixes (after the warm-up), enqueues the detached normalised keys and
    advances ``step``; in eval mode it computes the plain MoCo loss and leaves the state untouched.
    """

    def __init__(
        self,
        dim: PositiveInt,
        n_hard: PositiveInt,
        n_mix: NonNegInt,
        n_mix_query: NonNegInt,
        warmup_steps: NonNegInt,
        queue_size: PositiveInt = 65536,
        temperature: Positive = 0.2,
        seed: int = 0,
        random_init: bool = True,
    ) -> None:
        super().__init__()
        _check_config(n_hard, n_mix, n_mix_query)
        for name, v, low in (
            ("dim", dim, 1),
            ("queue_size", queue_size, 1),
            ("warmup_steps", warmup_steps, 0),
        ):
            if int(v) != v or v < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {v}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.n_hard, self.n_mix, self.n_mix_query = n_hard, n_mix, n_mix_query
        self.warmup_steps, self.temperature, self.seed = warmup_steps, temperature, seed
        if random_init:
            g = torch.Generator().manual_seed(seed)
            queue = F.normalize(torch.randn(queue_size, dim, generator=g), dim=1)
        else:
            queue = torch.zeros(queue_size, dim)
        self.register_buffer("queue", queue)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.tensor(queue_size if random_init else 0, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def mixing_active(self) -> bool:
        return self.training and int(self.step) >= self.warmup_steps

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        check_pair(x, y, ("x (queries)", "y (keys)"))
        if x.shape[1] != self.queue.shape[1]:
            raise InputError(
                f"embedding dimension {x.shape[1]} does not match the queue's dim={self.queue.shape[1]}"
            )
        # a copy: the enqueue below writes the buffer in place, autograd still needs these values
        queue = self.queue[: int(self.filled)].clone()
        mixing = self.mixing_active()
        gen = None
        if mixing:
            gen = torch.Generator(device=x.device)
            gen.manual_seed((self.seed * _SEED_MIX + int(self.step)) % 2**63)
        loss = mochi_loss(
            x,
            y,
            queue,
            n_hard=self.n_hard,
            n_mix=self.n_mix if mixing else 0,
            n_mix_query=self.n_mix_query if mixing else 0,
            temperature=self.temperature,
            generator=gen,
        )
        if self.training:
            self._enqueue(y)
            self.step += 1
        return loss

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        size = self.queue.shape[0]
        keys = F.normalize(as_float(keys.detach()), dim=1).to(self.queue.dtype)[-size:]
        b, ptr = keys.shape[0], int(self.ptr)
        idx = (ptr + torch.arange(b, device=self.queue.device)) % size
        self.queue[idx] = keys
        self.ptr.fill_((ptr + b) % size)
        self.filled.fill_(min(int(self.filled) + b, size))

    def log_values(self) -> dict[str, float]:
        return {"queue_filled": float(self.filled), "mochi_mixing": float(self.mixing_active())}
