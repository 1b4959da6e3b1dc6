"""Any loss across ranks, exactly: gather every embedding (with gradient) and every per-sample
batch field, then compute the full-batch loss on every rank.

:class:`GatherLoss` and the SigLIP ring are the memory-efficient cross-rank forms of CLIP and
SigLIP. Every other loss — SupCon, DCL, the multi-view, momentum and ≥ 3-modality objectives of
:class:`~contrastkit.losses.base.MultiLoss` — goes through :class:`GatherAllLoss`:

* embeddings: :func:`~contrastkit.scale.distributed.all_gather_with_grad` per key, so the global
  batch is the rank-order concatenation (N = bD) and gradients flow back to the rank that owns
  each row; ``":ema"`` keys (no gradient) are gathered the same way; the loss's
  ``shared_inputs`` (embeddings equal on every rank, e.g. ``class_prompts``' class prompts) pass
  ungathered: every rank's gradient for them is the full batch's, which the average keeps;
* batch fields (``aux``): a tensor whose first dimension is the local batch size b is gathered
  along it (labels ``[b]``, concept targets ``[b, C]``, token ids ``[b, L]``); integer ``[b, L]``
  fields of different lengths on different ranks are right-padded with ``pad_value`` (0, the
  contrastkit tokenizers' ``[PAD]`` id) first; ``weights`` (a ``[b, b]`` matrix over this rank's
  samples) has no global form and is refused; anything else passes through unchanged;
* the wrapped loss then sees exactly the single-process full batch, so its value is the global
  loss on every rank and, after the trainer's gradient average (DDP's ``1/D``), every gradient —
  towers (``D`` identical copies of ``∂L/∂x_r`` summed by the gather's backward, then averaged)
  and the loss's own parameters — equals the single-process one (tested on 2 gloo ranks).

Cost: every rank holds the global embeddings and computes the whole loss (memory as the
single-process loss at batch N). State the loss keeps (queues, step counters, seeded draws)
evolves identically on every rank because every rank sees the same global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import MultiLoss, PairLoss
from contrastkit.scale.distributed import Group, WrappedLoss, all_gather_with_grad, is_distributed, world_size

__all__ = ["PAIRWISE_FIELDS", "GatherAllLoss"]


PAIRWISE_FIELDS = ("weights",)  # [b, b] matrices over this rank's samples: no global form


def _all_gather(t: torch.Tensor, group: Group) -> torch.Tensor:
    """Plain (no-gradient) all_gather along dim 0; batch fields carry no gradient."""
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(world_size(group))]
    dist.all_gather(parts, t, group=group)
    return torch.cat(parts)


def _gather_field(name: str, t: torch.Tensor, group: Group, pad_value: int) -> torch.Tensor:
    if name in PAIRWISE_FIELDS:
        raise ConfigError(
            f"batch field {name!r} is a pairwise matrix over this rank's samples; it cannot be made "
            "global across ranks — pass per-sample fields (e.g. labels; for medclip image_labels "
            "and text_labels) instead"
        )
    if t.ndim == 2 and not t.is_floating_point():  # token ids: equal lengths first
        lengths = _all_gather(torch.tensor([t.shape[1]], device=t.device), group)
        longest = int(lengths.max())
        if longest > t.shape[1]:
            t = torch.nn.functional.pad(t, (0, longest - t.shape[1]), value=pad_value)
    shapes = _all_gather(torch.tensor(list(t.shape[1:]) or [0], device=t.device)[None], group)
    if not bool((shapes == shapes[0]).all()):
        raise InputError(f"batch field {name!r} has different shapes on different ranks: {shapes.tolist()}")
    return _all_gather(t.detach(), group)


class GatherAllLoss(WrappedLoss):
    """``loss`` on the batch gathered from every rank (see the module docstring). Wraps a pair
    loss (``forward(x, y, **aux)``) or a :class:`MultiLoss` (``forward(emb, **aux)``); delegates
    ``accepts``, ``after_optimizer_step`` and ``log_values``. One process: the loss itself."""

    def __init__(self, loss: PairLoss, group: Group = None, pad_value: int = 0) -> None:
        super().__init__()
        self.loss, self.group, self.pad_value = loss, group, int(pad_value)
        self.multi = isinstance(loss, MultiLoss)

    @property
    def accepts(self) -> frozenset[str]:  # type: ignore[override]
        return self.loss.accepts

    def _aux(self, aux: dict[str, Any], b: int) -> dict[str, Any]:
        out = {}
        for name, value in sorted(aux.items()):  # the same collective order on every rank
            per_sample = isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == b
            out[name] = _gather_field(name, value, self.group, self.pad_value) if per_sample else value
        return out

    def forward(self, *args: Any, **aux: Any) -> torch.Tensor:  # type: ignore[override]
        if not is_distributed(self.group):
            return self.loss(*args, **aux)
        if self.multi:
            (emb,) = args
            if not emb:
                raise InputError("GatherAllLoss: no embeddings to gather")
            shared = set(getattr(self.loss, "shared_inputs", ()))
            rows = [v for k, v in emb.items() if k not in shared]
            if not rows:
                raise InputError(f"GatherAllLoss: only shared embeddings {sorted(emb)}, no batch rows")
            gathered = {
                k: v if k in shared else all_gather_with_grad(v, self.group) for k, v in sorted(emb.items())
            }
            return self.loss(gathered, **self._aux(aux, rows[0].shape[0]))
        x, y = args
        b = x.shape[0]
        x_all, y_all = all_gather_with_grad(x, self.group), all_gather_with_grad(y, self.group)
        return self.loss(x_all, y_all, **self._aux(aux, b))
