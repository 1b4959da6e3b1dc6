"""L-COCONUT — continual contrastive training with rehearsal: main loss + NSC + multimodal term.

Paper: Cappellazzo et al. 2024, "Continual Contrastive Spoken Language
Understanding" (COCONUT). Spec form, UNVERIFIED: no public code; every number is a parameter.
Here the main loss is an image–text pair loss (CLIP by default) standing in for the paper's
sequence-to-sequence loss, and the "previous-task model" is the frozen model of the previous stage
of a continual run (:mod:`contrastkit.train.continual`), whose image features of the batch's
rehearsal rows the trainer passes as ``"image:teacher"``.

On a batch of current-task rows ``C`` and rehearsal rows ``R`` (batch field ``rehearsal``), with
L2-normalised student features ``s`` (image tower, this model), teacher features ``t`` (the
previous stage's, no gradient), texts ``u`` and class labels ``y``::

    L = L_main(s, u)  [all rows]  +  λ_nsc · L_nsc(s_R, t_R, y_R)  +  λ_mm · L_mm(s_C, u_C, y_C)

* **NSC** (:func:`nsc_loss`) — SupCon's L_out with the rehearsal rows as the only anchors and the
  teacher's features of the rehearsal rows as the contrast set: for ``i ∈ R``,
  ``P(i) = {p ∈ R: y_p = y_i}`` (``i`` itself included: its own teacher feature is a positive),
  ``q_ia = s_i·t_a/τ`` (τ = 0.1), ``ℓ_i = LSE_{a∈R} q_ia − mean_{p∈P(i)} q_ip``; ``L_nsc`` = the mean
  over ``R``. ``negatives="student"`` (the other reading of "negative-student contrastive"): the
  denominator runs over the teacher positives and the *student* features of the other classes'
  rehearsal rows, ``LSE({q_ip}_{p∈P(i)} ∪ {s_i·s_a/τ}_{a∈R, y_a≠y_i})``. An empty ``R`` (no memory,
  the first stage) gives exactly 0; the teacher features never get a gradient (detached).
* **Multimodal term** (:func:`multimodal_supcon_loss`) — a supervised image–text contrast on the
  current rows: ``q_ij = s_i·u_j/τ_mm`` (τ_mm = 0.1), positives of image ``i`` = the texts of its
  class, ``ℓ^{i→t}_i = LSE_j q_ij − mean_{j: y_j=y_i} q_ij``, the same from the texts, averaged
  over anchors and the two directions. Without labels it is CLIP at the fixed temperature τ_mm.

Defaults λ_nsc = λ_mm = 0.1. Shapes: ``s, t, u: [N, d]``, ``y: [N]`` ints, ``rehearsal: [N]`` bool.
One process (the rehearsal rows are not gathered across ranks). Related: L-SUPCON, L-CLIP,
D-REHEARSAL (the batches), T-CONTINUAL (the stage loop).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive
from contrastkit.losses.base import LOSSES, MultiLoss, PairLoss, as_float

__all__ = ["TEACHER_KEY", "CoconutLoss", "multimodal_supcon_loss", "nsc_loss"]

TEACHER_KEY = "image:teacher"  # the embedding key of the previous stage's features (the trainer's)


def _groups(labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    if labels is None:
        return torch.arange(n, device=device)
    if labels.shape != (n,) or labels.is_floating_point():
        raise InputError(f"labels must be integers of shape [{n}], got {labels.dtype} {tuple(labels.shape)}")
    return labels.to(device)


def nsc_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 0.1,
    negatives: Literal["teacher", "student"] = "teacher",
) -> torch.Tensor:
    """NSC over the rehearsal rows: ``student [m, d]`` anchors against ``teacher [m, d]`` (module
    docstring); ``labels [m]`` (``None``: each row's only positive is its own teacher feature).
    ``m = 0`` gives exactly 0 (with a graph to ``student``)."""
    if student.shape != teacher.shape or student.ndim != 2:
        raise InputError(
            f"student and teacher must be [m, d] alike, got {tuple(student.shape)}, {tuple(teacher.shape)}"
        )
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if negatives not in ("teacher", "student"):
        raise ConfigError(f"negatives must be 'teacher' or 'student', got {negatives!r}")
    m = student.shape[0]
    if m == 0:
        return as_float(student).sum() * 0.0  # no memory: nothing to keep
    s = F.normalize(as_float(student), dim=-1)
    t = F.normalize(as_float(teacher).detach(), dim=-1).to(s.dtype)  # the frozen teacher: no gradient
    g = _groups(labels, m, s.device)
    pos = g[:, None] == g[None, :]  # P(i), i itself included
    q = s @ t.T / temperature
    if negatives == "teacher":
        lse = q.logsumexp(1)
    else:
        own = (s @ s.T / temperature).masked_fill(pos, float("-inf"))  # other classes' student rows
        lse = torch.cat([q.masked_fill(~pos, float("-inf")), own], 1).logsumexp(1)
    return (lse - torch.where(pos, q, 0.0).sum(1) / pos.sum(1)).mean()


def multimodal_supcon_loss(
    image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor | None = None, temperature: float = 0.1
) -> torch.Tensor:
    """Supervised image–text contrast (module docstring); no rows give exactly 0."""
    if image.shape != text.shape or image.ndim != 2:
        raise InputError(
            f"image and text must be [n, d] alike, got {tuple(image.shape)}, {tuple(text.shape)}"
        )
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    n = image.shape[0]
    if n == 0:
        return (as_float(image).sum() + as_float(text).sum()) * 0.0
    x = F.normalize(as_float(image), dim=-1)
    y = F.normalize(as_float(text), dim=-1).to(x.dtype)
    g = _groups(labels, n, x.device)
    pos = g[:, None] == g[None, :]  # symmetric: the same sets for both directions
    q = x @ y.T / temperature
    n_pos = pos.sum(1)
    i2t = q.logsumexp(1) - torch.where(pos, q, 0.0).sum(1) / n_pos
    t2i = q.T.logsumexp(1) - torch.where(pos, q.T, 0.0).sum(1) / n_pos
    return (i2t.mean() + t2i.mean()) / 2


@LOSSES.register("coconut")
class CoconutLoss(MultiLoss):
    """``L_main + λ_nsc·L_nsc + λ_mm·L_mm`` (module docstring); uses ``labels`` and ``rehearsal``.

    Args:
        main: registry name of the image–text pair loss on all rows (``"clip"``). main_params: its
            parameters. image_text: the two embedding keys (``("image", "text")``).
        nsc_weight: λ_nsc (0.1). mm_weight: λ_mm (0.1). nsc_temperature: τ (0.1).
        mm_temperature: τ_mm (0.1). nsc_negatives: ``"teacher"`` (default) or ``"student"``.
        teacher_key: the previous stage's features (``"image:teacher"``, added by the trainer).
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"labels", "rehearsal"})

    def __init__(
        self,
        main: str = "clip",
        main_params: dict[str, Any] | None = None,
        nsc_weight: NonNegative = 0.1,
        mm_weight: NonNegative = 0.1,
        nsc_temperature: Positive = 0.1,
        mm_temperature: Positive = 0.1,
        nsc_negatives: Literal["teacher", "student"] = "teacher",
        image_text: tuple[str, str] = ("image", "text"),
        teacher_key: str = TEACHER_KEY,
    ) -> None:
        super().__init__()
        self.main: PairLoss = LOSSES.build(main, **(main_params or {}))
        if isinstance(self.main, MultiLoss):
            raise ConfigError(f"coconut's main loss must be a pair loss (two embeddings), {main!r} is not")
        if nsc_negatives not in ("teacher", "student"):
            raise ConfigError(f"nsc_negatives must be 'teacher' or 'student', got {nsc_negatives!r}")
        self.label, self.image_text, self.teacher_key = main, tuple(image_text), teacher_key
        self.nsc_weight, self.mm_weight = float(nsc_weight), float(mm_weight)
        self.nsc_temperature, self.mm_temperature = float(nsc_temperature), float(mm_temperature)
        self.nsc_negatives = nsc_negatives
        # the class declares its own fields; an instance also takes its main loss's
        self.accepts = frozenset(self.main.accepts) | type(self).accepts  # type: ignore[misc]
        self._last: dict[str, float] = {}

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        x, u = (emb[k] for k in self.image_text)
        labels, rehearsal = aux.get("labels"), aux.get("rehearsal")
        main = self.main(x, u, **{k: v for k, v in aux.items() if k in self.main.accepts and v is not None})
        reh = torch.zeros(len(x), dtype=torch.bool, device=x.device) if rehearsal is None else rehearsal
        if reh.shape != (len(x),) or reh.dtype != torch.bool:
            raise InputError(
                f"rehearsal must be a bool [{len(x)}] batch field, got {reh.dtype} {tuple(reh.shape)}"
            )
        reh = reh.to(x.device)
        if bool(reh.any()) and self.teacher_key not in emb:
            raise InputError(
                f"coconut: the batch has rehearsal rows but no teacher features {self.teacher_key!r}; "
                "train it as a stage of a continual run (continual.method: coconut)"
            )
        sub = lambda v, rows: None if v is None else v[rows]  # noqa: E731
        teacher = emb.get(self.teacher_key, x.detach())
        nsc = nsc_loss(x[reh], teacher[reh], sub(labels, reh), self.nsc_temperature, self.nsc_negatives)
        cur = ~reh
        mm = multimodal_supcon_loss(x[cur], u[cur], sub(labels, cur), self.mm_temperature)
        self._last = {f"loss/{self.label}": float(main.detach()), "loss/nsc": float(nsc.detach()),
                      "loss/mm": float(mm.detach())}  # fmt: skip
        return main + self.nsc_weight * nsc + self.mm_weight * mm

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.main.after_optimizer_step()

    def log_values(self) -> dict[str, float]:
        return {**self._last, **self.main.log_values()}  # the main loss's scale keeps its key
