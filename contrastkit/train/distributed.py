"""Multi-process training plumbing over ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc_per_node 2 -m contrastkit train --config ...`` sets ``RANK``/``WORLD_SIZE``;
:func:`init_from_env` joins the group (gloo on CPU, NCCL on GPU). The same command with
``--nnodes N --node_rank i --rdzv_endpoint HOST:PORT`` is the multi-node launch.

Gradients are averaged with one coalesced ``all_reduce`` after backward instead of wrapping the
towers in ``DistributedDataParallel``: the trainer calls the towers through the dual encoder's
per-modality ``encode`` (and, with gradient caching, chunk by chunk), which bypasses DDP's forward
hooks. The average is exactly DDP's; what is given up is DDP's overlap of communication with the
backward pass (irrelevant on CPU/gloo, a few percent on GPUs). BatchNorm statistics stay local
per rank (as with plain DDP).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from contrastkit.core.errors import ConfigError
from contrastkit.losses.base import PairLoss
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.siglip import siglip_loss
from contrastkit.scale.config import ScaleConfig
from contrastkit.scale.distributed import GatherLoss, SigLIPRingLoss
from contrastkit.scale.gather_all import GatherAllLoss

__all__ = [
    "DistContext",
    "all_mean",
    "all_sum_counts",
    "all_true",
    "average_gradients",
    "init_from_env",
    "wrap_loss",
]


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    device: str = "cpu"  # where collective scalars live (NCCL needs CUDA tensors)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_from_env(device: torch.device) -> DistContext:
    """Join the process group ``torchrun`` describes (or one already initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return DistContext()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), str(device))


def wrap_loss(loss: PairLoss, scale: ScaleConfig, ctx: DistContext) -> PairLoss:
    """The cross-rank form of ``loss`` selected by ``scale.dist_loss`` (identity on one rank):
    CLIP/SigLIP get :class:`GatherLoss` (local or global) or the SigLIP ring; every other pair
    loss and every :class:`MultiLoss` get :class:`GatherAllLoss` (the gathered batch on every
    rank, exact for any loss)."""
    if not ctx.active:
        return loss
    if scale.tile_size is not None and scale.dist_loss != "local":
        raise ConfigError(
            f"scale.tile_size across processes needs scale.dist_loss=local (each rank computes its "
            f"rows in tiles against the gathered columns), got dist_loss={scale.dist_loss!r}"
        )
    if scale.dist_loss == "ring":
        return SigLIPRingLoss(loss)
    if not _is_clip_or_siglip(loss):  # every other loss: the whole batch on every rank (exact)
        if scale.tile_size is not None:
            raise ConfigError(
                f"scale.tile_size across processes works for CLIP/SigLIP only; {type(loss).__name__} "
                "runs as GatherAllLoss (the gathered batch on every rank): unset scale.tile_size"
            )
        return GatherAllLoss(loss)
    local = scale.dist_loss == "local"
    return GatherLoss(loss, gather_with_grad=True, local_loss=local, tile_size=scale.tile_size)


def _is_clip_or_siglip(loss: PairLoss) -> bool:
    try:
        fn, _ = loss.pure()
    except NotImplementedError:
        return False
    return fn in (clip_loss, siglip_loss)


@torch.no_grad()
def average_gradients(modules: list[nn.Module], ctx: DistContext) -> None:
    """DDP's gradient average: one flat all_reduce of every trainable parameter's gradient."""
    if not ctx.active:
        return
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:  # a parameter unused this step still takes part in the average
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= ctx.world
    i = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[i : i + n].view_as(p))
        i += n


@torch.no_grad()
def broadcast_parameters(modules: list[nn.Module], ctx: DistContext) -> None:
    """Make every rank start from rank 0's weights."""
    if ctx.active:
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                dist.broadcast(t, 0)


def all_mean(value: float, ctx: DistContext) -> float:
    if not ctx.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t) / ctx.world


def all_true(flag: bool, ctx: DistContext) -> bool:
    if not ctx.active:
        return flag
    t = torch.tensor([1 if flag else 0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def all_sum_counts(counts: dict[str, int], keys: Sequence[str], ctx: DistContext) -> dict[str, int]:
    """``counts`` summed over ranks for every name in ``keys`` (one all_reduce)."""
    if not ctx.active:
        return {k: int(counts.get(k, 0)) for k in keys}
    t = torch.tensor([int(counts.get(k, 0)) for k in keys], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))
