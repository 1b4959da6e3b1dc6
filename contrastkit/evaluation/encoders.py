"""Batched, no-grad embedding of images and texts through any model.

Evaluation code talks to an :class:`Encoders` pair of callables, never to a model class, so the
same metrics run on contrastkit runs, on loaded third-party checkpoints, or on any two functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.errors import InputError
from contrastkit.core.progress import progress_bar
from contrastkit.models.dual_encoder import DualEncoder
from contrastkit.models.llm_embed import DecoderTextTower
from contrastkit.models.moe import SparseMoE, record_usage
from contrastkit.models.towers import TextTower

__all__ = ["Encoders", "model_encoders"]


@dataclass(frozen=True)
class Encoders:
    """``images(uint8 [B,3,H,W]) -> [B, d]`` and ``texts(list[str]) -> [B, d]``, L2-normalised
    (``[B, T, d]`` token sets, each token normalised, for late-interaction towers);
    optionally ``image_patches(uint8 [B,3,H,W]) -> [B, H', W', C]``, the image tower's unpooled
    token grid (tower feature space, not normalised), for the dense geometry metrics;
    ``composed(uint8 [B,3,H,W], list[str]) -> [B, d]``, one L2-normalised embedding of each
    (image, text) query from a model that encodes them jointly (FuseLIP's early fusion);
    ``expert_usage(images, texts)`` → ``{modality: {"tokens" [L], "routed" [L, E], "kept" [L, E]}}``
    (NumPy counts per MoE layer) for a sparse mixture-of-experts model (LIMoE);
    ``modality(name, inputs) -> [B, d]``: L2-normalised embeddings of any other modality the model
    has a tower for (a signal such as ``audio`` or ``series``, ``attributes``; batch tensors of it),
    whose names are ``encodes``; ``instructed(instruction, list[str]) -> [B, d]``: texts embedded
    with ``instruction`` in the text tower's instruction slot (``decoder_llm``: its ``task_prompt``),
    for a tower that has one (the ``instruct`` task)."""

    images: Callable[[torch.Tensor], torch.Tensor]
    texts: Callable[[list[str]], torch.Tensor]
    image_patches: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, kw_only=True)
    composed: Callable[[torch.Tensor, list[str]], torch.Tensor] | None = field(default=None, kw_only=True)
    expert_usage: Callable[[torch.Tensor, list[str]], dict[str, dict[str, np.ndarray]]] | None = field(
        default=None, kw_only=True
    )
    modality: Callable[[str, torch.Tensor], torch.Tensor] | None = field(default=None, kw_only=True)
    encodes: tuple[str, ...] = field(default=(), kw_only=True)
    instructed: Callable[[str, list[str]], torch.Tensor] | None = field(default=None, kw_only=True)


def _batches(n: int, batch_size: int, desc: str) -> Iterable[int]:
    """Start indices of the batches of ``n`` items, with a progress bar (an inner one: it vanishes
    when done; quiet for quick calls, see :mod:`contrastkit.core.progress`)."""
    return progress_bar(range(0, n, batch_size), desc, unit="batch", leave=False)


def _cat(outs: list[torch.Tensor]) -> torch.Tensor:
    """Batches concatenated; token sets ``[b, T, d]`` of different lengths are right-padded with
    zero rows first (padding of a token set, :mod:`contrastkit.evaluation.late_interaction`)."""
    if outs and outs[0].ndim == 3:
        longest = max(o.shape[1] for o in outs)
        outs = [F.pad(o, (0, 0, 0, longest - o.shape[1])) for o in outs]
    return torch.cat(outs)


def model_encoders(model: DualEncoder, batch_size: int = 256, device: str | None = None) -> Encoders:
    """Encoders of a :class:`DualEncoder`'s ``image`` and ``text`` towers (eval mode, no grad)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device else next(model.parameters()).device

    @torch.no_grad()
    def images(x: torch.Tensor) -> torch.Tensor:
        model.eval()
        starts = _batches(len(x), batch_size, "embed images")
        outs = [model.encode("image", x[i : i + batch_size].to(dev)) for i in starts]
        return F.normalize(_cat(outs).float(), dim=-1).cpu()

    @torch.no_grad()
    def texts(t: list[str]) -> torch.Tensor:
        model.eval()
        outs = [
            model.encode("text", model.tokenize(list(t[i : i + batch_size])).to(dev))
            for i in _batches(len(t), batch_size, "embed texts")
        ]
        return F.normalize(_cat(outs).float(), dim=-1).cpu()

    tower = model.towers["image"] if "image" in model.towers else None

    @torch.no_grad()
    def image_patches(x: torch.Tensor) -> torch.Tensor:
        model.eval()
        starts = _batches(len(x), batch_size, "embed patches")
        outs = [tower.patch_tokens(x[i : i + batch_size].to(dev)) for i in starts]
        return torch.cat(outs).float().cpu()

    fused = getattr(tower, "encode_fused", None)

    @torch.no_grad()
    def composed(x: torch.Tensor, t: list[str]) -> torch.Tensor:
        model.eval()
        proj = model.projections["image"]  # the query is image-anchored; FuseLIP runs projection: none
        outs = [
            proj(fused(x[i : i + batch_size].to(dev), model.tokenize(list(t[i : i + batch_size])).to(dev)))
            for i in _batches(len(x), batch_size, "embed composed queries")
        ]
        return F.normalize(torch.cat(outs).float(), dim=-1).cpu()

    @torch.no_grad()
    def modality(name: str, x: torch.Tensor) -> torch.Tensor:
        model.eval()
        starts = _batches(len(x), batch_size, f"embed {name}")
        outs = [model.encode(name, x[i : i + batch_size].to(dev)) for i in starts]
        return F.normalize(_cat(outs).float(), dim=-1).cpu()

    def expert_usage(x: torch.Tensor, t: list[str]) -> dict[str, dict[str, np.ndarray]]:
        with record_usage(model) as read:
            images(x)
            texts(t)
            return {m: {k: v.numpy() for k, v in r.items()} for m, r in read().items()}

    text_tower = next((t for t in model.towers.values() if isinstance(t, TextTower)), None)
    if not isinstance(text_tower, DecoderTextTower):  # the tower model.tokenize uses
        text_tower = None

    def instructed(instruction: str, t: list[str]) -> torch.Tensor:
        # the tower renders system_prompt + prefix + task_prompt + text + suffix: swap its
        # task_prompt for the instruction for this call only
        saved = text_tower.template
        text_tower.template = replace(saved, task_prompt=instruction)
        try:
            return texts(t)
        finally:
            text_tower.template = saved

    return Encoders(
        images,
        texts,
        image_patches=image_patches if hasattr(tower, "patch_tokens") else None,
        composed=composed if fused is not None else None,
        expert_usage=expert_usage if any(isinstance(m, SparseMoE) for m in model.modules()) else None,
        modality=modality,
        encodes=tuple(m for m in model.towers if m not in ("image", "text")),
        instructed=instructed if text_tower is not None else None,
    )
