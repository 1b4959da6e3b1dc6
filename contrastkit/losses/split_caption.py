"""Contrastive + captioning from one split text tower (COSMO): the ``split_caption`` loss.

Paper: Wang et al. 2024, "COSMO: COntrastive Streamlined MultimOdal Model with Interleaved
Pre-Training" (the LM's lower layers give the contrastive text feature, its upper, image-attending
layers the language-modelling loss). Loss weights are this library's spec form (UNVERIFIED): both
1, configurable.

Formula (the pure function is L-COCA's :func:`~contrastkit.losses.generative.coca_loss`), with the
model's embeddings ``x = emb["image"]``, ``y = emb["text"]`` and caption logits
``Z = emb["caption_logits"] [N, L−1, V]`` (model ``split_text``), token ids ``t = text_ids``::

    L_cap = mean over (i, k) with t[i, k+1] ≠ pad of −log softmax(Z[i, k])[t[i, k+1]]
    split_caption = λ_con · L-CLIP(x, y; s) + λ_cap · L_cap

Unlike ``coca`` the decoder is not in the loss: it is the text tower's upper half in the model,
cross-attending to the image tokens, so the loss holds only CLIP's logit scale (init 1/0.07, clamp
100). A :class:`~contrastkit.losses.base.MultiLoss`: it reads the model's output mapping; the
trainer passes ``text_ids`` (the caption ids). Missing logits (a model without a ``split_text``
tower, or ``scale.chunk_size``, which encodes towers separately) is an error saying so.
Tiled / distributed: dense only (no ``pure()`` over two embeddings).
Related: L-COCA, L-CLIP.
"""

from __future__ import annotations

from typing import Any

import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, NonNegInt, Positive
from contrastkit.losses.base import LOSSES, MaxScale, MultiLoss, learnable_log_scale
from contrastkit.losses.generative import clip_plus_caption

__all__ = ["LOGITS_KEY", "SplitCaptionLoss"]

LOGITS_KEY = "caption_logits"  # the split_text model's output key (contrastkit.models.split_text)


@LOSSES.register("split_caption")
class SplitCaptionLoss(MultiLoss):
    """COSMO: CLIP on the model's (image, text) embeddings + token cross-entropy of its caption
    logits, ``λ_con · clip + λ_cap · caption`` (:func:`~contrastkit.losses.generative.coca_loss`).

    Args: lambda_con (1), lambda_cap (1), pad_id (0: contrastkit's word tokenizer), init_temperature
    (0.07), learnable, max_scale (100), normalize, allow_single.
    Logs ``loss/contrastive``, ``loss/caption`` (unweighted) and ``logit_scale``.
    """

    accepts = frozenset({"text_ids"})
    inputs = ("image", "text", LOGITS_KEY)

    def __init__(
        self,
        lambda_con: NonNegative = 1.0,
        lambda_cap: NonNegative = 1.0,
        pad_id: NonNegInt = 0,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
        normalize: bool = True,
        allow_single: bool = False,
    ) -> None:
        super().__init__()
        if lambda_con == lambda_cap == 0:
            raise ConfigError("split_caption: lambda_con and lambda_cap are both 0; nothing to train")
        self.lambda_con, self.lambda_cap, self.pad_id = float(lambda_con), float(lambda_cap), int(pad_id)
        self.log_scale, self.max_log_scale = learnable_log_scale(init_temperature, max_scale, learnable)
        self.normalize, self.allow_single = normalize, allow_single
        self._last: dict[str, float] = {}

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        if LOGITS_KEY not in emb:
            raise InputError(
                "split_caption needs the model's caption logits: a model with a 'split_text' text tower, "
                "trained without scale.chunk_size (gradient caching encodes the towers separately)"
            )
        x, y, logits = self.select(emb)
        ids = aux.get("text_ids")
        if self.lambda_cap and ids is None:
            raise InputError("split_caption needs the batch field text_ids [N, L] (caption token ids)")
        return clip_plus_caption(self, x, y, logits, ids)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.log_scale.clamp_(0.0, self.max_log_scale)

    def log_values(self) -> dict[str, float]:
        return {"logit_scale": float(self.log_scale.detach().exp()), **self._last}
