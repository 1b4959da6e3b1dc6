"""M-MMP — masked modality projection over per-modality embeddings (spec form, not checked against
the original).

Paper: "MMP: Towards Robust Multi-Modal Learning with Masked Modality Projection" (seed 97); spec
M-MMP [UNVERIFIED: no source was reachable]. The spec works on token sets ``T_m``; contrastkit
applies it to the embeddings a model outputs, one token per modality (``n_a = n_m = 1``), so
``P_{a→m}`` is a token-wise MLP and the cross-attention variant for ``n_a ≠ n_m`` does not arise.

* :class:`MaskedModalityProjection` — one MLP ``P_{a→m}: Linear(d_a, h) → GELU → Linear(h, d_m)``
  per ordered pair ``a ≠ m``. For a masked modality m of row i::

      ê_m,i = mean_{a ≠ m, a available in row i} P_{a→m}(e_a,i)
      align = mean over masked (i, m) whose e_m,i is real of ‖ê_m,i − sg(e_m,i)‖²

  (squared Euclidean norm of the d-vector, averaged over the masked entries). ``complete(emb,
  present)`` fills the truly missing rows with ``ê`` (evaluation; no masking).
* :func:`sample_modality_masks` — each (row, modality) masked with probability ``p_mask``
  (default 0.5), truly missing ones (``present`` False) always; a row left with every modality
  masked is redrawn until one of its present modalities stays (``nonempty=True`` also redraws rows
  with nothing masked — the spec's "non-empty strict subset" reading; off by default so that
  nothing masked gives exactly the inner loss). Masks are per row, drawn from a ``torch.Generator``.
* :class:`MMPLoss` (registry ``mmp``) — in training, masks embeddings with
  :func:`sample_modality_masks`, replaces the masked ones by ``ê``, runs the inner multi-modality
  loss (``inner``, e.g. ``pairwise_clip``, built from the registry) on the result and adds
  ``lambda_align · align`` (λ_align default 1.0). Truly missing rows are always replaced and never
  aligned (there is no target). In eval mode only truly missing rows are replaced. The inner loss
  sees complete embeddings, so it gets no ``present`` field.

Reproducibility: the masks of a call are drawn from a CPU generator seeded with
``(seed · 2654435761 + step) mod 2⁶³``, where ``step`` is the batch field ``step`` when the trainer
passes one, else the loss's own counter of training calls — a buffer (``calls``), so it is saved
in and restored from checkpoints with the loss's state and a resumed run draws the same masks.
Under ``GatherAllLoss`` every rank computes the loss on the global batch with the same counter.

TEST ORACLES (spec): with nothing masked the loss equals the inner loss; the alignment gradient does
not reach the target modality's embedding (stop-gradient). Related: M-MISSING-PROMPTS, M-MULTIMODN
(:mod:`contrastkit.models.fusion`, :mod:`contrastkit.models.multimodn`), the masked ``present``
forms of ``pairwise_clip`` / ``gram`` (:mod:`contrastkit.losses.present`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Fraction, NonNegative, NonNegInt, PositiveInt
from contrastkit.losses.base import LOSSES, MultiLoss
from contrastkit.losses.present import graph_zero, present_masks

__all__ = ["MMPLoss", "MaskedModalityProjection", "mask_seed", "present_matrix", "sample_modality_masks"]

_GOLDEN = 2654435761  # Knuth's multiplicative hash constant: spreads (seed, step) over the seed space


def mask_seed(seed: int, step: int) -> int:
    """The generator seed of ``step``'s masks: ``(seed · 2654435761 + step) mod 2⁶³``."""
    return (int(seed) * _GOLDEN + int(step)) % (1 << 63)


def present_matrix(
    present: Mapping[str, torch.Tensor] | None, modalities: Sequence[str], emb: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The batch field ``present`` as a bool ``[N, M]`` matrix over ``modalities`` (absent key: all
    present), validated (bool ``[N]`` masks naming embeddings of the batch)."""
    n = emb[modalities[0]].shape[0]
    device = emb[modalities[0]].device
    masks = present_masks(present, modalities, emb, "mmp") or [None] * len(modalities)
    cols = []
    for m, mask in zip(modalities, masks):
        if mask is None:
            cols.append(torch.ones(n, dtype=torch.bool, device=device))
        elif not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (n,):
            raise InputError(f"present[{m!r}] must be a bool [N={n}] tensor")
        else:
            cols.append(mask.to(device))
    return torch.stack(cols, dim=1)


def sample_modality_masks(
    present: torch.Tensor, p_mask: float, generator: torch.Generator, *, nonempty: bool = False
) -> torch.Tensor:
    """``masked [N, M]``: True where modality m of row i is masked (see the module docstring).

    ``present`` is ``[N, M]`` bool; every row needs a present modality. Draws ``[N, M]`` uniforms
    from ``generator`` (CPU) per round; a round redraws only the rows that broke the rule."""
    if not 0.0 <= p_mask < 1.0:
        raise ConfigError(f"p_mask must be in [0, 1), got {p_mask}")
    if nonempty and p_mask == 0.0:
        raise ConfigError("nonempty=True needs p_mask > 0 (a row could never get a masked modality)")
    present = present.cpu()
    if present.ndim != 2 or not bool(present.any(1).all()):
        raise InputError("every row needs at least one present modality to predict the others from")
    masked = torch.zeros_like(present)
    redo = torch.ones(present.shape[0], dtype=torch.bool)
    while bool(redo.any()):
        draw = (torch.rand(present.shape, generator=generator) < p_mask) | ~present
        masked = torch.where(redo[:, None], draw, masked)
        redo = masked.all(1)
        if nonempty:  # at least one masked modality (a present one, or the row is already partial)
            redo |= ~masked.any(1) & (present.sum(1) > 1)
    return masked


class MaskedModalityProjection(nn.Module):
    """The projections ``P_{a→m}`` (``proj[m][a]``) between every ordered pair of modalities.

    Args:
        modalities: the M ≥ 2 modality names.
        dim: the embedding dimension of every modality, or ``{modality: dim}``.
        hidden: the MLPs' hidden width (default: the target modality's dimension).
    """

    def __init__(
        self, modalities: Sequence[str], dim: int | Mapping[str, int], hidden: int | None = None
    ) -> None:
        super().__init__()
        mods = tuple(modalities)
        if len(mods) < 2 or len(set(mods)) != len(mods):
            raise ConfigError(f"MMP needs ≥ 2 distinct modalities, got {mods}")
        dims = {m: int(dim[m] if isinstance(dim, Mapping) else dim) for m in mods}
        if min(dims.values()) < 1 or (hidden is not None and hidden < 1):
            raise ConfigError(f"MMP dimensions must be >= 1, got dims {dims}, hidden {hidden}")
        self.modalities = mods
        self.proj = nn.ModuleDict(
            {
                m: nn.ModuleDict(
                    {
                        a: nn.Sequential(
                            nn.Linear(dims[a], hidden or dims[m]),
                            nn.GELU(),
                            nn.Linear(hidden or dims[m], dims[m]),
                        )
                        for a in mods
                        if a != m
                    }
                )
                for m in mods
            }
        )

    def predict(self, emb: Mapping[str, torch.Tensor], available: torch.Tensor, target: str) -> torch.Tensor:
        """``ê_target`` for every row: the mean of ``P_{a→target}(e_a)`` over the available ``a ≠
        target`` (``available [N, M]`` bool); rows without an available source get 0."""
        total, count = None, None
        for j, a in enumerate(self.modalities):
            if a == target:
                continue
            w = available[:, j, None].to(emb[a].dtype)
            term = w * self.proj[target][a](emb[a])
            total = term if total is None else total + term
            count = w if count is None else count + w
        return total / count.clamp(min=1.0)  # type: ignore[operator,union-attr]

    def replace(
        self, emb: Mapping[str, torch.Tensor], masked: torch.Tensor, present: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``(emb′, align)``: ``emb`` with the masked rows of each modality replaced by ``ê`` (other
        keys unchanged), and the alignment term over the masked rows that are present (0 that keeps
        every projection in the graph when there are none)."""
        self._check(emb, masked, present)
        out = dict(emb)
        sq_sum, n_aligned = graph_zero(*self.parameters()), 0
        for j, m in enumerate(self.modalities):
            rows = masked[:, j]
            if not bool(rows.any()):
                continue
            pred = self.predict(emb, ~masked, m)
            out[m] = torch.where(rows[:, None], pred, emb[m])
            aligned = rows & present[:, j]
            # stop-gradient: the target embedding is a constant here; only P and the sources move
            sq_sum = sq_sum + ((pred - emb[m].detach()) ** 2).sum(1)[aligned].sum()
            n_aligned += int(aligned.sum())
        return out, sq_sum / max(n_aligned, 1)

    def complete(
        self, emb: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        """``emb`` with every missing row (``present[m]`` False) replaced by its prediction from the
        modalities present in that row — the inference rule of MMP (for evaluation)."""
        pres = present_matrix(present, self.modalities, emb)
        if not bool(pres.any(1).all()):
            raise InputError("complete: a row has no present modality to predict from")
        return self.replace(emb, ~pres, pres)[0]

    def _check(self, emb: Mapping[str, torch.Tensor], masked: torch.Tensor, present: torch.Tensor) -> None:
        missing = [m for m in self.modalities if m not in emb]
        if missing:
            raise InputError(f"MMP needs embeddings {missing}; the batch has {sorted(emb)}")
        shape = (emb[self.modalities[0]].shape[0], len(self.modalities))
        for name, t in (("masked", masked), ("present", present)):
            if t.dtype != torch.bool or tuple(t.shape) != shape:
                raise InputError(
                    f"MMP {name} must be a bool {list(shape)} tensor, got {t.dtype} {tuple(t.shape)}"
                )


@LOSSES.register("mmp")
class MMPLoss(MultiLoss):
    """MMP around an inner multi-modality loss (see the module docstring).

    Args:
        modalities: the modality keys MMP masks and predicts (≥ 2; e.g. ``[image, text, attributes]``).
        dim: the embedding dimension (``model.embed_dim``).
        inner: the registered ``MultiLoss`` run on the (partly predicted) embeddings.
        inner_params: its constructor parameters.
        p_mask: probability of masking each modality of each row in training (spec 0.5), < 1.
        lambda_align: weight of the alignment term (spec 1.0).
        hidden: hidden width of the projections (default ``dim``).
        seed: seeds the mask generator together with the step.
        nonempty: also redraw rows with no masked modality (spec's "non-empty subset").

    Accepts the batch fields ``present`` and ``step`` (int) plus whatever ``inner`` accepts.
    """

    def __init__(
        self,
        modalities: tuple[str, ...],
        dim: PositiveInt,
        inner: str = "pairwise_clip",
        inner_params: dict[str, Any] | None = None,
        p_mask: Fraction = 0.5,
        lambda_align: NonNegative = 1.0,
        hidden: PositiveInt | None = None,
        seed: NonNegInt = 0,
        nonempty: bool = False,
    ) -> None:
        super().__init__()
        if inner == "mmp":
            raise ConfigError("mmp cannot wrap itself")
        self.inner = LOSSES.build(inner, **(inner_params or {}))
        if not isinstance(self.inner, MultiLoss):
            raise ConfigError(f"mmp needs a multi-modality inner loss (a MultiLoss), got {inner!r}")
        if not 0.0 <= p_mask < 1.0 or lambda_align < 0 or (nonempty and p_mask == 0.0):
            raise ConfigError(
                "mmp: p_mask must be in [0, 1) (> 0 with nonempty) and lambda_align >= 0; "
                f"got p_mask={p_mask}, lambda_align={lambda_align}"
            )
        self.projection = MaskedModalityProjection(modalities, dim, hidden)
        self.modalities = self.projection.modalities
        self.p_mask, self.lambda_align, self.seed, self.nonempty = p_mask, lambda_align, seed, nonempty
        self.accepts = frozenset({"present", "step"}) | (self.inner.accepts - {"present"})  # type: ignore[misc]
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self._last: dict[str, float] = {}

    def masks(self, present: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """The training masks of one call (``step``: the batch field, else the call counter)."""
        gen = torch.Generator().manual_seed(mask_seed(self.seed, int(self.calls) if step is None else step))
        return sample_modality_masks(present, self.p_mask, gen, nonempty=self.nonempty).to(present.device)

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        present = present_matrix(aux.get("present"), self.modalities, emb)
        if not bool(present.any(1).all()):
            raise InputError("mmp: a row has none of the modalities present (nothing to predict from)")
        if self.training:
            step = aux.get("step")
            masked = self.masks(present, None if step is None else int(step))
            self.calls += 1
        else:
            masked = ~present
        filled, align = self.projection.replace(emb, masked, present)
        inner_aux = {k: v for k, v in aux.items() if k in self.inner.accepts and k != "present"}
        value = self.inner(filled, **inner_aux)
        self._last = {
            "inner": float(value.detach()),
            "align": float(align.detach()),
            "masked": float(masked.float().mean()),
        }
        return value + self.lambda_align * align

    def complete(
        self, emb: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        """:meth:`MaskedModalityProjection.complete` (fill missing rows with predictions)."""
        return self.projection.complete(emb, present)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.inner.after_optimizer_step()

    def log_values(self) -> dict[str, float]:
        return {**{f"mmp/{k}": v for k, v in self._last.items()}, **self.inner.log_values()}
