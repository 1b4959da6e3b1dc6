"""S-GRADCACHE partial graphs — keep what is costly to recompute, recompute what is cheap.

Spec id: S-GRADCACHE (docs/performance.md). A chunk that gradient caching cannot afford to keep
whole need not be re-run whole either. A *partial* graph is selective activation checkpointing
(``torch.utils.checkpoint`` with a policy, non-reentrant): the chunk's forward runs once in pass 1,
keeping only the outputs of matrix products, convolutions and attention kernels; in pass 2 its
backward recomputes the elementwise work between them (norms, activations, dropout — the checkpoint
restores the RNG state, so the masks are the same draws) and reuses the kept outputs. Gradients
are bit-identical to a full graph's; memory is what :func:`partial_bytes` counts (a third of a
full graph for a 2-layer BERT tower here); time is a fraction of a forward (the elementwise ops
plus the policy's per-op dispatch in Python).

Refused (:func:`partial_refusal`) for towers with BatchNorm in training mode — the recompute would
update the running statistics a second time — and for FSDP-sharded models, whose all-gathers inside
the forward the recompute cannot replay; and (:func:`partial_probe`, one forward and backward of two
rows per model and tower) where an in-place operation changes a kept output, e.g.
``nn.ReLU(inplace=True)`` right after a ``Linear`` or ``Conv2d`` with no norm between (the
checkpoint raises "Tensor cached during selective activation checkpoint has been mutated"). Those
keep full graphs or none.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from contrastkit.models.dual_encoder import DualEncoder

__all__ = [
    "param_storages",
    "partial_bytes",
    "partial_forward",
    "partial_probe",
    "partial_refusal",
    "saved_ops",
    "untouched",
]

# The ops whose outputs a partial graph keeps: the compute-bound ones. Names missing from a torch
# build (e.g. the CUDA-only attention kernels) are skipped.
_SAVED = (
    "mm",
    "addmm",
    "bmm",
    "baddbmm",
    "convolution",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
)


def saved_ops() -> frozenset[torch._ops.OpOverload]:
    """The aten overloads whose outputs a partial graph keeps (matrix products, convolutions,
    fused attention); every other op is recomputed in pass 2."""
    ops = []
    for name in _SAVED:
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None and hasattr(packet, "default"):
            ops.append(packet.default)
    return frozenset(ops)


def _context_fn(ops: frozenset[torch._ops.OpOverload]) -> Callable[[], Any]:
    def policy(ctx: object, op: object, *args: object, **kwargs: object) -> CheckpointPolicy:
        return CheckpointPolicy.MUST_SAVE if op in ops else CheckpointPolicy.PREFER_RECOMPUTE

    return functools.partial(create_selective_checkpoint_contexts, policy)


def partial_forward(model: DualEncoder, modality: str, x: torch.Tensor) -> torch.Tensor:
    """``model.encode(modality, x)`` with a partial graph (selective checkpointing). Under autocast
    the cast-weight cache is off for this forward: with it, a later chunk reuses casts an earlier
    one made, and its recompute (outside that autocast region) would run casts its forward did not."""
    dev = x.device.type
    no_cache = (
        torch.autocast(dev, dtype=torch.get_autocast_dtype(dev), cache_enabled=False)
        if torch.is_autocast_enabled(dev)
        else contextlib.nullcontext()
    )
    with no_cache:
        return checkpoint(model.encode, modality, x, use_reentrant=False, context_fn=_context_fn(saved_ops()))


def partial_refusal(model: DualEncoder, modality: str) -> str | None:
    """Why ``modality``'s tower cannot keep a partial graph, or ``None``."""
    from torch.distributed.fsdp import FSDPModule  # lazy: torch.distributed is slow to import

    if any(isinstance(mod, FSDPModule) for mod in model.modules()):
        return (
            "the model is sharded with FSDP (train.dist_wrapper: fsdp), whose parameter "
            "all-gathers inside the forward a partial graph's recompute cannot replay"
        )
    for name, mod in model.towers[modality].named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training:
            return (
                f"the {modality!r} tower has BatchNorm in training mode ({name or 'the tower'}): "
                "recomputing it would update its running statistics twice"
            )
    return None


# per model: tower -> why its partial graph fails (None: it works); probed once per model and tower
_PROBED: weakref.WeakKeyDictionary[nn.Module, dict[str, str | None]] = weakref.WeakKeyDictionary()


def partial_probe(model: DualEncoder, modality: str, x: torch.Tensor) -> str | None:
    """Why ``modality``'s tower cannot keep a partial graph — :func:`partial_refusal`, else one
    partial forward and backward of ``x[:2]`` (once per model and tower; RNG and buffers untouched,
    no ``.grad`` written) — or ``None``."""
    why = partial_refusal(model, modality)
    if why is not None:
        return why
    known = _PROBED.setdefault(model, {})
    if modality not in known:
        known[modality] = _probe(model, modality, x[:2])
    return known[modality]


def _probe(model: DualEncoder, modality: str, x: torch.Tensor) -> str | None:
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        with untouched(model), torch.enable_grad():
            out = partial_forward(model, modality, x)
            if out.requires_grad:
                torch.autograd.grad(out.float().sum(), params, allow_unused=True)
    except RuntimeError as err:
        if "mutated" not in str(err):
            raise
        return (
            f"an in-place operation in the {modality!r} tower changes an output a partial graph keeps "
            "(e.g. ReLU(inplace=True) right after a Linear or Conv with no norm between)"
        )
    return None


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Measure inside: the RNG stream is forked and the model's buffers (BatchNorm statistics)
    are restored on exit, so a measuring forward changes neither."""
    buffers = [b.detach().clone() for b in model.buffers()]
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)


def param_storages(model: nn.Module) -> set[int]:
    """Addresses of the parameters' storages (a sharded DTensor's local shard), which a graph's
    measure leaves out: they exist anyway. Under FSDP the gathered copies used in the forward are
    not among them, so a measured graph includes them (an over-estimate where FSDP frees them
    after the forward)."""
    ptrs = set()
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p  # DTensor (FSDP2): the local shard
        ptrs.add(local.untyped_storage().data_ptr())
    return ptrs


class _CountOutputs(TorchDispatchMode):
    """Bytes of the distinct storages the saved ops return (``exclude``: storages that exist anyway)."""

    def __init__(self, ops: frozenset[torch._ops.OpOverload], exclude: set[int]) -> None:
        super().__init__()
        self.ops, self.exclude, self.seen = ops, exclude, {}
        self.held: list[torch.Tensor] = []  # alive as in a partial graph: no address reused

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func in self.ops:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    s = t.untyped_storage()
                    if s.data_ptr() not in self.exclude:
                        self.seen[s.data_ptr()] = s.nbytes()
                        self.held.append(t)
        return out


def partial_bytes(model: DualEncoder, batch: Mapping[str, torch.Tensor], chunk_size: int) -> dict[str, int]:
    """Bytes one chunk's partial graph keeps, per modality of ``batch`` the model embeds: the
    outputs of :func:`saved_ops` during one chunk's forward (parameters and inputs excluded). Runs
    under a forked RNG with the model's buffers restored, so measuring changes nothing."""
    exclude = param_storages(model)
    names = [m for m in batch if m in model.modalities]
    exclude |= {batch[m].untyped_storage().data_ptr() for m in names}
    sizes: dict[str, int] = {}
    for m in names:
        counter = _CountOutputs(saved_ops(), exclude)
        with untouched(model), torch.enable_grad(), counter:
            out = model.encode(m, batch[m][:chunk_size])
        del out
        sizes[m] = sum(counter.seen.values())
        counter.held.clear()
    return sizes
