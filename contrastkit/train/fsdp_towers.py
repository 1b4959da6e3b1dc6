"""Sharded towers (``train.dist_wrapper: fsdp``): FSDP2 ``fully_shard`` over all ranks.

What: every trainable tower and its projection are sharded with
:func:`torch.distributed.fsdp.fully_shard` over a 1-D mesh of all ranks (gloo on CPU, NCCL on GPU):
first each *block* of the tower (the elements of its ``ModuleList``/``Sequential`` containers,
outermost first: transformer layers, residual blocks) as a unit of its own, then the tower (what is
left: embeddings, final norm), then the projection. Each parameter becomes a DTensor holding dim-0
rows ``chunk(world)[rank]`` on this rank, so a rank holds ~1/world of these weights, of their
gradients and of AdamW's two moments; the module tree and state-dict keys do not change. FSDP2
shards contiguous tensors only: ``train.channels_last`` does not apply to a sharded tower.

Protocol of a step: a unit's forward all-gathers its weights and frees them afterwards; its
backward all-gathers them again and reduce-scatters the gradient (the mean over ranks). Gradient
caching: every chunk but the last backward of each modality accumulates unsharded gradients
(``set_requires_gradient_sync(False)``). Parameters left unsharded — the loss's logit scale and
bias, a locked tower's projection — are averaged by one flat all-reduce. Gradient norm: per-tensor
norms (a sharded one from the all-reduced sum of its shards' squares) and the norm of those,
clipped as :func:`torch.nn.utils.clip_grad_norm_` clips (which refuses sharded and plain gradients
in one call). AdamW runs its for-loop form: its foreach/fused kernels refuse a group mixing
sharded and plain tensors, and the loss's scalars share a group with the towers' biases.

Checkpoints keep the plain layout (any run, sharded or not, resumes any checkpoint): before rank 0
writes, every rank gathers each sharded weight and moment (``full_tensor``, one at a time onto the
CPU; kept on rank 0 only); on load, hooks on the model and the optimizer cut the full tensors back
to this rank's rows. Weight snapshots and finiteness checks look at the local rows
(:mod:`contrastkit.train.guard`), combined over ranks by the trainer.

Exactness: the same mean gradient as one process up to float32 rounding (reduce-scatter order, the
norm's summation order): tests/train/test_dist_wrappers.py matches one process to ~1e-6 relative.

Refused (:class:`ConfigError`): a momentum encoder of a sharded tower (its EMA reads full weights),
``curation.jest`` / ``curation.noisy_pairs`` (untested: their extra forwards must run on every
rank alike), ``train.compile``, ``optim.impl`` foreach/fused; per-step callbacks (they run on rank
0 alone, and a sharded forward needs every rank) are refused by the trainer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from contrastkit.core.errors import ConfigError
from contrastkit.losses.base import PairLoss
from contrastkit.models.dual_encoder import DualEncoder
from contrastkit.train.config import OptimConfig, RunConfig
from contrastkit.train.dist_towers import GradSync, trainable_towers
from contrastkit.train.distributed import DistContext, average_grads

__all__ = ["FSDPTowers", "check_fsdp", "local_numel", "shard_units"]

_CONTAINERS = (nn.ModuleList, nn.Sequential)


def check_fsdp(cfg: RunConfig, model: DualEncoder) -> None:
    """Refuse what sharded towers cannot run (module docstring), naming the setting."""
    sharded = trainable_towers(model)
    ema = [m for m in (model.momentum.modalities if model.momentum is not None else ()) if m in sharded]
    problems = [f"model.momentum on sharded tower(s) {ema} (the EMA reads full weights)"] if ema else []
    for name in ("jest", "noisy_pairs"):
        if getattr(cfg.curation, name) is not None:
            problems.append(f"curation.{name} (untested with sharded towers)")
    if cfg.train.compile:
        problems.append("train.compile (untested with sharded towers)")
    if cfg.optim.impl in ("foreach", "fused"):
        problems.append(f"optim.impl={cfg.optim.impl} (refuses sharded and plain tensors in one group)")
    if problems:
        raise ConfigError(
            "train.dist_wrapper=fsdp cannot run with " + "; ".join(problems) + ": use dist_wrapper=ddp, "
            "or change these settings"
        )


def shard_units(tower: nn.Module) -> list[nn.Module]:
    """The blocks of ``tower`` that become FSDP units of their own: elements (with parameters) of
    its outermost ``ModuleList``/``Sequential`` containers, containers nested in containers opened."""
    units: list[nn.Module] = []

    def walk(module: nn.Module) -> None:
        for child in module.children():
            block = isinstance(module, _CONTAINERS) and not isinstance(child, _CONTAINERS)
            if not block:
                walk(child)
            elif any(True for _ in child.parameters()):
                units.append(child)

    walk(tower)
    return units


def local_numel(module: nn.Module) -> int:
    """Parameter elements this rank holds (a DTensor's local shard, a plain tensor whole)."""
    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in module.parameters())


def _full(t: torch.Tensor, keep: bool) -> torch.Tensor | None:
    """``t`` whole on the CPU (a collective for a DTensor: every rank calls it); None if not ``keep``."""
    full = t.full_tensor() if isinstance(t, DTensor) else t
    return full.detach().cpu() if keep else None


def _shard_like(value: torch.Tensor, like: DTensor) -> DTensor:
    """This rank's rows of a full tensor, placed as ``like`` (no communication: every rank holds it)."""
    value = value.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(value, like.device_mesh, like.placements, src_data_rank=None)


class _Saved:
    """A state dict standing in for the module or optimizer ``save_checkpoint`` reads it from."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state


class FSDPTowers(GradSync):
    """``fsdp``: trainable towers and projections sharded with FSDP2 (module docstring)."""

    def __init__(
        self, cfg: RunConfig, model: DualEncoder, loss: PairLoss, ctx: DistContext, device: torch.device
    ) -> None:
        super().__init__(model, loss, ctx)
        check_fsdp(cfg, model)
        mesh = init_device_mesh(device.type, (ctx.world,))
        self.wrapped = tuple(trainable_towers(model))
        self.roots: dict[str, list[FSDPModule]] = {}
        for m in self.wrapped:
            tower, projection = model.towers[m], model.projections[m]
            tower.to(memory_format=torch.contiguous_format)  # FSDP2 shards contiguous rows only
            tower.register_forward_hook(_own_storage)  # runs before FSDP's own (registered after)
            for unit in shard_units(tower):
                fully_shard(unit, mesh=mesh)
            self.roots[m] = [fully_shard(tower, mesh=mesh)]
            if any(p.requires_grad for p in projection.parameters()):
                self.roots[m].append(fully_shard(projection, mesh=mesh))
        trainable = [p for mod in (model, loss) for p in mod.parameters() if p.requires_grad]
        self.sharded = [p for p in trainable if isinstance(p, DTensor)]
        self.rest = [p for p in trainable if not isinstance(p, DTensor)]
        model.register_load_state_dict_pre_hook(self._model_to_shards)

    def _sync(self, roots: Sequence[FSDPModule], on: bool) -> None:
        for r in roots:
            r.set_requires_gradient_sync(on)

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        every = [r for roots in self.roots.values() for r in roots]
        self._sync(every, False)
        try:
            yield
        finally:
            self._sync(every, True)

    @contextmanager
    def final(self, modality: str) -> Iterator[None]:
        roots = self.roots.get(modality, [])
        self._sync(roots, True)
        try:
            yield
        finally:
            self._sync(roots, False)

    @torch.no_grad()
    def average(self) -> None:
        for p in self.sharded:  # no rank used it: no gradient was reduced; the average is a zero
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        average_grads(self.rest, self.ctx)

    @torch.no_grad()
    def clip_grad_norm(self, params: Sequence[nn.Parameter], max_norm: float) -> float:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return 0.0
        shard_sq = [g.to_local().float().square().sum() for g in grads if isinstance(g, DTensor)]
        whole = iter(_all_sum(shard_sq).sqrt() if shard_sq else ())  # every rank: the same list
        norms = [next(whole) if isinstance(g, DTensor) else torch.linalg.vector_norm(g) for g in grads]
        total = torch.linalg.vector_norm(torch.stack(norms))
        coef = float(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        if coef != 1.0:
            for g in grads:
                g.mul_(coef)
        return float(total)

    def optim_config(self, cfg: OptimConfig) -> OptimConfig:
        return replace(cfg, impl="for_loop") if cfg.impl == "auto" else cfg

    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_load_state_dict_post_hook(_optimizer_to_shards)

    def for_saving(self, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        keep = self.ctx.main
        weights = {k: _full(v, keep) for k, v in self.model.state_dict().items()}
        sd = optimizer.state_dict()
        state = {pid: {k: _full(v, keep) for k, v in st.items()} for pid, st in sd["state"].items()}
        return _Saved(weights), _Saved({"state": state, "param_groups": sd["param_groups"]})

    def _model_to_shards(self, module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
        """Load hook: each full tensor of a sharded parameter becomes this rank's rows of it."""
        for name, t in module.state_dict(prefix=prefix, keep_vars=True).items():
            value = state.get(name)
            if isinstance(t, DTensor) and isinstance(value, torch.Tensor) and not isinstance(value, DTensor):
                state[name] = _shard_like(value, t)


def _own_storage(module: nn.Module, args: Any, out: Any) -> Any:
    """A tower output that is a view (e.g. pooled by slicing) is copied: FSDP hooks its backward
    on the output, and an in-place op on a view would drop that hook (FSDP warns on every step)."""
    del module, args
    return out.clone() if isinstance(out, torch.Tensor) and out._base is not None else None


def _all_sum(parts: list[torch.Tensor]) -> torch.Tensor:
    flat = torch.stack(parts)
    dist.all_reduce(flat)
    return flat


def _optimizer_to_shards(optimizer: torch.optim.Optimizer) -> None:
    """Load hook: the moments of a sharded parameter, loaded whole, become this rank's rows; the
    for-loop update stays (a checkpoint of an unsharded run may name foreach or fused)."""
    for group in optimizer.param_groups:
        group["foreach"], group["fused"] = False, None
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in list(state.items()):
                if isinstance(p, DTensor) and isinstance(value, torch.Tensor) and value.shape == p.shape:
                    state[key] = _shard_like(value, p) if not isinstance(value, DTensor) else value
