"""Towers under DistributedDataParallel or FSDP: how a step's gradients are averaged over ranks.

``train.dist_wrapper`` picks one of three forms of the same average (several processes only; one
process trains unwrapped). :func:`tower_sync` builds it; the trainer calls it around a step:

* ``ddp`` (default) — each trainable tower and its projection run inside their own
  :class:`~torch.nn.parallel.DistributedDataParallel`, a *runner* kept outside the model's module
  tree (checkpoints and exports keep the plain keys, no ``module.`` prefix). For the duration of a
  step the runners sit in ``DualEncoder.runners``, which ``encode`` calls in place of
  ``projection(tower(x))``: the plain forward, two views through one tower, hard-negative captions
  and gradient-cache chunks all pass DDP's hooks, and each gradient bucket's all-reduce overlaps
  the rest of the backward. Several forwards before one backward (two views) need nothing more.
  Gradient caching runs one backward per chunk, so every chunk runs under ``no_sync`` except the
  last backward of each modality — the re-run of chunk 0 (``final`` of
  :func:`~contrastkit.scale.grad_cache.backward_through_chunks`), whose forward synchronises and
  whose backward all-reduces the accumulated gradient once. DDP options:
  ``find_unused_parameters=True`` (a parameter no output reaches is still averaged, as a zero, as
  before), buffers not re-broadcast at each forward (BatchNorm statistics stay per rank, as
  before), no ``static_graph`` (it refuses ``no_sync``).
* ``fsdp`` — towers and projections sharded with FSDP2 (:mod:`contrastkit.train.fsdp_towers`).
* ``allreduce`` — one flat all-reduce of every trainable gradient after the backward
  (:func:`~contrastkit.train.distributed.average_gradients`), no overlap.

Parameters outside the wrapped towers — the loss's logit scale and bias, the projection of a locked
tower — are averaged by one small flat all-reduce after the backward. Locked (LiT) towers and
momentum encoders take no gradient and are not wrapped; their forwards stay plain.

Exactness: every form computes ``mean_r g_r``, zeros for a parameter no rank used. With 2 ranks
``ddp`` and ``allreduce`` are bit-identical (halving is exact and a sum of two terms has one
order); with more, they differ in summation order only (tests/train/test_dist_wrappers.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from contrastkit.losses.base import PairLoss
from contrastkit.models.dual_encoder import DualEncoder
from contrastkit.train.config import OptimConfig, RunConfig
from contrastkit.train.distributed import DistContext, average_gradients, average_grads

__all__ = ["DDPTowers", "GradSync", "TowerBranch", "tower_sync", "trainable_towers"]


def trainable_towers(model: DualEncoder) -> list[str]:
    """The modalities whose tower has a trainable parameter: those a wrapper takes (not locked ones)."""
    return [
        m
        for m, tower in model.towers.items()
        if m not in model.locked and any(p.requires_grad for p in tower.parameters())
    ]


class GradSync:
    """``allreduce`` (and any run on one process): nothing on the encode path, one flat all-reduce
    of every trainable gradient after the backward. The base of the wrapped forms: each hook is a
    no-op here."""

    wrapped: tuple[str, ...] = ()  # modalities whose tower + projection run wrapped

    def __init__(self, model: DualEncoder, loss: PairLoss, ctx: DistContext) -> None:
        self.model, self.loss, self.ctx = model, loss, ctx

    def step(self) -> AbstractContextManager[object]:
        """Around a step's forwards: the wrappers on the encode path."""
        return nullcontext()

    def no_sync(self) -> AbstractContextManager[object]:
        """Around forwards and backwards whose gradients only accumulate (gradient-cache chunks)."""
        return nullcontext()

    def final(self, modality: str) -> AbstractContextManager[object]:
        """Inside :meth:`no_sync`: around the forward and backward of ``modality``'s last chunk."""
        del modality
        return nullcontext()

    def average(self) -> None:
        """After the backward(s): every trainable gradient is the mean over ranks."""
        average_gradients([self.model, self.loss], self.ctx)

    def clip_grad_norm(self, params: Sequence[nn.Parameter], max_norm: float) -> float:
        """The global gradient norm of ``params`` (returned), scaled down to ``max_norm``."""
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def optim_config(self, cfg: OptimConfig) -> OptimConfig:
        """The optimizer settings this form can run."""
        return cfg

    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once the optimizer over the (possibly sharded) parameters exists."""
        del optimizer

    def for_saving(self, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        """What rank 0 saves as the model and optimizer (every rank calls it: it may gather)."""
        return self.model, optimizer


class TowerBranch(nn.Module):
    """One modality's tower and projection as one module (the same parameter objects): what a
    DDP runner wraps. It lives in no model's module tree, so state-dict keys stay the model's."""

    def __init__(self, tower: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.tower, self.projection = tower, projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.tower(x))


class _Runner:
    """A modality's DDP wrapper as ``encode`` calls it; ``sync=False`` runs it under ``no_sync``
    (the backward that follows accumulates locally instead of all-reducing)."""

    def __init__(self, ddp: DistributedDataParallel) -> None:
        self.ddp, self.sync = ddp, True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.sync:
            return self.ddp(x)
        with self.ddp.no_sync():
            return self.ddp(x)


def _ddp(branch: TowerBranch, device: torch.device) -> DistributedDataParallel:
    ids = None  # CPU: DDP takes no device ids
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(
        branch,
        device_ids=ids,
        find_unused_parameters=True,  # an unused parameter is averaged as a zero, not waited for
        forward_sync_buffers=False,  # BatchNorm running statistics stay per rank, as with allreduce
    )


class DDPTowers(GradSync):
    """``ddp``: a :class:`DistributedDataParallel` runner per trainable tower + projection, and
    one flat all-reduce for the trainable parameters outside them (the loss's, a locked tower's
    projection)."""

    def __init__(self, model: DualEncoder, loss: PairLoss, ctx: DistContext, device: torch.device) -> None:
        super().__init__(model, loss, ctx)
        self.wrapped = tuple(trainable_towers(model))
        self.runners = {
            m: _Runner(_ddp(TowerBranch(model.towers[m], model.projections[m]), device)) for m in self.wrapped
        }
        inside = {id(p) for r in self.runners.values() for p in r.ddp.module.parameters()}
        trainable = [p for mod in (model, loss) for p in mod.parameters() if p.requires_grad]
        self.inside = [p for p in trainable if id(p) in inside]
        self.rest = [p for p in trainable if id(p) not in inside]

    @contextmanager
    def step(self) -> Iterator[None]:
        self.model.runners.update(self.runners)
        try:
            yield
        finally:
            for m in self.runners:
                self.model.runners.pop(m, None)

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        for r in self.runners.values():
            r.sync = False
        try:
            yield
        finally:
            for r in self.runners.values():
                r.sync = True

    @contextmanager
    def final(self, modality: str) -> Iterator[None]:
        runner = self.runners.get(modality)
        if runner is not None:
            runner.sync = True
        try:
            yield
        finally:
            if runner is not None:
                runner.sync = False

    @torch.no_grad()
    def average(self) -> None:
        for p in self.inside:  # no rank used it: DDP leaves it None; the average is a zero
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        average_grads(self.rest, self.ctx)


def tower_sync(
    cfg: RunConfig, model: DualEncoder, loss: PairLoss, ctx: DistContext, device: torch.device
) -> GradSync:
    """The gradient average ``cfg.train.dist_wrapper`` selects, built after the model is on
    ``device`` with its speed options and before the optimizer (FSDP replaces the parameters)."""
    if not ctx.active or cfg.train.dist_wrapper == "allreduce":
        return GradSync(model, loss, ctx)
    if cfg.train.dist_wrapper == "ddp":
        return DDPTowers(model, loss, ctx, device)
    from contrastkit.train.fsdp_towers import FSDPTowers  # FSDP's imports only where it is used

    return FSDPTowers(cfg, model, loss, ctx, device)
