"""Mixup contrastive losses at embedding level: L-M3COL (MixCo → SoftCLIP) and L-METRIX.

Both mix rows of one modality's embeddings, ``x̃_i = λ_i x_i + (1 − λ_i) x_{p(i)}``. With
``normalize=True`` the rows are L2-normalised *before* mixing (so ``λ`` is the share of each
direction whatever the embedding norms) and the mixture is normalised again (the loss sees a unit
vector, as if an encoder had produced it); with ``normalize=False`` raw rows are mixed and used as is.
The papers mix raw inputs before the encoder; mixing embeddings is the cheap form that needs no
second forward pass through the model ("Metrix/embed"; for M3CoL it is our choice of level).

Randomness (permutations, β/λ draws, negatives) is drawn by the modules from a ``torch.Generator``
they hold, reseeded at every call from ``(seed, step)`` where ``step`` is a buffer advanced by
:meth:`after_optimizer_step`: a step's draws are the same on every call and after a resume. The pure
functions take the draws as arguments, so they are deterministic.

Tiled / distributed: dense only (``TiledLoss`` and ``GatherLoss`` dispatch on clip/siglip only);
for several devices gather the embeddings first and call the module once.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from contrastkit.core.checks import check_finite, check_pair
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegative, Positive, PositiveInt, Probability
from contrastkit.losses.base import LOSSES, PairLoss, maybe_normalize

__all__ = [
    "M3CoLLoss",
    "MetrixLoss",
    "metrix_loss",
    "mix_rows",
    "mixco_loss",
    "mixco_targets",
    "softclip_loss",
]


def mix_rows(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor, normalize: bool) -> torch.Tensor:
    """``x̃_i = λ_i x_i + (1 − λ_i) x_{partner[i]}`` (normalised before and after when ``normalize``)."""
    x = maybe_normalize(x, normalize)
    lam = lam.to(x.dtype)[:, None]
    mixed = lam * x + (1 - lam) * x[partner]
    return F.normalize(mixed, dim=-1) if normalize else mixed


def _check_draws(n: int, lam: torch.Tensor, index: torch.Tensor, what: str) -> None:
    if lam.shape != (n,) or not lam.is_floating_point():
        raise InputError(f"lam must be a float tensor of shape [N]=[{n}], got {tuple(lam.shape)}")
    check_finite("lam", lam)
    if bool(((lam < 0) | (lam > 1)).any()):
        raise InputError("lam must lie in [0, 1]")
    if index.shape != (n,) or index.dtype != torch.long:
        raise InputError(f"{what} must be a LongTensor of shape [N]=[{n}], got {tuple(index.shape)}")
    if bool(((index < 0) | (index >= n)).any()):
        raise InputError(f"{what} holds indices outside [0, {n})")


def _single(n: int, allow_single: bool, name: str) -> None:
    if n == 1 and not allow_single:
        raise InputError(
            f"{name} got a batch of 1 pair: with no negatives the loss is identically 0; "
            "pass allow_single=True if that is intended"
        )


def mixco_targets(perm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The dense MixCo target matrix ``T`` (``[N, N]``, for inspection and tests; the loss gathers
    instead): ``T_ii += λ_i``, ``T_{i,π(i)} += 1 − λ_i``, so each row sums to 1 even when π(i) = i."""
    n = lam.shape[0]
    t = torch.zeros(n, n, dtype=lam.dtype, device=lam.device)
    rows = torch.arange(n, device=lam.device)
    t[rows, rows] += lam
    t.index_put_((rows, perm), 1 - lam, accumulate=True)
    return t


def mixco_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    perm: torch.Tensor,
    lam: torch.Tensor,
    *,
    temperature: float = 0.1,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """MixCo phase of L-M3COL: x rows mixed with a permutation, soft bidirectional InfoNCE.

    ``a_i = mix(x_i, x_{π(i)}; λ_i)`` (see :func:`mix_rows`), ``b_j = y_j``, ``L = a bᵀ/τ``::

        loss = −½ (1/N) Σ_ij T_ij [log softmax_j(L)_ij + log softmax_i(L)_ij]

    with ``T`` from :func:`mixco_targets` (two gathers, no dense target matrix).

    Args:
        x: ``[N, d]`` modality-A embeddings (the mixed one); y: ``[N, d]`` modality-B embeddings.
        perm: ``[N]`` permutation π. lam: ``[N]`` weights in [0, 1] (``β_i`` if row i is mixed, else 1).
        temperature: τ (M3CoL: 0.1). normalize: see the module docstring.
        allow_single: accept N = 1 (the loss is then exactly 0).
    """
    check_pair(x, y)
    n = x.shape[0]
    _check_draws(n, lam, perm, "perm")
    if not torch.equal(perm.sort().values, torch.arange(n, device=perm.device)):
        raise InputError("perm must be a permutation of 0..N-1")
    _single(n, allow_single, "mixco_loss")
    a = mix_rows(x, perm, lam, normalize)
    b = maybe_normalize(y, normalize).to(a.dtype)
    logits = (a @ b.T) / temperature
    rows = torch.arange(n, device=x.device)
    lam = lam.to(a.dtype)
    total = 0.0
    for logp in (logits.log_softmax(1), logits.log_softmax(0)):  # image→text rows, text→image columns
        total = total + (lam * logp[rows, rows] + (1 - lam) * logp[rows, perm]).sum()
    return -0.5 * total / n


def softclip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    temperature: float = 0.125,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """SoftCLIP phase of L-M3COL: targets from modality B's own similarity structure.

    ``P = softmax_row(y yᵀ/τ′)``, ``loss = ½ [CE_soft(x yᵀ/τ′, P) + CE_soft(y xᵀ/τ′, P)]`` with
    ``CE_soft(L, P) = −(1/N) Σ_ij P_ij log softmax_j(L)_ij``. Gradients flow through ``P`` too (no
    stop-gradient, as in the reference ``soft_clip_loss``). τ′ = 0.125.
    """
    check_pair(x, y)
    _single(x.shape[0], allow_single, "softclip_loss")
    a = maybe_normalize(x, normalize)
    b = maybe_normalize(y, normalize).to(a.dtype)
    logits = (a @ b.T) / temperature
    target = ((b @ b.T) / temperature).softmax(1)
    n = x.shape[0]
    rows = -(target * logits.log_softmax(1)).sum() / n
    cols = -(target * logits.T.log_softmax(1)).sum() / n
    return 0.5 * (rows + cols)


class _Seeded(PairLoss):
    """A loss that draws per-step randomness from a generator it holds (see module docstring)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = int(seed)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._gen = torch.Generator()

    def _generator(self) -> torch.Generator:
        # draws on CPU (N numbers) so they do not depend on the device
        return self._gen.manual_seed((self.seed * 1_000_003 + int(self.step)) % (2**63))

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.step += 1


def _beta(n: int, alpha: float, gen: torch.Generator) -> torch.Tensor:
    """``n`` draws of Beta(α, α) via a 2-component Dirichlet (what torch.distributions.Beta does,
    but with our generator; robust for α < 1 where gamma draws underflow)."""
    conc = torch.full((n, 2), float(alpha), dtype=torch.float64)
    return torch._sample_dirichlet(conc, generator=gen)[:, 0]


@LOSSES.register("m3col")
class M3CoLLoss(_Seeded):
    """L-M3COL — MixCo for the first ``mixup_pct`` of training, SoftCLIP afterwards.

    Spec id: L-M3COL (verified against RaghavSinghal10/M3CoL). Paper: Kumar et al. 2024,
    "Harnessing Shared Relations via Multimodal Mixup Contrastive Learning for Multimodal
    Classification". Formulas: :func:`mixco_loss` (x mixed, β ~ Beta(0.15, 0.15) selected with
    probability 0.5, else λ = 1; targets with "+=") and :func:`softclip_loss`. Phase: ``phase``
    fixes it; ``None`` uses MixCo while ``step < int(mixup_pct · total_steps)`` (the paper counts
    epochs; we count optimizer steps — set ``total_steps`` to the run's ``train.steps``; the default
    800 is contrastkit's default). Skipped (guarded) steps do not advance ``step``. M3CoL adds this
    loss with weight λ = 0.1 to supervised losses; here it is the whole objective unless composed.

    Shapes ``[N, d]`` → scalar; N = 1 is an error unless ``allow_single``. Dense only.
    Related: L-CLIP (all λ = 1), L-METRIX.
    """

    def __init__(
        self,
        temperature: Positive = 0.1,
        soft_temperature: Positive = 0.125,
        beta_alpha: Positive = 0.15,
        select_prob: Probability = 0.5,
        mixup_pct: Probability = 0.33,
        total_steps: PositiveInt = 800,
        phase: Literal["mixco", "softclip"] | None = None,
        seed: int = 0,
        normalize: bool = True,
        allow_single: bool = False,
    ) -> None:
        super().__init__(seed)
        if not (temperature > 0 and soft_temperature > 0 and beta_alpha > 0):
            raise ConfigError("m3col: temperature, soft_temperature and beta_alpha must be > 0")
        if not (0 <= select_prob <= 1 and 0 <= mixup_pct <= 1):
            raise ConfigError("m3col: select_prob and mixup_pct must lie in [0, 1]")
        if total_steps < 1:
            raise ConfigError(f"m3col: total_steps must be >= 1, got {total_steps}")
        if phase not in (None, "mixco", "softclip"):
            raise ConfigError(f"m3col: phase must be 'mixco', 'softclip' or None, got {phase!r}")
        self.temperature, self.soft_temperature = float(temperature), float(soft_temperature)
        self.beta_alpha, self.select_prob = float(beta_alpha), float(select_prob)
        self.mixup_steps = int(mixup_pct * total_steps)
        self.phase, self.normalize, self.allow_single = phase, normalize, allow_single

    def current_phase(self) -> str:
        if self.phase is not None:
            return self.phase
        return "mixco" if int(self.step) < self.mixup_steps else "softclip"

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's ``(perm, lam)`` for a batch of ``n`` (CPU; same on every call of a step)."""
        gen = self._generator()
        perm = torch.randperm(n, generator=gen)
        beta = _beta(n, self.beta_alpha, gen)
        select = torch.rand(n, generator=gen, dtype=torch.float64) < self.select_prob
        return perm, torch.where(select, beta, torch.ones_like(beta))

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        kw = {"normalize": self.normalize, "allow_single": self.allow_single}
        if self.current_phase() == "softclip":
            return softclip_loss(x, y, temperature=self.soft_temperature, **kw)
        check_pair(x, y)
        perm, lam = self.draw(x.shape[0])
        perm, lam = perm.to(x.device), lam.to(x.device)
        return mixco_loss(x, y, perm, lam, temperature=self.temperature, **kw)

    def log_values(self) -> dict[str, float]:
        return {"m3col_mixco": float(self.current_phase() == "mixco")}


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_i −Σ_j t_ij log softmax_j(L)_ij`` with ``t`` the row-normalised ``target``; rows with
    no target mass are left out of the mean (none exist unless some λ is exactly 0)."""
    mass = target.sum(1)
    valid = mass > 0
    t = target / mass.clamp_min(torch.finfo(target.dtype).tiny)[:, None]
    per_row = -(t * logits.log_softmax(1)).sum(1)
    return per_row[valid].sum() / valid.sum().clamp_min(1)


def _labels_or_none(labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
    if labels is None:
        return None
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point():
        raise InputError(f"labels must be an integer tensor of shape [N]=[{n}]")
    return labels


def metrix_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    lam: torch.Tensor,
    neg: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 0.1,
    weight: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """L-METRIX over a multi-positive InfoNCE: ``L = L_clean + w · L_mix``.

    Positivity ``P_ij = [labels_i = labels_j]`` (``P = I`` without labels). Base loss, symmetric::

        CE_soft(L, T) = mean_i −Σ_j (T_ij / Σ_j T_ij) log softmax_j(L)_ij
        L_clean = ½ [CE_soft(x yᵀ/τ, P) + CE_soft(y xᵀ/τ, P)]

    Mixed examples (embedding level, :func:`mix_rows`): ``ỹ_k = mix(y_k, y_{neg[k]}; λ_k)`` — a
    positive of anchor k (its own pair) and a negative — and ``x̃_k`` likewise. Interpolated
    positivity of ``ỹ_k`` for anchor i: ``Y_ik = λ_k P_ik + (1 − λ_k) P_{i,neg[k]}`` (= λ_k for the
    anchor k itself). ``L_mix = ½ [CE_soft(x ỹᵀ/τ, Y) + CE_soft(y x̃ᵀ/τ, Y)]`` (mixed examples only,
    as in the spec's ``ℓ̃``). With λ ≡ 1 and no labels, ``L_clean = L_mix = clip_loss(s = 1/τ)``.

    Args:
        x: ``[N, d]`` embeddings (N ≥ 2).
        y: ``[N, d]`` embeddings paired with the rows of ``x``.
        lam: ``[N]`` mixing weights in [0, 1].
        neg: ``[N]`` index of the negative mixed into row k (not checked to be a negative).
        labels: optional ``[N]`` class ids (several positives per anchor).
        temperature: τ (our choice, 0.1). weight: w (1.0). normalize: see module docstring.
    """
    check_pair(x, y)
    n = x.shape[0]
    if n < 2:
        raise InputError("metrix_loss needs N >= 2: each anchor mixes a positive with a negative")
    _check_draws(n, lam, neg, "neg")
    labels = _labels_or_none(labels, n)
    xn = maybe_normalize(x, normalize)
    yn = maybe_normalize(y, normalize).to(xn.dtype)
    if labels is None:
        pos = torch.eye(n, dtype=xn.dtype, device=xn.device)
    else:
        pos = (labels[:, None] == labels[None, :]).to(xn.dtype)
    lam = lam.to(xn.dtype)
    clean = 0.5 * (_soft_ce(xn @ yn.T / temperature, pos) + _soft_ce(yn @ xn.T / temperature, pos))
    mixed_t = pos * lam[None, :] + pos[:, neg] * (1 - lam)[None, :]
    ym, xm = mix_rows(yn, neg, lam, normalize), mix_rows(xn, neg, lam, normalize)
    mix = 0.5 * (_soft_ce(xn @ ym.T / temperature, mixed_t) + _soft_ce(yn @ xm.T / temperature, mixed_t))
    return clean + weight * mix


@LOSSES.register("metrix")
class MetrixLoss(_Seeded):
    """L-METRIX — "It Takes Two to Tango: Mixup for Deep Metric Learning" (Venkataramanan et al.
    2022), embedding-level form over a multi-positive InfoNCE (:func:`metrix_loss`).

    Spec id: L-METRIX [PARTIAL]: spec form, not checked against the original code. Our choices:
    base loss = soft-target InfoNCE (symmetric), τ = 0.1 fixed, one mixed example per anchor made
    from its own pair and one negative drawn uniformly (from the other labels when ``labels`` are
    given; a row with no negative is left unmixed, λ = 1), λ ~ Beta(α, α) per row, α = 2, w = 1.
    Optional ``labels [N]`` (accepted batch field). N ≥ 2. Dense only. Related: L-M3COL, L-SUPCON.
    """

    accepts = frozenset({"labels"})

    def __init__(
        self,
        alpha: Positive = 2.0,
        weight: NonNegative = 1.0,
        temperature: Positive = 0.1,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__(seed)
        if not (alpha > 0 and temperature > 0 and weight >= 0):
            raise ConfigError("metrix: alpha and temperature must be > 0, weight >= 0")
        self.alpha, self.weight, self.temperature = float(alpha), float(weight), float(temperature)
        self.normalize = normalize

    def draw(self, n: int, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's ``(lam, neg)`` for a batch of ``n`` (CPU; same on every call of a step)."""
        if n < 2:
            raise InputError("metrix needs N >= 2: each anchor mixes a positive with a negative")
        gen = self._generator()
        lam = _beta(n, self.alpha, gen)
        rows = torch.arange(n)
        if labels is None:  # uniform over j != k without an N×N mask
            return lam, (rows + torch.randint(1, n, (n,), generator=gen)) % n
        lab = labels.cpu()
        mask = lab[:, None] != lab[None, :]
        lonely = ~mask.any(1)
        mask[rows[lonely], rows[lonely]] = True  # no negative: "mix" with itself at λ = 1
        lam[lonely] = 1.0
        return lam, torch.multinomial(mask.double(), 1, generator=gen)[:, 0]

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        check_pair(x, y)
        labels = _labels_or_none(aux.get("labels"), x.shape[0])
        lam, neg = self.draw(x.shape[0], labels)
        return metrix_loss(
            x,
            y,
            lam.to(x.device),
            neg.to(x.device),
            labels,
            temperature=self.temperature,
            weight=self.weight,
            normalize=self.normalize,
        )
