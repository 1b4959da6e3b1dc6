"""R-SIGLIP2-SD — SigLIP 2's local-to-global self-distillation added to the image–text loss.

Paper: Tschannen et al. 2025, "SigLIP 2" (seed 104), building on SILC and TIPS. No training code
for these terms was reachable: spec form, UNVERIFIED, every number configurable.

Setting (keys of docs/architecture.md): the teacher is the model's momentum (EMA) encoder of the
image tower (``model.momentum: {modalities: [image], m: 0.996, start: S}``; ``start`` keeps it
frozen and makes it a copy of the student at step S, :mod:`contrastkit.models.momentum`). The
student sees *local* views (``local_views``, default ``image@0``, ``image@1``: ``data.views`` with
small crops, e.g. ``data.augment.crop_scale: [0.05, 0.4]``), the teacher *global* ones
(``global_views``, default ``image:ema`` = the full image; ``image@v:ema`` for global crops). Both
go through a head onto K unit prototypes — the student's ``C_S`` learned, the teacher's ``C_T`` its
EMA (``head_momentum``), cosine scores of the L2-normalised embeddings::

    p_s = softmax(ê_s C_Sᵀ / τ_s)      q_g = softmax((ê_g C_Tᵀ − c) / τ_t)      (q: no gradient)
    L_sd = mean_{local s, global g} mean_i −Σ_k q_g,ik log p_s,ik
    L = λ_it · contrastive(image, text) + λ_sd · L_sd          (contrastive: siglip on the full image)

The centre ``c`` (a buffer) is the EMA of the teacher's batch-mean scores, updated in training mode
before it is used (``c ← m_c·c + (1 − m_c)·mean``; with m_c = 0 the batch-mean centred teacher
score is exactly 0 — DINO updates after use, a one-step difference). Defaults (spec, as recalled):
τ_s = 0.1, τ_t = 0.04, m_c = 0.9, m = 0.996 (teacher encoder, set in the model), λ_sd = 1; K = 1024
is our choice (the spec gives none). Before ``start_step`` optimizer steps the term is exactly 0,
no head is run, and the teacher head stays a copy of the student head (copied at step
``start_step``; the spec's start is 80% of training: set both starts to ``0.8·train.steps``).
Not implemented: TIPS masked prediction (needs patch tokens the towers do not output), DINO's
3-layer head MLP (the head here is the prototype layer alone).

Logged: ``loss/<contrastive>``, ``loss/self_distillation`` (unweighted), the contrastive loss's
scalars. Dense only; several processes: ``GatherAllLoss`` (global centre, exact). TEST ORACLES:
the term equals the formula on known inputs (float64), the teacher side gets no gradient, 0 before
the start, centring with m_c = 0 makes the batch-mean teacher score 0. Related: L-SIGLIP, L-BYOL.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, NonNegInt, Positive, PositiveInt, Probability
from contrastkit.losses import siglip  # noqa: F401  (registers the default contrastive term)
from contrastkit.losses.base import LOSSES, MultiLoss, PairLoss

__all__ = ["SigLIP2SelfDistillLoss", "self_distillation_loss"]


def self_distillation_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    center: torch.Tensor | None = None,
    *,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> torch.Tensor:
    """``mean_{s, g} mean_i CE(softmax((t_g − c)/τ_t), softmax(s_s/τ_s))`` over score matrices [N, K]
    (the teacher side detached)."""
    if not student or not teacher:
        raise InputError("self-distillation needs at least one student and one teacher view")
    shape = student[0].shape
    if any(t.shape != shape for t in (*student, *teacher)) or len(shape) != 2:
        raise InputError(
            "student and teacher scores must all be [N, K]; got "
            f"{[tuple(t.shape) for t in (*student, *teacher)]}"
        )
    if not (student_temperature > 0 and teacher_temperature > 0):
        raise ConfigError("student_temperature and teacher_temperature must be > 0")
    c = 0.0 if center is None else center.detach()
    targets = [((t.detach() - c) / teacher_temperature).softmax(1) for t in teacher]
    total = 0.0
    for s in student:
        logp = (s / student_temperature).log_softmax(1)
        for q in targets:
            total = total - (q.to(logp.dtype) * logp).sum(1).mean()
    return total / (len(student) * len(teacher))  # type: ignore[return-value]


def _two(keys: Sequence[str], name: str) -> tuple[str, str]:
    keys = tuple(keys)
    if len(keys) != 2:
        raise ConfigError(f"{name} must name exactly 2 embedding keys, got {list(keys)}")
    return keys  # type: ignore[return-value]


@LOSSES.register("siglip2_sd")
class SigLIP2SelfDistillLoss(MultiLoss):
    """``λ_it · contrastive(image, text) + λ_sd · L_sd`` (module docstring).

    Args:
        contrastive: registry name of the image–text pair loss (``"siglip"``). contrastive_params:
            its parameters. image_text: its two keys (``("image", "text")``).
        local_views: student keys (augmented local crops). global_views: teacher keys (``:ema``).
        sd_weight: λ_sd (1.0). image_text_weight: λ_it (1.0). prototypes: K (1024).
        student_temperature: τ_s (0.1). teacher_temperature: τ_t (0.04).
        center_momentum: m_c (0.9). head_momentum: EMA of the teacher head (0.996).
        start_step: optimizer steps before the term starts (0). dim: embedding width (None: lazy).
    """

    def __init__(
        self,
        contrastive: str = "siglip",
        contrastive_params: dict[str, Any] | None = None,
        image_text: Sequence[str] = ("image", "text"),
        local_views: Sequence[str] = ("image@0", "image@1"),
        global_views: Sequence[str] = ("image:ema",),
        sd_weight: NonNegative = 1.0,
        image_text_weight: NonNegative = 1.0,
        prototypes: PositiveInt = 1024,
        student_temperature: Positive = 0.1,
        teacher_temperature: Positive = 0.04,
        center_momentum: Probability = 0.9,
        head_momentum: Probability = 0.996,
        start_step: NonNegInt = 0,
        dim: PositiveInt | None = None,
    ) -> None:
        super().__init__()
        self.contrastive: PairLoss = LOSSES.build(contrastive, **(contrastive_params or {}))
        if isinstance(self.contrastive, MultiLoss):
            raise ConfigError(f"contrastive must be a pair loss (two embeddings), {contrastive!r} is not")
        self.label = contrastive
        self.image_text = _two(image_text, "image_text")
        self.local_views, self.global_views = tuple(local_views), tuple(global_views)
        if not self.local_views or not self.global_views:
            raise ConfigError("siglip2_sd needs at least one local (student) and one global (teacher) view")
        if prototypes < 1 or (dim is not None and dim < 1) or start_step < 0:
            raise ConfigError(
                f"prototypes and dim must be >= 1 and start_step >= 0, got {prototypes}, {dim}, {start_step}"
            )
        if not (student_temperature > 0 and teacher_temperature > 0):
            raise ConfigError("student_temperature and teacher_temperature must be > 0")
        if not (0 <= center_momentum <= 1 and 0 <= head_momentum <= 1):
            raise ConfigError("center_momentum and head_momentum must lie in [0, 1]")
        self.weights = {"image_text": float(image_text_weight), "sd": float(sd_weight)}
        self.student_temperature, self.teacher_temperature = (
            float(student_temperature),
            float(teacher_temperature),
        )
        self.center_momentum, self.head_momentum = float(center_momentum), float(head_momentum)
        self.start_step = int(start_step)
        if dim is None:  # lazy: sized on the first batch (the teacher's weight is never trained)
            self.student_head: nn.Module = nn.LazyLinear(prototypes, bias=False)
            self.teacher_head: nn.Module = nn.LazyLinear(prototypes, bias=False)
            self.teacher_head.weight = nn.UninitializedParameter(requires_grad=False)
        else:
            self.student_head = nn.Linear(dim, prototypes, bias=False)
            self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(prototypes))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.inputs = tuple(dict.fromkeys(self.image_text + self.local_views + self.global_views))
        self._last: dict[str, float] = {}

    @property
    def accepts(self) -> frozenset[str]:  # type: ignore[override]
        return self.contrastive.accepts

    def active(self) -> bool:
        return int(self.step) >= self.start_step

    @torch.no_grad()
    def _materialize(self, e: torch.Tensor) -> None:
        """Size lazy heads on the first batch (even before the start: optimizers, snapshots and
        checkpoints need real tensors) and make the teacher head a copy of the student's."""
        if isinstance(self.student_head, nn.LazyLinear):
            self.student_head(e[:1].to(self.student_head.weight.dtype))
            self.teacher_head(e[:1].to(self.teacher_head.weight.dtype))
            self.teacher_head.weight.copy_(self.student_head.weight)

    def _scores(self, head: nn.Module, e: torch.Tensor) -> torch.Tensor:
        w = F.normalize(head.weight, dim=-1).to(e.dtype)  # unit prototypes: cosine scores
        return F.normalize(e, dim=-1) @ w.T

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        self.select(emb)  # every key present, or an error naming the missing ones
        self._materialize(emb[self.local_views[0]])
        x, y = (emb[k] for k in self.image_text)
        it = self.contrastive(x, y, **{k: v for k, v in aux.items() if v is not None})
        self._last = {f"loss/{self.label}": float(it.detach()), "loss/self_distillation": 0.0}
        total = self.weights["image_text"] * it
        if not self.active():  # exactly the contrastive loss: no head runs, the centre stays
            return total
        student = [self._scores(self.student_head, emb[k]) for k in self.local_views]
        with torch.no_grad():
            teacher = [self._scores(self.teacher_head, emb[k].detach()) for k in self.global_views]
            if self.training:  # centre first, then use it (with m_c = 0: batch-mean score exactly 0)
                mean = torch.cat(teacher).mean(0).to(self.center.dtype)
                self.center.mul_(self.center_momentum).add_(mean, alpha=1.0 - self.center_momentum)
        sd = self_distillation_loss(
            student,
            teacher,
            self.center.to(teacher[0].dtype),
            student_temperature=self.student_temperature,
            teacher_temperature=self.teacher_temperature,
        )
        self._last["loss/self_distillation"] = float(sd.detach())
        return total + self.weights["sd"] * sd

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.contrastive.after_optimizer_step()
        t = int(self.step)  # the optimizer step just taken; as model.momentum with start = start_step:
        m = 1.0 if t < self.start_step - 1 else 0.0 if t == self.start_step - 1 else self.head_momentum
        if m < 1.0 and not isinstance(self.student_head, nn.LazyLinear):
            w = self.teacher_head.weight
            w.mul_(m).add_(self.student_head.weight, alpha=1.0 - m)
        self.step += 1

    def log_values(self) -> dict[str, float]:
        own = {f"{self.label}/{k}": v for k, v in self.contrastive.log_values().items()}
        return {**self._last, **own}
