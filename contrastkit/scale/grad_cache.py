"""S-GRADCACHE — exact large-batch contrastive steps; chunks whose graphs fit are not re-run.

Spec id: S-GRADCACHE (docs/performance.md); paper: Gao, Zhang, Han, Callan 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup".

The contrastive batch (``batch_size``) and what fits in memory (``chunk_size``) are decoupled:

1. :func:`embed_in_chunks` — run every tower over its inputs chunk by chunk. The last ``keep``
   chunks of every modality (and always the very last chunk of the pass) run **with** a graph that
   is kept; the others run without one, recording the RNG state before each. The embeddings
   returned are fresh leaves requiring grad, detached from any kept graph.
2. The caller evaluates *any* loss on those embeddings and calls ``loss.backward()``: the loss's
   own parameters (logit scale, bias) get their gradient exactly once, and each embedding its
   gradient ``g = ∂L/∂r``.
3. :func:`backward_through_chunks` — backpropagate ``⟨r_chunk, g_chunk⟩`` through the kept graphs
   first (freeing them), then re-run every other chunk with a graph under its recorded RNG state
   (dropout masks replayed bit for bit) and backpropagate it. Chunks go last to first in both
   phases, so every parameter sums its chunk gradients in the same order whatever ``keep`` is.

Exactness: equal (float64, to rounding) to ordinary autograd through the same chunked forward,
with dropout on, for any ``keep``; a chunk run with a graph draws the same dropout masks as
without one, so the RNG stream after pass 1 does not depend on ``keep``. Cost with k of n chunks
kept: the towers' forward ``1 + (n − k)/n`` times and backward once (two forwards at k = 0).
Under DistributedDataParallel (``train.dist_wrapper``), where a gradient is all-reduced by the
backward that follows a *synchronising* forward, every chunk runs unsynchronised except the last
backward of each modality, ``final(modality)``: the re-run of chunk 0, which pass 1 then never
keeps (``keep_first=False``), so that its forward and backward happen together.

Memory: one chunk's activations + the kept graphs (:func:`graph_bytes` measures one chunk's) +
O(N·d) embeddings and gradients. The always-kept last chunk adds nothing to the pass-2 peak (which
holds one chunk's graph anyway); it overlaps only the loss's own memory (small with
``contrastkit.scale.tiled``). Caveat: BatchNorm in train mode normalises with per-chunk statistics
(as any chunked method does) and updates its running statistics once per kept chunk and twice per
re-run one; prefer LayerNorm/GroupNorm towers, or locked BatchNorm, when chunking.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models.aux import model_chunking_refusal
from contrastkit.models.dual_encoder import DualEncoder

__all__ = ["CachedEmbeddings", "backward_through_chunks", "chunks_to_keep", "embed_in_chunks", "graph_bytes"]

RngState = tuple[torch.Tensor, list[torch.Tensor]]


@dataclass
class CachedEmbeddings:
    """Embeddings of a whole batch (leaves requiring grad), the RNG state of every chunk pass 2
    re-runs (``None`` for a kept one) and the kept chunks' outputs with their graphs."""

    reps: dict[str, torch.Tensor]
    chunk_size: int
    rng_states: dict[str, list[RngState | None]] = field(default_factory=dict)
    graphs: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)


def _devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _rng_state() -> RngState:
    cuda = [torch.cuda.get_rng_state(d) for d in _devices()]
    return torch.get_rng_state(), cuda


def _chunked(model: DualEncoder, batch: Mapping[str, torch.Tensor]) -> list[str]:
    """The modalities of ``batch`` the model embeds, in batch order (the order of pass 1)."""
    names = [m for m in batch if m in model.modalities]
    for m in names:
        if len(batch[m]) == 0:
            raise InputError(f"empty {m!r} batch")
    return names


def embed_in_chunks(
    model: DualEncoder,
    batch: Mapping[str, torch.Tensor],
    chunk_size: int,
    keep: int = 0,
    keep_last: bool = True,
    keep_first: bool = True,
) -> CachedEmbeddings:
    """Pass 1: embeddings of every modality in ``batch``, ``chunk_size`` rows at a time. The last
    ``keep`` chunks of each modality, and with ``keep_last`` the final chunk of the pass, keep
    their graphs for pass 2; the rest run without one. ``keep_first=False``: chunk 0 is never
    kept (pass 2 re-runs it last, as ``final`` of :func:`backward_through_chunks` needs). Returned
    tensors are fresh leaves with ``requires_grad=True``."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise InputError(f"keep must be an integer >= 0, got {keep!r}")
    why = model_chunking_refusal(model)  # e.g. LIMoE: capacity and entropy terms span the batch
    if why:
        raise ConfigError(f"gradient caching cannot be exact for this model: {why}")
    names = _chunked(model, batch)
    reps: dict[str, torch.Tensor] = {}
    states: dict[str, list[RngState | None]] = {}
    graphs: dict[str, dict[int, torch.Tensor]] = {}
    for m in names:
        inputs = batch[m]
        n = -(-len(inputs) // chunk_size)
        outs, states[m], graphs[m] = [], [], {}
        for k in range(n):
            x = inputs[k * chunk_size : (k + 1) * chunk_size]
            kept = k >= n - keep or (keep_last and m == names[-1] and k == n - 1)
            if kept and (keep_first or k > 0):
                states[m].append(None)  # same dropout draws with or without a graph: no replay
                with torch.enable_grad():
                    graphs[m][k] = model.encode(m, x)
                outs.append(graphs[m][k].detach())
            else:
                states[m].append(_rng_state())
                with torch.no_grad():
                    outs.append(model.encode(m, x))
        reps[m] = torch.cat(outs).requires_grad_(True)
    return CachedEmbeddings(reps, chunk_size, states, graphs)


def _backprop(out: torch.Tensor, g: torch.Tensor) -> None:
    (out.to(g.dtype) * g).sum().backward()  # ∂⟨r, g⟩/∂r = g: the chain rule, one chunk


def backward_through_chunks(
    model: DualEncoder,
    batch: Mapping[str, torch.Tensor],
    cached: CachedEmbeddings,
    replay_rng: bool = True,
    final: Callable[[str], AbstractContextManager[object]] | None = None,
) -> None:
    """Pass 2: after ``loss.backward()`` filled ``cached.reps[m].grad``, accumulate the exact
    parameter gradients chunk by chunk: kept graphs first (their memory is freed before any
    re-run), then the re-run chunks. ``final(m)``: a context around the forward and backward of
    modality ``m``'s last chunk (chunk 0, re-run: pass 1 with ``keep_first=False``), e.g. DDP's
    synchronising one. ``replay_rng=False`` exists only to show (in tests) that without the replay
    the gradients are wrong under dropout."""
    for m, rep in cached.reps.items():
        if rep.grad is None:
            raise InputError(
                f"no gradient on the cached {m!r} embeddings: call loss.backward() before "
                "backward_through_chunks (and use the embeddings in the loss)"
            )
        if final is not None and 0 in cached.graphs.get(m, {}):
            raise InputError(
                f"backward_through_chunks(final=...) runs the last chunk of {m!r} (chunk 0) inside "
                "final(): pass 1 must not keep its graph (embed_in_chunks(keep_first=False))"
            )
    c = cached.chunk_size
    for m, rep in cached.reps.items():
        kept = cached.graphs.get(m, {})
        for k in sorted(kept, reverse=True):
            _backprop(kept.pop(k), rep.grad[k * c : (k + 1) * c])
    for m, rep in cached.reps.items():
        for k in reversed(range(len(cached.rng_states[m]))):
            state = cached.rng_states[m][k]
            if state is None:
                continue
            with final(m) if final is not None and k == 0 else nullcontext():
                with torch.random.fork_rng(devices=_devices(), enabled=replay_rng):
                    if replay_rng:
                        torch.set_rng_state(state[0])
                        for d, st in zip(_devices(), state[1]):
                            torch.cuda.set_rng_state(st, d)
                    out = model.encode(m, batch[m][k * c : (k + 1) * c])
                _backprop(out, rep.grad[k * c : (k + 1) * c])


def graph_bytes(model: DualEncoder, batch: Mapping[str, torch.Tensor], chunk_size: int) -> dict[str, int]:
    """Bytes one kept chunk's graph holds, per modality: the storages autograd saves while the
    first chunk runs with a graph (counted once each; parameters and inputs excluded, they exist
    anyway). Runs under a forked RNG with the model's buffers restored afterwards, so the
    measurement changes neither the random stream nor BatchNorm statistics."""
    names = _chunked(model, batch)
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    exclude |= {batch[m].untyped_storage().data_ptr() for m in names}
    buffers = [b.detach().clone() for b in model.buffers()]
    sizes: dict[str, int] = {}
    for m in names:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor, seen: dict[int, int] = seen) -> torch.Tensor:
            s = t.untyped_storage()
            if s.data_ptr() not in exclude:
                seen[s.data_ptr()] = s.nbytes()
            return t

        with (
            torch.random.fork_rng(devices=_devices()),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            out = model.encode(m, batch[m][:chunk_size])
        del out
        sizes[m] = sum(seen.values())
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
    return sizes


_MEASURED: weakref.WeakKeyDictionary[DualEncoder, dict[tuple, int]] = weakref.WeakKeyDictionary()


def chunks_to_keep(
    model: DualEncoder,
    batch: Mapping[str, torch.Tensor],
    chunk_size: int,
    keep: int | None,
    budget: int | None,
) -> int:
    """How many chunks per modality pass 1 keeps: ``keep`` if given; else as many as fit in
    ``budget`` bytes, a kept chunk of every modality costing :func:`graph_bytes` (measured once per
    model, chunk size and input shape, so a padded text length re-measures); else 0."""
    if keep is not None or budget is None:
        return keep or 0
    key = (chunk_size, *((m, tuple(batch[m].shape[1:]), batch[m].dtype) for m in _chunked(model, batch)))
    known = _MEASURED.setdefault(model, {})
    if key not in known:
        known[key] = max(1, sum(graph_bytes(model, batch, chunk_size).values()))
    return int(budget // known[key])
