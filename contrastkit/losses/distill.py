"""Distillation from a frozen teacher's embeddings of the same batch (``distill``).

What: a student is trained on the inputs its teacher sees, towards the teacher's embeddings
(feature distillation, as when SparseFormers are bootstrapped from CLIP — Gao et al. 2023,
"Bootstrapping SparseFormers from Vision Foundation Models" — or cross-model CLIP distillation).
The trainer puts the teacher's embeddings of the step's batch in the batch fields ``teacher_x`` /
``teacher_y`` (``model.teacher: <run folder>``, :mod:`contrastkit.train.distill`); this loss reads
them. Forms (``form``), on L2-normalised rows ``x̂`` (``normalize``, default):

* ``kl`` — the teacher's and the student's image–text similarity distributions over the batch:
  ``P = softmax_row(t̂x t̂yᵀ/τ_t)``, ``Q = softmax_row(x̂ ŷᵀ/τ)``, ``KL(P‖Q) = mean_i Σ_j P_ij (log P_ij −
  log Q_ij)``; ``symmetric`` (default) averages it with the column (text→image) direction. τ = 0.07,
  τ_t = τ unless set; no τ² factor. Any embedding widths (only the N×N matrices meet).
* ``mse`` — ``mean_i ‖x̂_i − t̂x_i‖²`` (squared error summed over the dimensions), the mean of the
  image and text terms (``on``: ``both``, ``x`` or ``y``); the widths must match.
* ``cosine`` — ``mean_i (1 − cos(x_i, t̂x_i))``, combined as ``mse``.

The teacher's rows never carry gradient (detached). Exactness: tested against a naive float64 loop;
teacher = student ⇒ every form is 0 with zero gradient. N = 1 is fine for the feature forms; ``kl``
needs N ≥ 2. Dense only (no tiled form); one process. Combine with a contrastive term:
``loss: {terms: {clip: 1.0, distill: {weight: 1.0, params: {form: kl}}}}``.
Related: :mod:`contrastkit.losses.self_distill` (SigLIP 2's EMA self-distillation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive
from contrastkit.losses.base import LOSSES, PairLoss, as_float

__all__ = ["DISTILL_FIELDS", "DistillLoss", "distill_loss"]

DISTILL_FIELDS = ("teacher_x", "teacher_y")
"""The batch fields holding the teacher's embeddings of the batch's x and y (the pair's modalities)."""

FORMS = ("kl", "mse", "cosine")


def _check(form: str, on: str, temperature: float, teacher_temperature: float | None) -> None:
    if form not in FORMS:
        raise ConfigError(f"distill form must be one of {list(FORMS)}, got {form!r}")
    if on not in ("both", "x", "y"):
        raise ConfigError(f"distill on must be both, x or y, got {on!r}")
    for name, t in (("temperature", temperature), ("teacher_temperature", teacher_temperature)):
        if t is not None and not 0 < t < float("inf"):
            raise ConfigError(f"distill {name} must be > 0 and finite, got {t}")


def _kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """``mean_i KL(softmax(p_i) ‖ softmax(q_i))``."""
    log_p, log_q = p_logits.log_softmax(1), q_logits.log_softmax(1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


def distill_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    teacher_x: torch.Tensor | None = None,
    teacher_y: torch.Tensor | None = None,
    *,
    form: Literal["kl", "mse", "cosine"] = "kl",
    temperature: float = 0.07,
    teacher_temperature: float | None = None,
    symmetric: bool = True,
    on: Literal["both", "x", "y"] = "both",
    normalize: bool = True,
) -> torch.Tensor:
    """The student's ``x``, ``y`` ``[N, d]`` against the teacher's ``teacher_x``, ``teacher_y`` ``[N, d_t]``
    of the same N pairs (see the module docstring for the forms). Returns a 0-d tensor."""
    _check(form, on, temperature, teacher_temperature)
    check_pair(x, y)
    if teacher_x is None or teacher_y is None:
        raise InputError(
            "distill needs the teacher's embeddings (batch fields teacher_x, teacher_y): set model.teacher"
        )
    check_pair(teacher_x, teacher_y)
    if teacher_x.shape[0] != x.shape[0]:
        raise InputError(f"the teacher embedded {teacher_x.shape[0]} pairs, the student {x.shape[0]}")
    x, y = as_float(x), as_float(y)
    tx, ty = (as_float(t).detach().to(x.dtype) for t in (teacher_x, teacher_y))
    if normalize:
        x, y, tx, ty = (F.normalize(t, dim=-1) for t in (x, y, tx, ty))
    if form == "kl":
        if x.shape[0] < 2:
            raise InputError("distill form kl compares similarity distributions over the batch: N >= 2")
        s = x @ y.T / temperature
        t = tx @ ty.T / (teacher_temperature or temperature)
        rows = _kl_rows(t, s)
        return 0.5 * (rows + _kl_rows(t.T, s.T)) if symmetric else rows
    pairs = {"x": [(x, tx)], "y": [(y, ty)], "both": [(x, tx), (y, ty)]}[on]
    terms = []
    for a, b in pairs:
        if a.shape[1] != b.shape[1]:
            raise InputError(
                f"distill form {form} compares features: the student's width {a.shape[1]} must equal the "
                f"teacher's {b.shape[1]} (give the student model.embed_dim {b.shape[1]}, or use form kl)"
            )
        if form == "mse":
            terms.append((a - b).pow(2).sum(1).mean())
        else:
            terms.append((1 - F.cosine_similarity(a, b, dim=1)).mean())
    return torch.stack(terms).mean()


@LOSSES.register("distill")
class DistillLoss(PairLoss):
    """Module form of :func:`distill_loss`; reads the batch fields ``teacher_x``, ``teacher_y`` that
    the trainer fills from ``model.teacher``. No learnable parameters.

    Args:
        form: ``"kl"`` (similarity distributions, default), ``"mse"`` or ``"cosine"`` (features).
        temperature: τ of the student's similarities (and the teacher's unless teacher_temperature).
        teacher_temperature: τ_t of the teacher's similarities (default: τ).
        symmetric: ``kl`` in both directions (default) or image→text only.
        on: feature forms: ``"both"`` (default), ``"x"`` (image) or ``"y"`` (text) embeddings.
        normalize: L2-normalise every row first (default).
    """

    accepts: ClassVar[frozenset[str]] = frozenset(DISTILL_FIELDS)

    def __init__(
        self,
        form: Literal["kl", "mse", "cosine"] = "kl",
        temperature: Positive = 0.07,
        teacher_temperature: Positive | None = None,
        symmetric: bool = True,
        on: Literal["both", "x", "y"] = "both",
        normalize: bool = True,
    ) -> None:
        super().__init__()
        _check(form, on, float(temperature), teacher_temperature)
        self.form, self.temperature, self.teacher_temperature = form, float(temperature), teacher_temperature
        self.symmetric, self.on, self.normalize = symmetric, on, normalize

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        return distill_loss, {
            "form": self.form,
            "temperature": self.temperature,
            "teacher_temperature": self.teacher_temperature,
            "symmetric": self.symmetric,
            "on": self.on,
            "normalize": self.normalize,
        }
