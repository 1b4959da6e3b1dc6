"""Multi-process training plumbing over ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc_per_node 2 -m contrastkit train --config ...`` sets ``RANK``/``WORLD_SIZE``;
:func:`init_from_env` joins the group (gloo on CPU, NCCL on GPU, process ``LOCAL_RANK`` on GPU
``LOCAL_RANK`` of its node). The same command with ``--nnodes N --rdzv-backend c10d
--rdzv-endpoint HOST:PORT`` on every node is the multi-node launch (docs/distributed.md): the
global ``RANK`` is all the trainer and the data split use, so nodes add nothing else. Choices read
from the run folder (resume or not, which checkpoint) are rank 0's, broadcast (:func:`from_main`).

How the towers' gradients are averaged is ``train.dist_wrapper``'s choice
(:mod:`contrastkit.train.dist_towers`): by default each trainable tower + projection runs in its
own ``DistributedDataParallel`` (kept outside the model's module tree and put on the path of the
dual encoder's per-modality ``encode`` for a step, so views, hard negatives and gradient-cache
chunks all pass DDP's hooks; all but each modality's last chunk under ``no_sync``), its all-reduce
overlapping the backward; ``fsdp`` shards the towers with FSDP2 (:mod:`contrastkit.train.fsdp_towers`);
``allreduce`` is :func:`average_gradients`, one coalesced ``all_reduce`` after the backward. The
loss's learnable scalars and any parameter outside a wrapped tower always take
:func:`average_grads`. Every form gives the same mean gradient (bit for bit on 2 ranks for ddp
and allreduce). BatchNorm statistics stay local per rank in every form.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from contrastkit.core.errors import ConfigError
from contrastkit.losses.base import PairLoss
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.siglip import siglip_loss
from contrastkit.losses.similarity import DEFAULT_SIMILARITY
from contrastkit.scale.config import ScaleConfig
from contrastkit.scale.distributed import GatherLoss
from contrastkit.scale.gather_all import GatherAllLoss
from contrastkit.scale.ring_clip import CLIPRingLoss
from contrastkit.scale.ring_siglip import SigLIPRingLoss
from contrastkit.scale.tiled_family import DEFAULT_TILE

__all__ = [
    "DistContext",
    "all_mean",
    "all_sum_counts",
    "all_true",
    "average_gradients",
    "average_grads",
    "from_main",
    "init_from_env",
    "wrap_loss",
]

T = TypeVar("T")


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
        if device.type == "cuda" and device.index is None:
            _pick_local_gpu()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_rank() == 0:
        _warn_shared_store_restarts()
    return DistContext(dist.get_rank(), dist.get_world_size(), str(device))


SHARED_STORE_RESTARTS = (
    "torchrun --max-restarts with the rendezvous store shared with the workers (torch's default): "
    "the store outlives an attempt, so a restarted rank can read the dead attempt's addresses and "
    "the restart fails or hangs (pytorch/pytorch#135712). Launch torchrun with "
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment (docs/distributed.md)"
)


def _warn_shared_store_restarts() -> None:
    """Warn when ``torchrun`` may restart workers that take their process-group store from the agent.

    The agent exports ``TORCHELASTIC_USE_AGENT_STORE=True`` unless it was started with
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``; the shared store keeps the previous attempt's keys
    (gloo and NCCL addresses), which a restarted rank may read before their new values are set: in
    this project's two-node SIGKILL test 1 run in ~5 failed that way. The workers cannot repair
    it (the restart count that would separate attempts differs between agents), so say so at start."""
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if shared and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0:
        warnings.warn(SHARED_STORE_RESTARTS, stacklevel=3)


def _pick_local_gpu() -> None:
    """One GPU per process: ``torchrun --nproc_per_node G`` gives process ``LOCAL_RANK`` GPU
    ``LOCAL_RANK`` of its node, which ``cuda`` (no index) then means (NCCL refuses two ranks on one)."""
    local, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local >= count:
        raise ConfigError(
            f"process LOCAL_RANK={local} has no GPU of its own: this node shows {count} CUDA "
            "device(s); run torchrun with --nproc_per_node at most that many"
        )
    torch.cuda.set_device(local)


def from_main(value: T, ctx: DistContext) -> T:
    """Rank 0's ``value`` on every rank (a collective: every rank calls it). Decisions read from
    the file system (which checkpoint to resume, whether to resume) are taken by rank 0 alone, so
    ranks never act on different views of a shared folder."""
    if not ctx.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_loss(loss: PairLoss, scale: ScaleConfig, ctx: DistContext) -> PairLoss:
    """The cross-rank form of ``loss`` selected by ``scale.dist_loss`` (identity on one rank):
    CLIP/SigLIP get :class:`GatherLoss` (local or global) or their ring (``ring``: CLIP's Inf-CL
    ring in tiles of ``scale.tile_size``, SigLIP's exchange); every other pair loss and every
    :class:`MultiLoss` get :class:`GatherAllLoss` (the gathered batch on every rank, exact for any
    loss) — and no ring form (:class:`ConfigError`)."""
    if not ctx.active:
        return loss
    if scale.dist_loss == "ring":
        return _ring_form(loss, scale)
    if scale.tile_size is not None and scale.dist_loss != "local":
        raise ConfigError(
            f"scale.tile_size across processes needs scale.dist_loss=local (each rank computes its "
            f"rows in tiles against the gathered columns) or ring (CLIP), got "
            f"dist_loss={scale.dist_loss!r}"
        )
    if not _is_clip_or_siglip(loss):  # every other loss: the whole batch on every rank (exact)
        if scale.tile_size is not None:
            raise ConfigError(
                f"scale.tile_size across processes works for CLIP/SigLIP only; {type(loss).__name__} "
                "runs as GatherAllLoss (the gathered batch on every rank): unset scale.tile_size"
            )
        return GatherAllLoss(loss)
    local = scale.dist_loss == "local"
    return GatherLoss(loss, gather_with_grad=True, local_loss=local, tile_size=scale.tile_size)


def _pure_fn(loss: PairLoss) -> object:
    try:
        fn, _ = loss.pure()
    except NotImplementedError:
        return None
    return fn


def _is_clip_or_siglip(loss: PairLoss) -> bool:
    """CLIP/SigLIP with cosine logits (their gather forms); another similarity (``similarity=dot``…)
    runs as :class:`GatherAllLoss`, exact for any loss."""
    if _pure_fn(loss) not in (clip_loss, siglip_loss):
        return False
    return loss.pure()[1].get("similarity", DEFAULT_SIMILARITY) == DEFAULT_SIMILARITY


def _ring_form(loss: PairLoss, scale: ScaleConfig) -> PairLoss:
    """``scale.dist_loss=ring``: CLIP's ring (tiles of ``scale.tile_size`` within each rank,
    default 2048) or SigLIP's (whole b×b blocks: no tile size); a clear error for any other loss."""
    fn = _pure_fn(loss)
    if fn is clip_loss:
        return CLIPRingLoss(loss, tile_size=scale.tile_size or DEFAULT_TILE)
    if fn is siglip_loss:
        if scale.tile_size is not None:
            raise ConfigError(
                "scale.tile_size with scale.dist_loss=ring works for CLIP only (SigLIP's ring "
                "computes each b×b block whole): unset scale.tile_size, or use dist_loss=local"
            )
        return SigLIPRingLoss(loss)
    raise ConfigError(
        f"scale.dist_loss=ring has a form for CLIP and SigLIP only, not {type(loss).__name__}: use "
        "scale.dist_loss=local (the gathered batch on every rank, exact for any loss)"
    )


def average_gradients(modules: list[nn.Module], ctx: DistContext) -> None:
    """DDP's gradient average: one flat all_reduce of every trainable parameter's gradient."""
    average_grads([p for m in modules for p in m.parameters() if p.requires_grad], ctx)


@torch.no_grad()
def average_grads(params: list[nn.Parameter], ctx: DistContext) -> None:
    """The gradients of ``params`` averaged over ranks, in one flat all_reduce (none if empty)."""
    if not ctx.active or not params:
        return
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
