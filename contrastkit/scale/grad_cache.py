"""S-GRADCACHE — exact large-batch contrastive steps; chunks whose graphs fit are not re-run.

Spec id: S-GRADCACHE (docs/performance.md); paper: Gao, Zhang, Han, Callan 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup".

The contrastive batch (``batch_size``) and what fits in memory (``chunk_size``) are decoupled:

1. :func:`embed_in_chunks` — run every tower over its inputs chunk by chunk. The last ``keep``
   chunks of every modality (and always the very last chunk of the pass) run **with** a graph that
   is kept; the ``partial`` chunks before them keep a partial graph (``scale.partial_graph``: the
   outputs of products, convolutions and attention); the others run without one, recording the
   RNG state before each. The embeddings returned are fresh leaves requiring grad, detached from
   any kept graph. ``keep`` and ``partial`` are counts for every modality or per modality
   (``scale.graph_plan`` chooses them from a memory budget).
2. The caller evaluates *any* loss on those embeddings and calls ``loss.backward()``: the loss's
   own parameters (logit scale, bias) get their gradient exactly once, and each embedding its
   gradient ``g = ∂L/∂r``.
3. :func:`backward_through_chunks` — backpropagate ``⟨r_chunk, g_chunk⟩`` through the kept graphs
   first (freeing them; a partial one recomputes its elementwise work inside that backward), then
   re-run every other chunk with a graph under its recorded RNG state (dropout masks replayed bit
   for bit) and backpropagate it. Chunks go last to first in both phases, so every parameter sums
   its chunk gradients in the same order whatever is kept. A modality whose path trains nothing
   (locked tower and projection) has no graph to go through: once a kept chunk or its first
   re-run shows that, no more of its chunks are re-run.

Exactness: equal (float64, to rounding) to ordinary autograd through the same chunked forward,
with dropout on, for any ``keep`` and ``partial``; a chunk run with a graph draws the same dropout
masks as without one, so the RNG stream after pass 1 does not depend on them. Cost with k of n
chunks kept and none partial: the towers' forward ``1 + (n − k)/n`` times and backward once (two
forwards at k = 0). Under DistributedDataParallel (``train.dist_wrapper``), where a gradient is
all-reduced by the backward that follows a *synchronising* forward, every chunk runs
unsynchronised except the last backward of each modality, ``final(modality)``: the re-run of chunk
0, which pass 1 then never keeps (``keep_first=False``), so that its forward and backward happen
together.

Memory: one chunk's activations + the kept graphs (:func:`graph_bytes` measures one chunk's,
``scale.partial_graph.partial_bytes`` a partial one's) + O(N·d) embeddings and gradients. The
always-kept last chunk adds nothing to the pass-2 peak (which holds one chunk's graph anyway); it
overlaps only the loss's own memory (small with ``contrastkit.scale.tiled``). BatchNorm in train
mode normalises with per-chunk statistics (as any chunked method does) and updates its running
statistics once per chunk whatever is kept: a re-run's forward restores the buffers it changed.
Prefer LayerNorm/GroupNorm towers, or locked BatchNorm, when chunking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models.aux import model_chunking_refusal
from contrastkit.models.dual_encoder import DualEncoder
from contrastkit.scale.partial_graph import param_storages, partial_forward, partial_probe, untouched

__all__ = ["CachedEmbeddings", "backward_through_chunks", "embed_in_chunks", "graph_bytes"]

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


def _per_modality(name: str, value: int | Mapping[str, int], names: list[str]) -> dict[str, int]:
    """A count for every modality, or one per modality (missing ones 0), validated."""
    counts = value if isinstance(value, Mapping) else dict.fromkeys(names, value)
    unknown = sorted(set(counts) - set(names))
    if unknown:
        raise InputError(f"{name}: no modality {unknown[0]!r} in this batch (it has {names})")
    for m, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InputError(f"{name} must be an integer >= 0, got {v!r} for {m!r}")
    return {m: counts.get(m, 0) for m in names}


def embed_in_chunks(
    model: DualEncoder,
    batch: Mapping[str, torch.Tensor],
    chunk_size: int,
    keep: int | Mapping[str, int] = 0,
    keep_last: bool = True,
    keep_first: bool = True,
    partial: int | Mapping[str, int] = 0,
) -> CachedEmbeddings:
    """Pass 1: embeddings of every modality in ``batch``, ``chunk_size`` rows at a time. The last
    ``keep`` chunks of each modality, and with ``keep_last`` the final chunk of the pass, keep
    their graphs for pass 2; the ``partial`` chunks before those keep a partial graph (refused for
    towers with train-mode BatchNorm); the rest run without one. Counts are for every modality or
    a mapping per modality. ``keep_first=False``: chunk 0 keeps nothing (pass 2 re-runs it last,
    as ``final`` of :func:`backward_through_chunks` needs). Returned tensors are fresh leaves with
    ``requires_grad=True``."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    why = model_chunking_refusal(model)  # e.g. LIMoE: capacity and entropy terms span the batch
    if why:
        raise ConfigError(f"gradient caching cannot be exact for this model: {why}")
    names = _chunked(model, batch)
    full, part = _per_modality("keep", keep, names), _per_modality("partial", partial, names)
    for m in names:
        why = partial_probe(model, m, batch[m]) if part[m] else None
        if why:
            raise ConfigError(f"partial graphs (scale.partial_chunks) refused: {why}")
    reps: dict[str, torch.Tensor] = {}
    states: dict[str, list[RngState | None]] = {}
    graphs: dict[str, dict[int, torch.Tensor]] = {}
    for m in names:
        inputs = batch[m]
        n = -(-len(inputs) // chunk_size)
        outs, states[m], graphs[m] = [], [], {}
        for k in range(n):
            x = inputs[k * chunk_size : (k + 1) * chunk_size]
            kept = k >= n - full[m] or (keep_last and m == names[-1] and k == n - 1)
            partly = not kept and k >= n - full[m] - part[m]
            if (kept or partly) and (keep_first or k > 0):
                states[m].append(None)  # same dropout draws with or without a graph: no replay
                with torch.enable_grad():
                    graphs[m][k] = partial_forward(model, m, x) if partly else model.encode(m, x)
                outs.append(graphs[m][k].detach())
            else:
                states[m].append(_rng_state())
                with torch.no_grad():
                    outs.append(model.encode(m, x))
        reps[m] = torch.cat(outs).requires_grad_(True)
    return CachedEmbeddings(reps, chunk_size, states, graphs)


def _backprop(out: torch.Tensor, g: torch.Tensor) -> bool:
    """Backpropagate ``g`` through one chunk's output; ``False`` where nothing in its path trains
    (a locked tower and projection: there is no graph to go through)."""
    if not out.requires_grad:
        return False
    (out.to(g.dtype) * g).sum().backward()  # ∂⟨r, g⟩/∂r = g: the chain rule, one chunk
    return True


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
    frozen: set[str] = set()  # modalities whose path trains nothing: their other chunks are not re-run
    for m, rep in cached.reps.items():
        kept = cached.graphs.get(m, {})
        for k in sorted(kept, reverse=True):
            if not _backprop(kept.pop(k), rep.grad[k * c : (k + 1) * c]):
                frozen.add(m)
    for m, rep in cached.reps.items():
        for k in reversed(range(len(cached.rng_states[m]))):
            state = cached.rng_states[m][k]
            if state is None or m in frozen:
                continue
            with final(m) if final is not None and k == 0 else nullcontext():
                with torch.random.fork_rng(devices=_devices(), enabled=replay_rng):
                    if replay_rng:
                        torch.set_rng_state(state[0])
                        for d, st in zip(_devices(), state[1]):
                            torch.cuda.set_rng_state(st, d)
                    buffers = [b.detach().clone() for b in model.buffers()]
                    out = model.encode(m, batch[m][k * c : (k + 1) * c])
                if not _backprop(out, rep.grad[k * c : (k + 1) * c]):
                    frozen.add(m)
                # pass 1 already ran this chunk, so its BatchNorm statistics update once; restored
                # after the backward, which may have saved the buffers the forward changed in place
                with torch.no_grad():
                    for b, saved in zip(model.buffers(), buffers):
                        b.copy_(saved)


def graph_bytes(model: DualEncoder, batch: Mapping[str, torch.Tensor], chunk_size: int) -> dict[str, int]:
    """Bytes one kept chunk's graph holds, per modality: the storages autograd saves while the
    first chunk runs with a graph (counted once each; parameters and inputs excluded, they exist
    anyway). Runs under a forked RNG with the model's buffers restored afterwards, so the
    measurement changes neither the random stream nor BatchNorm statistics."""
    names = _chunked(model, batch)
    exclude = param_storages(model)
    exclude |= {batch[m].untyped_storage().data_ptr() for m in names}
    sizes: dict[str, int] = {}
    for m in names:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor, seen: dict[int, int] = seen) -> torch.Tensor:
            s = t.untyped_storage()
            if s.data_ptr() not in exclude:
                seen[s.data_ptr()] = s.nbytes()
            return t

        with untouched(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model.encode(m, batch[m][:chunk_size])
        del out
        sizes[m] = sum(seen.values())
    return sizes
