"""SupCon over prompt-template text views of each class, plus CLIP (``supcon_text_views``).

What: after Jian et al. 2022, "Contrastive Learning for Prompt-Based Few-Shot Language Learners"
(LM-SupCon: views of an input from different templates and demonstrations, SupCon over the views with
the class as the label, added to the task loss). The views are the batch keys ``text@0 … text@{K−1}``
of ``data.text_views`` (:mod:`contrastkit.data.text_views`), encoded by the text tower; the labels
are the batch ``labels`` of ``data.label_task``. Formula::

    loss = w_supcon · L-SUPCON(z = [t@0; …; t@{K−1} (; image)], labels repeated per view)
         + w_clip · L-CLIP(image, text)

SupCon is :func:`~contrastkit.losses.supcon.supcon_loss` in its single-view form over the K·N rows
(anchor mode "all": every row is an anchor, its positives are every other row of its class — the
other views of its own row and all views of other rows of the class); ``include_image`` adds the
images as N more rows with their labels. The CLIP term keeps the image–text pairing trained (CLIP's
learnable scale: init 1/0.07, clamped to [0, ln 100] after each step); ``clip_weight: 0`` drops it.
Logged: ``loss/supcon``, ``loss/clip``, ``logit_scale``. Dense only, one process.
Related: L-SUPCON, L-CLIP.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive
from contrastkit.losses.base import LOSSES, LossConfig, MaxScale, MultiLoss, learnable_log_scale
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.supcon import supcon_loss

__all__ = ["SupConTextViews", "check_text_view_loss", "text_view_keys"]

_VIEW = re.compile(r"^text@(\d+)$")


def text_view_keys(emb: dict[str, torch.Tensor]) -> list[str]:
    """The ``text@k`` keys of ``emb`` in view order."""
    return sorted((k for k in emb if _VIEW.match(k)), key=lambda k: int(k[5:]))


@LOSSES.register("supcon_text_views")
class SupConTextViews(MultiLoss):
    """SupCon over the text views ``text@k`` (and optionally the images) with the batch ``labels``,
    plus ``clip_weight`` × CLIP on (image, text).

    Args:
        temperature: SupCon's τ (0.1). variant: ``"out"`` (default) or ``"in"``.
        supcon_weight: weight of the SupCon term (1). clip_weight: weight of the CLIP term (1; 0 = off).
        include_image: the image embeddings join SupCon's rows with their labels (default off).
        init_temperature: CLIP's initial τ (0.07). learnable: learn its scale (default).
        max_scale: clamp bound of the scale (100), as ``clip``.
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"labels"})
    reads_text_views: ClassVar[bool] = True

    def __init__(
        self,
        temperature: Positive = 0.1,
        variant: Literal["out", "in"] = "out",
        supcon_weight: float = 1.0,
        clip_weight: float = 1.0,
        include_image: bool = False,
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
    ) -> None:
        super().__init__()
        for name, w in (("supcon_weight", supcon_weight), ("clip_weight", clip_weight)):
            if not 0 <= w < float("inf"):
                raise ConfigError(f"supcon_text_views {name} must be finite and >= 0, got {w}")
        if variant not in ("out", "in"):
            raise ConfigError(f"variant must be 'out' or 'in', got {variant!r}")
        self.temperature, self.variant = float(temperature), variant
        self.supcon_weight, self.clip_weight, self.include_image = supcon_weight, clip_weight, include_image
        self.log_scale, self.max_log_scale = learnable_log_scale(init_temperature, max_scale, learnable)
        self._last: dict[str, float] = {}

    def forward(
        self, emb: dict[str, torch.Tensor], labels: torch.Tensor | None = None, **aux: Any
    ) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        keys = text_view_keys(emb)
        if not keys:
            raise InputError(
                f"supcon_text_views needs text views text@0 … (data.text_views); got {sorted(emb)}"
            )
        if labels is None:
            raise InputError("supcon_text_views needs the batch labels (data.label_task)")
        rows = [emb[k] for k in keys] + ([emb["image"]] if self.include_image else [])
        z = torch.cat([r.float() for r in rows])
        sup = supcon_loss(z, None, self.temperature, labels=labels.repeat(len(rows)), variant=self.variant)
        total = self.supcon_weight * sup
        self._last = {"loss/supcon": float(sup.detach())}
        if self.clip_weight:
            missing = [k for k in ("image", "text") if k not in emb]
            if missing:
                raise InputError(
                    f"supcon_text_views' CLIP term needs {missing}; set clip_weight: 0 without them"
                )
            clip = clip_loss(emb["image"].float(), emb["text"].float(), self.log_scale.exp())
            total = total + self.clip_weight * clip
            self._last["loss/clip"] = float(clip.detach())
        return total

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.log_scale.clamp_(0.0, self.max_log_scale)

    def log_values(self) -> dict[str, float]:
        return {**self._last, "logit_scale": float(self.log_scale.detach().exp())}


def check_text_view_loss(loss: LossConfig, text_views: bool) -> None:
    """A loss that reads text views needs ``data.text_views``, and ``data.text_views`` a loss that
    reads them (the views would be encoded every step for nothing)."""
    names = list(loss.terms) or [loss.name]
    reads = any(getattr(LOSSES.get(n), "reads_text_views", False) for n in names if n in LOSSES.names())
    if reads and loss.terms:
        raise ConfigError(
            "supcon_text_views is a loss of its own (with its CLIP term), not a term: loss.name"
        )
    if reads and not text_views:
        raise ConfigError(
            "loss supcon_text_views needs text views: set data.text_views (and data.label_task)"
        )
    if text_views and not reads:
        raise ConfigError(
            f"data.text_views is set but loss {names} does not read text views: use supcon_text_views"
        )
