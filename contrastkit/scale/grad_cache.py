"""S-GRADCACHE — exact large-batch contrastive steps with the memory of one chunk.

Spec id: S-GRADCACHE (docs/performance.md); paper: Gao, Zhang, Han, Callan 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup".

The contrastive batch (``batch_size``) and what fits in memory (``chunk_size``) are decoupled:

1. :func:`embed_in_chunks` — run every tower over its inputs chunk by chunk **without** a graph,
   recording the RNG state before each chunk; return the embeddings as leaf tensors requiring grad.
2. The caller evaluates *any* loss on those embeddings and calls ``loss.backward()``: the loss's
   own parameters (logit scale, bias) get their gradient exactly once, and each embedding its
   gradient ``g = ∂L/∂r``.
3. :func:`backward_through_chunks` — re-run each chunk with a graph under its recorded RNG state
   (dropout masks are replayed bit for bit) and backpropagate ``⟨r_chunk, g_chunk⟩``; parameter
   gradients accumulate to the exact gradient of the full-batch loss.

Exactness: equal (float64, to rounding) to ordinary autograd through the same chunked forward,
with dropout on. Cost: two forwards and one backward of the towers (≈ +33%). Memory: activations
of one chunk + O(N·d) embeddings and their gradients (+ the loss's own memory: combine with
``contrastkit.scale.tiled`` for O(N·d) there too). Caveat: BatchNorm in train mode normalises
with per-chunk statistics (as any chunked method does) and updates its running statistics twice per
step; prefer LayerNorm/GroupNorm towers, or locked BatchNorm, when chunking.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from contrastkit.core.errors import InputError
from contrastkit.models.dual_encoder import DualEncoder

__all__ = ["CachedEmbeddings", "backward_through_chunks", "embed_in_chunks"]


@dataclass
class CachedEmbeddings:
    """Embeddings of a whole batch (leaves requiring grad) and the RNG states of their chunks."""

    reps: dict[str, torch.Tensor]
    chunk_size: int
    rng_states: dict[str, list[tuple[torch.Tensor, list[torch.Tensor]]]] = field(default_factory=dict)


def _devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    cuda = [torch.cuda.get_rng_state(d) for d in _devices()]
    return torch.get_rng_state(), cuda


def embed_in_chunks(
    model: DualEncoder, batch: Mapping[str, torch.Tensor], chunk_size: int
) -> CachedEmbeddings:
    """Pass 1: embeddings of every modality in ``batch``, computed ``chunk_size`` rows at a time
    without a graph. Returned tensors are fresh leaves with ``requires_grad=True``."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    reps: dict[str, torch.Tensor] = {}
    states: dict[str, list] = {}
    for m, inputs in batch.items():
        if m not in model.modalities:
            continue
        if len(inputs) == 0:
            raise InputError(f"empty {m!r} batch")
        outs, states[m] = [], []
        for i in range(0, len(inputs), chunk_size):
            states[m].append(_rng_state())
            with torch.no_grad():
                outs.append(model.encode(m, inputs[i : i + chunk_size]))
        reps[m] = torch.cat(outs).detach().requires_grad_(True)
    return CachedEmbeddings(reps, chunk_size, states)


def backward_through_chunks(
    model: DualEncoder, batch: Mapping[str, torch.Tensor], cached: CachedEmbeddings, replay_rng: bool = True
) -> None:
    """Pass 2: after ``loss.backward()`` filled ``cached.reps[m].grad``, accumulate the exact
    parameter gradients chunk by chunk. ``replay_rng=False`` exists only to show (in tests) that
    without the replay the gradients are wrong under dropout."""
    for m, rep in cached.reps.items():
        if rep.grad is None:
            raise InputError(
                f"no gradient on the cached {m!r} embeddings: call loss.backward() before "
                "backward_through_chunks (and use the embeddings in the loss)"
            )
        inputs, c = batch[m], cached.chunk_size
        for k, i in enumerate(range(0, len(inputs), c)):
            with torch.random.fork_rng(devices=_devices(), enabled=replay_rng):
                if replay_rng:
                    cpu, cuda = cached.rng_states[m][k]
                    torch.set_rng_state(cpu)
                    for d, st in zip(_devices(), cuda):
                        torch.cuda.set_rng_state(st, d)
                out = model.encode(m, inputs[i : i + c])
            g = rep.grad[i : i + c]
            (out.to(g.dtype) * g).sum().backward()  # ∂⟨r, g⟩/∂r = g: the chain rule, one chunk
