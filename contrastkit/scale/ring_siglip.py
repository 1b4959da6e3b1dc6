"""S-SIGLIP-RING — the sigmoid loss across ranks with texts passed round a ring, no gather.

Spec id: S-SIGLIP-RING (docs/performance.md), after big_vision's and open_clip's ``SigLipLoss``
('shift', 'bidir'). Setting as in :mod:`contrastkit.scale.distributed`: D ranks, rank r holds b
pairs; ``loss_r`` is this rank's share, and after DDP's gradient average the gradients equal those
of :func:`~contrastkit.losses.siglip.siglip_loss` over the concatenated batch (float64, gloo world
2–4, ``tests/scale/test_distributed.py``). The sigmoid loss is a sum over pairs, so each rank needs
only every other rank's *texts*: they travel the ring one b×d block per hop (D − 1 hops), never an
N×d gather, and memory is O(b²) logits per rank. Related: :mod:`contrastkit.scale.ring_clip`
(CLIP's ring, which must also carry log-sum-exp accumulators).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError
from contrastkit.losses.base import PairLoss, maybe_normalize
from contrastkit.losses.siglip import siglip_loss
from contrastkit.scale.distributed import (
    Group,
    WrappedLoss,
    _check_across_ranks,
    _global_rank,
    _pure_of,
    is_distributed,
    rank,
    world_size,
)

__all__ = ["RING_VARIANTS", "SigLIPRingLoss", "siglip_ring_loss"]

RING_VARIANTS = ("shift", "bidir")


def _sendrecv(t: torch.Tensor, dst: int, src: int, group: Group) -> torch.Tensor:
    """Send ``t`` to group rank ``dst`` while receiving a same-shaped tensor from ``src``."""
    t = t.contiguous()
    out = torch.empty_like(t)
    ops = [
        dist.P2POp(dist.isend, t, _global_rank(group, dst), group),
        dist.P2POp(dist.irecv, out, _global_rank(group, src), group),
    ]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return out


class _RingShift(torch.autograd.Function):
    """Send to the right neighbour, receive from the left; backward sends the gradient of the
    received block back to its left owner and receives the gradient of the sent one."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, right: int, left: int, group: Group) -> torch.Tensor:
        ctx.right, ctx.left, ctx.group = right, left, group
        return _sendrecv(t, right, left, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return _sendrecv(grad, ctx.left, ctx.right, ctx.group), None, None, None


def _bidir(a: torch.Tensor, c: torch.Tensor, left: int, right: int, group: Group) -> list[torch.Tensor]:
    """Send ``a`` left and ``c`` right; return [received from left, received from right]."""
    a, c = a.contiguous(), c.contiguous()
    from_left, from_right = torch.empty_like(c), torch.empty_like(a)
    gl, gr = _global_rank(group, left), _global_rank(group, right)
    ops = [
        dist.P2POp(dist.isend, a, gl, group),
        dist.P2POp(dist.isend, c, gr, group),
        dist.P2POp(dist.irecv, from_left, gl, group),
        dist.P2POp(dist.irecv, from_right, gr, group),
    ]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return [from_left, from_right]


class _RingBidir(torch.autograd.Function):
    """Exchange with both neighbours at once (needs D ≥ 3 so that left ≠ right).

    The gradient of the block received from the left belongs to the left rank's ``to_right``
    and vice versa, so backward is the same exchange applied to the output gradients.
    """

    @staticmethod
    def forward(ctx: Any, to_left: torch.Tensor, to_right: torch.Tensor, left: int, right: int, group: Group):
        ctx.left, ctx.right, ctx.group = left, right, group
        from_left, from_right = _bidir(to_left, to_right, left, right, group)
        return from_left, from_right

    @staticmethod
    def backward(ctx: Any, g_from_left: torch.Tensor, g_from_right: torch.Tensor):
        g_to_left, g_to_right = _bidir(g_from_left, g_from_right, ctx.left, ctx.right, ctx.group)
        return g_to_left, g_to_right, None, None, None


# --------------------------------------------------------------------------------------------
# S-SIGLIP-RING


def _negatives(x: torch.Tensor, y: torch.Tensor, scale: Any, bias: Any) -> torch.Tensor:
    """``(1/b) Σ_ij softplus(t·x_i·y_j + b)``: a block of another rank's texts, all negatives."""
    return F.softplus(scale * (x @ y.T) + bias).sum() / x.shape[0]


def siglip_ring_loss(
    x_local: torch.Tensor,
    y_local: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float,
    normalize: bool = True,
    *,
    variant: str = "shift",
    group: Group = None,
) -> torch.Tensor:
    """S-SIGLIP-RING: this rank's share of the full-batch sigmoid loss, texts passed round a ring.

    ``loss_r = L-SIGLIP(x^(r), y^(r))`` (positives on the diagonal, normalised by b) plus, for each
    other rank's text block ``y^(s)``, ``(1/b) Σ_ij softplus(t·x_i^(r)·y_j^(s) + b)`` (negatives).
    ``(1/D) Σ_r loss_r`` = ``siglip_loss`` of the concatenated batch (normalised by N = bD), values
    and — after DDP's average — gradients (exact; the exchange's backward returns each block's
    gradient to its owner).

    Args:
        x_local: ``[b, d]`` this rank's images (same shape on every rank).
        y_local: ``[b, d]`` this rank's texts (same shape on every rank).
        scale: ``t`` (not its log), replicated on every rank.
        bias: ``b``, replicated on every rank.
        normalize: L2-normalise rows first (default), done locally before any exchange.
        variant: ``"shift"`` (D−1 hops to the right) or ``"bidir"`` (⌊(D−1)/2⌋ rounds with both
            neighbours, plus one shift if D−1 is odd) — same result, fewer sequential steps.
        group: process group (default: the world).
    Returns:
        0-d tensor. Memory: O(b²) logits per rank. Without a process group: ``siglip_loss``.
    """
    if variant not in RING_VARIANTS:
        raise ConfigError(f"unknown ring variant {variant!r}; valid: {list(RING_VARIANTS)}")
    if not is_distributed(group):
        return siglip_loss(x_local, y_local, scale, bias, normalize=normalize)
    _check_across_ranks(x_local, y_local, group, "siglip_ring_loss")
    x = maybe_normalize(x_local, normalize)
    y = maybe_normalize(y_local, normalize).to(x.dtype)
    loss = siglip_loss(x, y, scale, bias, normalize=False)
    n, r = world_size(group), rank(group)
    right, left = (r + 1) % n, (r - 1) % n
    n_bidir, odd = divmod(n - 1, 2) if variant == "bidir" else (0, n - 1)
    to_left = to_right = y
    for _ in range(n_bidir):
        from_left, from_right = _RingBidir.apply(to_left, to_right, left, right, group)
        loss = loss + _negatives(x, from_left, scale, bias) + _negatives(x, from_right, scale, bias)
        to_left, to_right = from_right, from_left  # each block keeps travelling its way
    for _ in range(odd):
        to_right = _RingShift.apply(to_right, right, left, group)
        loss = loss + _negatives(x, to_right, scale, bias)
    return loss


class SigLIPRingLoss(WrappedLoss):
    """S-SIGLIP-RING as a module: wraps a SigLIP loss module (``pure()`` → ``siglip_loss``) and
    computes :func:`siglip_ring_loss` with its live ``t`` and ``b``. The wrapped module is a
    submodule; ``after_optimizer_step``/``log_values`` are delegated. Exact after DDP averaging;
    without a process group or with world size 1 it simply calls the wrapped loss.
    """

    def __init__(self, loss: PairLoss, variant: str = "shift", group: Group = None) -> None:
        super().__init__()
        _pure_of(loss, (siglip_loss,), "SigLIPRingLoss")
        if variant not in RING_VARIANTS:
            raise ConfigError(f"unknown ring variant {variant!r}; valid: {list(RING_VARIANTS)}")
        self.loss = loss
        self.variant = variant
        self.group = group

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not is_distributed(self.group):
            return self.loss(x, y)
        _, kwargs = _pure_of(self.loss, (siglip_loss,), "SigLIPRingLoss")
        normalize = kwargs.get("normalize", True)
        return siglip_ring_loss(
            x, y, kwargs["scale"], kwargs["bias"], normalize, variant=self.variant, group=self.group
        )
