"""R-OGM-GE — on-the-fly gradient modulation across modality towers (+ Gaussian enhancement).

What: after the backward pass (and the cross-rank gradient average), before clipping and the
optimizer step, the gradient of every parameter of modality u's tower + projection is rescaled by
a coefficient ``k_u`` computed from this step's per-modality scores, so a dominant modality learns
more slowly (Peng et al. CVPR 2022, "Balanced Multimodal Learning via On-the-fly Gradient
Modulation"; Kontras et al. 2024, "Improving Multimodal Learning with Multi-Loss Gradient
Modulation", seed 82).

Scores. The reference reads per-modality logits from slices of a fused classifier head; a
contrastive dual encoder has none, so contrastkit measures each modality alone with a
parameter-free head: the **leave-one-out nearest class mean** over the batch's ``labels``
(``data.label_task``). For modality u with unit embeddings ``z_i`` and labels ``y_i``::

    μ_c^(−i) = normalise(Σ_{j≠i, y_j=c} z_j)      ℓ_ic = z_i·μ_c^(−i) / τ     (classes with members)
    score_u  = Σ_{i valid} softmax_c(ℓ_i)[y_i]                               (a sum, as the reference)

Rows with a negative label, or whose class has no other member in the batch, are not valid (the
same rows for every modality). Embeddings are detached; across ranks the sums are all-reduced so
every rank applies the same coefficients.

Coefficients (:func:`ogm_ge_coefficients`, exactly two modalities a, v — paper Eq. 10)::

    ρ_v = (score_v + ε)/(score_a + ε),  ρ_a = 1/ρ_v       (ε = 1e-8 guards a zero score)
    ρ_v > 1:  k_v = 1 − tanh(α·ρ_v), k_a = 1;   else  k_a = 1 − tanh(α·ρ_a), k_v = 1

Multi-loss variant (:func:`multi_loss_coefficients`, M ≥ 2 modalities; spec form, UNVERIFIED)::

    ρ_u = (score_u + ε)/(mean_{w≠u} score_w + ε),  k_u = clip(1 − tanh(α(ρ_u − 1)), k_min, k_max)
    k_u ← 1 + (k_u − 1)·γ(t)        γ = 1 (constant), 1 − t/T (linear) or ½(1 + cos πt/T) (cosine)

Application (:func:`scale_gradients`): ``g ← k_u·g`` (OGM) or ``g ← k_u·g + ε``,
``ε ~ N(0, (std(g) + 1e-8)²)`` elementwise, std over that tensor's gradient before scaling, for
both modalities (OGM-GE; a one-element gradient gets std 0). Noise is drawn from a generator
seeded by ``(seed, step)``: the same on every rank and after a resume. Only steps
``start ≤ step ≤ end`` (0-based optimizer steps, inclusive; the reference counts epochs 0–50) are
modulated; outside, gradients are untouched bit for bit. ``only_conv_kernels`` modulates only 4-d
weights, as the reference does.

Exactness: the coefficients are the spec's formulas in float64 (tested against hand values,
ρ_v = 2, α = 0.5 ⇒ k_v = 1 − tanh 1 = 0.238406). Not implemented: the multi-loss variant's extra
uni-modal loss terms (the contrastive objective already trains every tower). Related: the trainer
calls :func:`modulate` (docs/recipes.md); ``train.modulation`` in :mod:`contrastkit.train.config`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.train.distributed import DistContext, all_mean

__all__ = [
    "GradientModulator",
    "ModulationConfig",
    "check_modulation",
    "class_mean_scores",
    "decay_factor",
    "modality_parameters",
    "modulate",
    "multi_loss_coefficients",
    "ogm_ge_coefficients",
    "scale_gradients",
]

METHODS = ("ogm_ge", "multi_loss")
DECAYS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class ModulationConfig:
    """``train.modulation``: per-tower gradient scales from per-modality scores (R-OGM-GE).

    ``alpha`` has no default (the reference requires it). ``method``: ``ogm_ge`` (two modalities,
    only the dominant one slowed) or ``multi_loss`` (any number, k on both sides of 1, clipped to
    ``[k_min, k_max]``, faded by ``decay``). ``noise``: add the Gaussian enhancement (GE).
    ``modalities``: the towers modulated (default: every tower of the model). ``start``/``end``:
    the modulated optimizer steps (inclusive; ``end`` null = to the end). ``temperature``: τ of the
    class-mean scores."""

    alpha: float | None = None  # required: the reference has no default
    method: Literal["ogm_ge", "multi_loss"] = "ogm_ge"
    noise: bool = True
    modalities: tuple[str, ...] | None = None
    start: int = 0
    end: int | None = None
    only_conv_kernels: bool = False
    temperature: float = 0.1
    k_min: float = 0.0
    k_max: float = 2.0
    decay: Literal["constant", "linear", "cosine"] = "constant"

    def __post_init__(self) -> None:
        if self.alpha is None:
            raise ConfigError("train.modulation.alpha is required (the strength α; OGM-GE has no default)")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"train.modulation.alpha must be finite and > 0, got {self.alpha}")
        if self.method not in METHODS:
            raise ConfigError(f"train.modulation.method must be one of {list(METHODS)}, got {self.method!r}")
        if self.decay not in DECAYS:
            raise ConfigError(f"train.modulation.decay must be one of {list(DECAYS)}, got {self.decay!r}")
        for name in ("noise", "only_conv_kernels"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"train.modulation.{name} must be true or false, got {getattr(self, name)!r}"
                )
        if self.start < 0 or (self.end is not None and self.end < self.start):
            raise ConfigError(
                f"train.modulation needs 0 <= start <= end, got start={self.start}, end={self.end}"
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"train.modulation.temperature must be > 0, got {self.temperature}")
        if not (0 <= self.k_min <= 1 <= self.k_max and math.isfinite(self.k_max)):
            raise ConfigError(
                f"train.modulation needs 0 <= k_min <= 1 <= k_max (finite), got [{self.k_min}, {self.k_max}]"
            )
        if self.modalities is not None:
            if len(set(self.modalities)) != len(self.modalities) or len(self.modalities) < 2:
                raise ConfigError(
                    "train.modulation.modalities must name at least 2 distinct towers, "
                    f"got {list(self.modalities)}"
                )
            if self.method == "ogm_ge" and len(self.modalities) != 2:
                raise ConfigError(
                    f"train.modulation method ogm_ge is defined for exactly 2 modalities, got "
                    f"{list(self.modalities)}; use method: multi_loss for more"
                )

    def active(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) is modulated."""
        return self.start <= step and (self.end is None or step <= self.end)


def check_modulation(cfg: ModulationConfig, towers: Sequence[str], label_task: str | None) -> None:
    """Config-time checks against the run: the modalities are towers, OGM-GE has two, labels exist."""
    mods = tuple(cfg.modalities) if cfg.modalities is not None else tuple(towers)
    unknown = [m for m in mods if m not in towers]
    if unknown:
        raise ConfigError(f"train.modulation.modalities {unknown} are not model towers {list(towers)}")
    if cfg.method == "ogm_ge" and len(mods) != 2:
        raise ConfigError(
            f"train.modulation method ogm_ge needs exactly 2 modalities; the model has {list(mods)} "
            "(set train.modulation.modalities, or method: multi_loss)"
        )
    if label_task is None:
        raise ConfigError(
            "train.modulation scores each modality by its class-mean accuracy on the batch labels: "
            "set data.label_task (e.g. shape+color)"
        )


def ogm_ge_coefficients(
    score_a: float, score_v: float, alpha: float, eps: float = 1e-8
) -> tuple[float, float]:
    """``(k_a, k_v)`` of OGM-GE (paper Eq. 10) from the two modalities' summed scores."""
    if score_a < 0 or score_v < 0 or not (math.isfinite(score_a) and math.isfinite(score_v)):
        raise InputError(f"scores must be finite and >= 0, got {score_a}, {score_v}")
    ratio_v = (score_v + eps) / (score_a + eps)
    if ratio_v > 1:
        return 1.0, 1.0 - math.tanh(alpha * ratio_v)
    return 1.0 - math.tanh(alpha / ratio_v), 1.0


def decay_factor(decay: str, step: int, total_steps: int) -> float:
    """γ(t) of the multi-loss variant: 1, ``1 − t/T`` or ``½(1 + cos πt/T)`` (t clamped to [0, T])."""
    if decay == "constant":
        return 1.0
    t = min(1.0, max(0.0, step / max(1, total_steps)))
    if decay == "linear":
        return 1.0 - t
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise InputError(f"unknown decay {decay!r}; available: {list(DECAYS)}")


def multi_loss_coefficients(
    scores: Mapping[str, float],
    alpha: float,
    k_min: float = 0.0,
    k_max: float = 2.0,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> dict[str, float]:
    """``{u: k_u}`` of the multi-loss variant: ``1 − tanh(α(ρ_u − 1))`` clipped, then faded by γ."""
    if len(scores) < 2:
        raise InputError(f"multi-loss modulation needs at least 2 modalities, got {list(scores)}")
    if any(v < 0 or not math.isfinite(v) for v in scores.values()):
        raise InputError(f"scores must be finite and >= 0, got {dict(scores)}")
    out = {}
    for u, s in scores.items():
        others = [v for w, v in scores.items() if w != u]
        ratio = (s + eps) / (sum(others) / len(others) + eps)
        k = min(k_max, max(k_min, 1.0 - math.tanh(alpha * (ratio - 1.0))))
        out[u] = 1.0 + (k - 1.0) * gamma
    return out


def class_mean_scores(
    emb: Mapping[str, torch.Tensor], labels: torch.Tensor, temperature: float = 0.1
) -> tuple[dict[str, float], int]:
    """``({u: score_u}, n_valid)``: summed leave-one-out class-mean probabilities of the true label.

    With unit rows, ``z_i·normalise(S_c − δ_ic z_i) = (z_i·S_c − δ_ic)/‖S_c − δ_ic z_i‖`` and
    ``‖S_c − z_i‖² = ‖S_c‖² − 2 z_i·S_c + 1``: one [N, C] product, no [N, C, d] tensor."""
    labels = labels.reshape(-1).long()
    known = labels >= 0
    classes, inv = torch.unique(labels[known], return_inverse=True)
    counts = torch.bincount(inv, minlength=len(classes))
    valid = known.clone()
    valid[known] = counts[inv] > 1  # a class alone in the batch has no other member to predict it
    own = inv[counts[inv] > 1]  # class index of each valid row
    out: dict[str, float] = {}
    for u, x in emb.items():
        if x.ndim != 2 or x.shape[0] != labels.shape[0]:
            raise InputError(
                f"embeddings {u!r} have shape {tuple(x.shape)}; labels have {labels.shape[0]} rows"
            )
        if not bool(valid.any()):
            out[u] = 0.0
            continue
        z = F.normalize(x.detach().double(), dim=-1)
        sums = torch.zeros(len(classes), z.shape[1], dtype=z.dtype, device=z.device).index_add_(
            0, inv, z[known]
        )
        dots = z[valid] @ sums.T  # [n_valid, C]
        delta = F.one_hot(own, len(classes)).to(z.dtype)
        norm2 = (sums.pow(2).sum(1)[None, :] - 2 * delta * dots + delta).clamp_min(1e-24)
        logits = (dots - delta) / norm2.sqrt() / temperature
        out[u] = float(logits.softmax(1).gather(1, own[:, None]).sum())
    return out, int(valid.sum())


def modality_parameters(
    model: nn.Module, modality: str, only_conv_kernels: bool = False
) -> Iterator[nn.Parameter]:
    """Parameters of ``model.towers[modality]`` and ``model.projections[modality]`` (if any)."""
    towers, projections = getattr(model, "towers", None), getattr(model, "projections", None)
    if towers is None or modality not in towers:
        raise InputError(f"model has no tower {modality!r}")
    modules = [towers[modality]] + (
        [projections[modality]] if projections is not None and modality in projections else []
    )
    for module in modules:
        for p in module.parameters():
            if not only_conv_kernels or p.ndim == 4:
                yield p


@torch.no_grad()
def scale_gradients(
    model: nn.Module,
    coefficients: Mapping[str, float],
    noise: bool,
    generator: torch.Generator | None = None,
    only_conv_kernels: bool = False,
) -> None:
    """``g ← k_u·g`` (+ ``N(0, (std g + 1e-8)²)`` noise when ``noise``) on each modality's parameters."""
    for u, k in coefficients.items():
        for p in modality_parameters(model, u, only_conv_kernels):
            g = p.grad
            if g is None:
                continue
            if noise:
                std = float(g.std()) if g.numel() > 1 else 0.0  # the reference: grad.std().item() + 1e-8
                gen = generator
                if gen is not None and gen.device != g.device:
                    raise InputError(f"noise generator is on {gen.device}, gradients on {g.device}")
                eps = torch.randn(g.shape, generator=gen, dtype=g.dtype, device=g.device)
                g.mul_(k).add_(eps, alpha=std + 1e-8)
            elif k != 1.0:
                g.mul_(k)


class GradientModulator:
    """What the trainer calls after the backward pass: scores → coefficients → scaled gradients.

    ``__call__`` returns ``{"modulation/<modality>": k_u, "modulation/score/<modality>": mean
    score}`` for logging (coefficients 1 outside the window, where nothing is touched)."""

    def __init__(self, cfg: ModulationConfig, modalities: Sequence[str], seed: int = 0) -> None:
        self.cfg = cfg
        self.modalities = tuple(cfg.modalities) if cfg.modalities is not None else tuple(modalities)
        if cfg.method == "ogm_ge" and len(self.modalities) != 2:
            raise ConfigError(f"ogm_ge modulation needs exactly 2 modalities, got {list(self.modalities)}")
        self.seed = int(seed)

    def coefficients(self, scores: Mapping[str, float], step: int, total_steps: int) -> dict[str, float]:
        c = self.cfg
        if c.method == "ogm_ge":
            a, v = self.modalities
            k_a, k_v = ogm_ge_coefficients(scores[a], scores[v], float(c.alpha))  # type: ignore[arg-type]
            return {a: k_a, v: k_v}
        gamma = decay_factor(c.decay, step, total_steps)
        return multi_loss_coefficients(
            {m: scores[m] for m in self.modalities}, c.alpha, c.k_min, c.k_max, gamma
        )

    def generator(self, step: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed((self.seed * 1_000_003 + step) % (2**63))

    def __call__(
        self,
        model: nn.Module,
        emb: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
        step: int,
        total_steps: int,
        ctx: DistContext | None = None,
    ) -> dict[str, float]:
        if not self.cfg.active(step):
            return {f"modulation/{m}": 1.0 for m in self.modalities}
        missing = [m for m in self.modalities if m not in emb]
        if missing:
            raise InputError(f"gradient modulation needs embeddings {missing}; the batch has {sorted(emb)}")
        local, n = class_mean_scores({m: emb[m] for m in self.modalities}, labels, self.cfg.temperature)
        ctx = ctx or DistContext()
        scores = {m: all_mean(v, ctx) * ctx.world for m, v in local.items()}  # global sums: one k per run
        n_all = all_mean(float(n), ctx) * ctx.world
        k = self.coefficients(scores, step, total_steps)
        device = next(p for m in self.modalities for p in modality_parameters(model, m)).device
        gen = self.generator(step, device) if self.cfg.noise else None
        scale_gradients(model, k, self.cfg.noise, gen, self.cfg.only_conv_kernels)
        out = {f"modulation/{m}": v for m, v in k.items()}
        out.update({f"modulation/score/{m}": v / max(n_all, 1.0) for m, v in scores.items()})
        return out


def modulate(
    cfg: ModulationConfig,
    model: nn.Module,
    emb: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    step: int,
    total_steps: int,
    seed: int = 0,
    ctx: DistContext | None = None,
) -> dict[str, float]:
    """One training step's modulation (the trainer's hook): reads ``batch["labels"]``."""
    if "labels" not in batch:
        raise InputError("train.modulation needs batch labels: set data.label_task")
    modalities = tuple(getattr(model, "modalities", ()))
    return GradientModulator(cfg, modalities, seed)(model, emb, batch["labels"], step, total_steps, ctx)
