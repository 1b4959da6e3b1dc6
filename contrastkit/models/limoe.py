"""LIMoE: one sparse mixture-of-experts transformer for images and text (M-LIMOE, seed paper 98:
Mustafa et al. 2022, "Multimodal Contrastive Learning with LIMoE").

What: image patches and text tokens go through ONE transformer — the same weights, separate
batches per modality — whose every ``moe_every``-th block (default every other, the last
included) has a :class:`~contrastkit.models.moe.SparseMoE` MLP (``experts`` experts, top-``k``,
capacity ``ceil(capacity_factor · k · n_tokens / E)``, overflow tokens skip the expert through the
residual, optional Batch Priority Routing per modality). Only the inputs are per modality: a patch
embedding and a token embedding (+ tokenizer), each with its own learned positions. Outputs: final
LayerNorm, then the mean over patches / over real (non-pad) tokens; the model's per-modality
projections map them into the contrastive space.

Towers: ``limoe`` (modality ``image``) holds the shared transformer; ``limoe_text`` holds only the
text embedding and tokenizer and runs the ``image`` tower's transformer (``shared_with``), which is
registered once (state dict, optimiser, export). List the image tower first in ``model.towers``.

Regularisers (per MoE layer and modality, over that modality's real tokens of the batch):
``λ_local · Ω_local + λ_global · Ω_global`` with ``Ω_local = mean_i H(p(·|x_i))`` and
``Ω_global = −H(p̄)``, or with ``tau_<modality>`` set the thresholded ``max(0, τ − H(p̄))`` (zero
once the modality's marginal routing entropy reaches τ, so it may use a subset of experts).
Summed over layers and recorded as auxiliary losses ``limoe/<modality>/{local,global}``
(:mod:`contrastkit.models.aux`): the trainer adds them to the contrastive loss and logs them.

Defaults are UNVERIFIED placeholders (no LIMoE training code or paper text could be read): E = 8,
k = 1, capacity factor 1.0, λ_local = λ_global = 0.01, no threshold ("τ off" means the plain
``−H(p̄)``: ``max(0, 0 − H)`` would switch the term off), BPR on for images and off for text. All are
configurable. Not implemented: router noise, V-MoE importance/load losses, the paper's sizes.

Exactness and limits: capacity and BPR couple the tokens of a batch and the regularisers are
batch functions, so gradient caching (``scale.chunk_size``) is refused; across processes each rank
routes and regularises its own shard (per-shard capacity and entropies, as V-MoE per device).
Expert usage per modality: :func:`contrastkit.models.moe.record_usage` (the ``experts``
evaluation task plots it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive, PositiveInt
from contrastkit.models.aux import AuxLosses, declare_chunking
from contrastkit.models.blocks import Block
from contrastkit.models.moe import SparseMoE, global_entropy, local_entropy, thresholded_global_entropy
from contrastkit.models.tokenizer import encode, load_tokenizer, train_word_tokenizer
from contrastkit.models.towers import TOWERS, TextTower, Tower, TowerContext, check_token_ids, shared_owner

__all__ = ["LIMoEBody", "LIMoEImageTower", "LIMoETextTower"]

_NO_CHUNKS = (
    "LIMoE's expert capacity and Batch Priority Routing depend on every token of the batch and its "
    "entropy regularisers are batch functions; chunks would route and regularise differently"
)
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class LIMoEBody(nn.Module):
    """The shared transformer: ``depth`` pre-LN blocks, MoE MLPs in blocks ``moe_every−1``,
    ``2·moe_every−1``, … and a final LayerNorm. ``forward(x, pad, modality, bpr)`` returns the
    normalised hidden states and the router probabilities of every MoE layer (real tokens)."""

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        experts: int,
        k: int,
        capacity_factor: float,
        eval_capacity_factor: float | None,
        moe_every: int,
    ) -> None:
        super().__init__()
        hidden = round(mlp_ratio * width)

        def mlp(i: int) -> nn.Module | None:
            if i % moe_every != moe_every - 1:
                return None
            return SparseMoE(width, hidden, experts, k, capacity_factor, eval_capacity_factor)

        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, mlp(i)) for i in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(
        self, x: torch.Tensor, pad: torch.Tensor | None, modality: str, bpr: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        valid = None if pad is None else ~pad
        probs: list[torch.Tensor] = []
        for block in self.blocks:
            if isinstance(block.mlp, SparseMoE):
                x, p = block(x, pad, valid=valid, modality=modality, bpr=bpr)
                probs.append(p)
            else:
                x, _ = block(x, pad)
        return self.norm(x), probs


class LIMoEImageTower(Tower, AuxLosses):
    """Patch embedding + learned positions into the shared :class:`LIMoEBody`; mean over patches.
    Holds the regulariser settings of both modalities (the text tower reports to it)."""

    chunking_refusal = _NO_CHUNKS

    def __init__(self, body: LIMoEBody, width: int, patch_size: int, image_size: int, settings: dict) -> None:
        super().__init__()
        self.body = body
        self.patch_size, self.image_size = patch_size, image_size
        self.patch = nn.Conv2d(3, width, patch_size, stride=patch_size)
        grid = image_size // patch_size
        self.pos = nn.Parameter(torch.randn(1, grid * grid, width) * 0.02)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.settings = dict(settings)  # weights, thresholds and BPR flags by modality
        self.output_dim = width

    def run(self, x: torch.Tensor, pad: torch.Tensor | None, modality: str) -> torch.Tensor:
        """The shared transformer on embedded tokens of ``modality``; records its regularisers."""
        hidden, probs = self.body(x, pad, modality, bool(self.settings[f"bpr_{modality}"]))
        if self.training and torch.is_grad_enabled() and probs:
            self._regularise(modality, probs)
        return hidden

    def _regularise(self, modality: str, probs: Sequence[torch.Tensor]) -> None:
        s, tau = self.settings, self.settings[f"tau_{modality}"]
        local = sum(local_entropy(p) for p in probs)
        if tau is None:
            glob = sum(global_entropy(p) for p in probs)
        else:
            glob = sum(thresholded_global_entropy(p, float(tau)) for p in probs)
        self.add_aux_loss(f"limoe/{modality}/local", s["local_weight"] * local)
        self.add_aux_loss(f"limoe/{modality}/global", s["global_weight"] * glob)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise InputError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise InputError(
                f"tower 'limoe' was built for {self.image_size}×{self.image_size} images, got "
                f"{tuple(images.shape[-2:])}: set its params.image_size"
            )
        x = (images.float() - self.mean) / self.std
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.run(tokens, None, "image").mean(1)


class LIMoETextTower(TextTower):
    """Token embedding + learned positions of the text, run through the ``shared_with`` tower's
    transformer (not a submodule here: its weights are registered once, under that tower);
    masked mean over the real tokens."""

    def __init__(self, owner: LIMoEImageTower, tokenizer: Any, max_length: int, shared_with: str) -> None:
        Tower.__init__(self)
        self._owner = (owner,)  # a tuple: not registered as a submodule (no second copy of its weights)
        self.runs_weights_of = shared_with  # (not `shares`: that means "no projection of its own")
        self.tokenizer, self.max_length, self.pooling = tokenizer, max_length, "mean"
        self.pad_id = int(tokenizer.pad_token_id)
        width = owner.output_dim
        self.embed = nn.Embedding(len(tokenizer), width)
        self.pos = nn.Parameter(torch.randn(1, max_length, width) * 0.02)
        self.output_dim = width

    @property
    def owner(self) -> LIMoEImageTower:
        return self._owner[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_token_ids(ids, self.max_length)
        pad = ids == self.pad_id
        hidden = self.owner.run(self.embed(ids) + self.pos[:, : ids.shape[1]], pad, "text")
        m = (~pad).unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return encode(self.tokenizer, texts, self.max_length)

    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder / "tokenizer"))


def _check(params: Mapping[str, Any]) -> str:
    return _NO_CHUNKS


@TOWERS.register("limoe")
@declare_chunking(_check)
def limoe_tower(
    width: PositiveInt = 128,
    depth: PositiveInt = 4,
    heads: PositiveInt = 4,
    mlp_ratio: Positive = 4.0,
    patch_size: PositiveInt = 4,
    image_size: PositiveInt = 32,
    experts: PositiveInt = 8,
    k: PositiveInt = 1,
    capacity_factor: Positive = 1.0,
    eval_capacity_factor: Positive | None = None,
    moe_every: PositiveInt = 2,
    bpr_image: bool = True,
    bpr_text: bool = False,
    local_weight: NonNegative = 0.01,
    global_weight: NonNegative = 0.01,
    tau_image: NonNegative | None = None,
    tau_text: NonNegative | None = None,
    context: TowerContext | None = None,
) -> LIMoEImageTower:
    """LIMoE's image input and its shared sparse-MoE transformer (M-LIMOE; pair with a
    ``limoe_text`` text tower): one transformer for both modalities, top-k routed experts in every
    ``moe_every``-th block, local/global routing-entropy regularisers per modality (``tau_*``:
    thresholded global form). Defaults are UNVERIFIED placeholders, see the module docs."""
    if width % heads:
        raise ConfigError(f"tower 'limoe': width={width} must be a multiple of heads={heads}")
    if image_size % patch_size:
        raise ConfigError(
            f"tower 'limoe': image_size={image_size} must be a multiple of patch_size={patch_size}"
        )
    if k > experts:
        raise ConfigError(f"tower 'limoe': k={k} must be <= experts={experts}")
    if moe_every > depth:
        raise ConfigError(f"tower 'limoe': moe_every={moe_every} > depth={depth} leaves no MoE block")
    body = LIMoEBody(
        width, depth, heads, mlp_ratio, experts, k, capacity_factor, eval_capacity_factor, moe_every
    )
    settings = {
        "bpr_image": bpr_image,
        "bpr_text": bpr_text,
        "local_weight": local_weight,
        "global_weight": global_weight,
        "tau_image": tau_image,
        "tau_text": tau_text,
    }
    return LIMoEImageTower(body, width, patch_size, image_size, settings)


@TOWERS.register("limoe_text")
@declare_chunking(_check)
def limoe_text_tower(
    shared_with: str = "image",
    max_length: PositiveInt = 32,
    vocab_size: PositiveInt = 1000,
    context: TowerContext | None = None,
) -> LIMoETextTower:
    """LIMoE's text input (word tokenizer, token embedding, positions) through the transformer of
    the ``shared_with`` tower (a ``limoe`` tower listed before it): one set of shared weights."""
    owner = shared_owner(context, shared_with, LIMoEImageTower, "limoe_text")
    assert context is not None  # shared_owner found a tower in it
    if context.assets_dir is not None:
        tokenizer = load_tokenizer(context.assets_dir / "tokenizer")
    elif context.texts is not None:
        tokenizer = train_word_tokenizer(context.texts, vocab_size)
    else:
        raise InputError("limoe_text tower needs training texts (fresh run) or an assets folder (saved run)")
    return LIMoETextTower(owner, tokenizer, max_length, shared_with)


limoe_text_tower.shares_weights = True  # type: ignore[attr-defined]  # runs the limoe tower's weights
