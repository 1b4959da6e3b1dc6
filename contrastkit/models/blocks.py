"""Pre-LayerNorm transformer blocks with key-padding masks, shared by the single-tower models.

What: ``Block`` = ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``, bidirectional (no causal mask), the
MLP either dense (:class:`MLP`) or any module with the same call (LIMoE's sparse experts,
:class:`~contrastkit.models.moe.SparseMoE`, which also returns its routing probabilities).

Formula: multi-head attention ``softmax(q kᵀ / √d_h + M) v`` with ``M = −∞`` on padded *keys*
(``pad[b, j]`` true), so a real token never attends to padding and appending padding leaves every
real token's output unchanged (up to float summation order of the fused attention kernel).
Outputs at padded positions are computed but meaningless; poolers must ignore them.

Related: :mod:`contrastkit.models.limoe` (M-LIMOE), :mod:`contrastkit.models.fuselip` (M-FUSELIP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.errors import ConfigError

__all__ = ["MLP", "Attention", "Block"]


class Attention(nn.Module):
    """Multi-head self-attention over ``[B, L, d]`` with an optional key-padding mask ``[B, L]``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"width={width} must be a multiple of heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if pad is None else (~pad)[:, None, None, :]  # True: a key that takes part
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    """``Linear(d, h) → GELU → Linear(h, d)`` on every token."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """One pre-LN block; ``mlp`` defaults to a dense :class:`MLP` of ``mlp_ratio × width``.

    ``forward(x, pad, **mlp_kw)`` returns ``(x, extra)``: ``extra`` is what a sparse MLP returns
    beside its output (routing probabilities), ``None`` for a dense one."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, mlp: nn.Module | None = None) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = mlp if mlp is not None else MLP(width, round(mlp_ratio * width))

    def forward(
        self, x: torch.Tensor, pad: torch.Tensor | None = None, **mlp_kw: object
    ) -> tuple[torch.Tensor, object]:
        x = x + self.attn(self.ln1(x), pad)
        y = self.mlp(self.ln2(x), **mlp_kw)
        if isinstance(y, tuple):
            return x + y[0], y[1]
        return x + y, None
