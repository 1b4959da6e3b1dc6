"""Cross-entropy of each image against the text embeddings of every class's prompt (``class_prompts``).

What: CoOp's objective (Zhou et al. 2022, "Learning to Prompt for Vision-Language Models"): the
text tower embeds one prompt per class of the task, ``[V]_1 … [V]_M <class name>.`` (the learnable
context of ``model.towers.text.prompt`` in front of ``template.format(class name)``), and each
image is classified against those K embeddings by cosine similarity times the logit scale::

    p(y = k | x_i) = exp(s · cos(x_i, w_k)) / Σ_j exp(s · cos(x_i, w_j))
    loss = mean over the rows i with a class (0 ≤ y_i < K) of  −log p(y_i | x_i)

``x``: the batch's image embeddings ``[N, D]``; ``w``: the class prompts' text embeddings ``[K, D]``
(batch key ``classes``, encoded by the trainer every step from the class names of
``data.label_task``, so the gradient reaches the context through all K prompts); ``y``: the batch
``labels``. Rows whose label is not a class of the task (another task's rows, label ≥ K or < 0) are
left out; a batch with none is an error. ``s = exp(log_scale)``: learnable like CLIP's when
``learnable`` (init ``1/init_temperature``, clamped to [0, ln max_scale] after each step); CoOp
keeps CLIP's trained scale fixed, which is ``learnable: false`` with ``init_temperature`` set to the
source run's ``1/logit_scale``. Logged: ``logit_scale``. Dense. Across processes the image rows and
labels are gathered (:class:`~contrastkit.scale.gather_all.GatherAllLoss`) and the class prompts,
encoded on every rank, are not (``shared_inputs``), so the loss is the global batch's. Related:
L-CLIP (the same logits with the batch's captions as the classes),
:mod:`contrastkit.models.prompts`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_embeddings
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive
from contrastkit.losses.base import LOSSES, MaxScale, MultiLoss, learnable_log_scale

__all__ = ["CLASSES_KEY", "ClassPromptLoss", "class_prompt_loss"]

CLASSES_KEY = "classes"  # the embeddings of the K class prompts, one row per class


def class_prompt_loss(
    x: torch.Tensor, classes: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """Mean cross-entropy of ``scale · cos(x_i, classes_k)`` against ``labels`` over the rows whose
    label is a class (``0 ≤ y < K``). ``x [N, D]``, ``classes [K, D]``, ``labels [N]`` integers."""
    check_embeddings("x", x)
    check_embeddings("classes", classes)
    if x.shape[1] != classes.shape[1]:
        raise InputError(f"x has {x.shape[1]} dimensions, classes {classes.shape[1]}")
    if labels.ndim != 1 or labels.shape[0] != x.shape[0] or labels.is_floating_point():
        raise InputError(
            f"labels must be integers of shape [{x.shape[0]}], got {tuple(labels.shape)} {labels.dtype}"
        )
    known = (labels >= 0) & (labels < classes.shape[0])
    if not bool(known.any()):
        raise InputError(f"no row of the batch has a label among the {classes.shape[0]} classes")
    logits = scale * F.normalize(x[known], dim=-1) @ F.normalize(classes, dim=-1).T
    return F.cross_entropy(logits, labels[known].long())


@LOSSES.register("class_prompts")
class ClassPromptLoss(MultiLoss):
    """CoOp's cross-entropy over the class prompts (see the module docstring).

    Args:
        template: each class's text, ``{}`` for its name (``"{}."``: CoOp's "[V]… [CLASS].").
        init_temperature: 1 / the initial logit scale (0.07). learnable: learn the scale (default).
        max_scale: clamp bound of the scale (100), as ``clip``.
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"labels"})
    inputs: ClassVar[tuple[str, ...] | None] = ("image", CLASSES_KEY)
    shared_inputs: ClassVar[tuple[str, ...]] = (CLASSES_KEY,)  # every rank encodes all K prompts
    reads_class_prompts: ClassVar[bool] = True

    def __init__(
        self,
        template: str = "{}.",
        init_temperature: Positive = 0.07,
        learnable: bool = True,
        max_scale: MaxScale = 100.0,
    ) -> None:
        super().__init__()
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ConfigError(f"class_prompts template must be a text with one '{{}}', got {template!r}")
        self.template = template
        self.log_scale, self.max_log_scale = learnable_log_scale(init_temperature, max_scale, learnable)

    def prompts(self, classnames: list[str]) -> list[str]:
        """The texts the trainer encodes as ``classes``: the template filled with each class name."""
        return [self.template.format(c) for c in classnames]

    def forward(
        self, emb: dict[str, torch.Tensor], labels: torch.Tensor | None = None, **aux: Any
    ) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        missing = [k for k in ("image", CLASSES_KEY) if k not in emb]
        if missing:
            raise InputError(
                f"class_prompts needs embeddings {missing} (the trainer adds {CLASSES_KEY!r} from "
                f"data.label_task's class names); got {sorted(emb)}"
            )
        if labels is None:
            raise InputError("class_prompts needs the batch labels (data.label_task)")
        return class_prompt_loss(emb["image"].float(), emb[CLASSES_KEY].float(), labels, self.log_scale.exp())

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.log_scale.clamp_(0.0, self.max_log_scale)

    def log_values(self) -> dict[str, float]:
        return {"logit_scale": float(self.log_scale.detach().exp())}
