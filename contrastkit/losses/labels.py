"""Label-style objectives: caption concepts (CatLIP, TagAlign), cluster labels (MLCD), and two
classification losses with a contrastive use (squentropy, harmonic loss).

* ``catlip`` [L-CATLIP] — Mehta et al. 2024, "CatLIP: CLIP-level Visual Recognition Accuracy with
  2.7x Faster Pre-training on Web-scale Image-Text Data". A linear head ``W [C, d], b`` over the
  image embedding classifies it against a concept vocabulary of size C; targets are multi-hot
  caption concepts: ``L = mean_i Σ_c BCE(W x_i + b, t_ic)`` (reduction ``"batch_mean"``, the spec's
  believed CatLIP reduction; ``"mean"`` averages over classes too). The text embedding is unused.
* ``tagalign`` (no spec entry) — Liu et al. 2023, "TagAlign: Improving Vision-Language Alignment with
  Multi-Tag Classification": ``L = λ_con · L-CLIP(x, y) + λ_tag · BCE(W x + b, tags)``; spec form
  from the abstract, not checked against the original (a linear tag head over the image embedding,
  λ_con = λ_tag = 1, BCE reduction ``"mean"`` so the tag term stays on the CE scale).
* ``mlcd`` [L-MLCD, UNVERIFIED] — An et al. 2024, "Multi-label Cluster Discrimination for Visual
  Representation Learning": with ``c_j = cos(x, w_j)`` over prototypes ``W [K, d]`` (k-means centres,
  a buffer), positives Ω_p (the l nearest centres) and negatives Ω_n (the other centres, optionally a
  random subset): ``L = mean_i [log(1 + Σ_{Ω_n} e^{s c_j}) + log(1 + Σ_{Ω_p} e^{−s c_j})]``; spec form,
  not checked against the original. Defaults s = 32, l = 8, sampling ratio 1 (all centres).
* ``squentropy`` [L-SQUENTROPY] — Hui, Belkin & Wright 2023: ``ℓ = CE(f, y) + (1/(C−1)) Σ_{j≠y} f_j²``.
* ``harmonic`` [L-HARMONIC, PARTIAL] — Baek et al. 2025: logits ``−n·log(‖x − w_c‖ + ε)``, then CE;
  ε = 1e-8, n = sqrt(D) by default (the paper's guidance, a config value).

Contrastive use of the last two (registered modules): row i of x is classified against the N rows
of y as its "classes", target i. Squentropy logits are ``s·cos(x_i, y_j)`` (s = 1/τ, τ = 0.07 fixed);
harmonic logits are ``−n·log(‖x_i − y_j‖ + ε)`` between (normalised) anchors and candidates.
``symmetric=True`` averages with the y→x direction. Both need N ≥ 2 (C = N ≥ 2 classes).

Tiled / distributed: dense only for all (``TiledLoss`` and ``GatherLoss`` dispatch on clip/siglip
only); gather embeddings (and targets) across devices first. Related: L-CLIP, L-SIGLIP, L-SUPCON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.core.checks import check_embeddings, check_finite, check_pair
from contrastkit.core.concepts import concept_targets
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.base import LOSSES, PairLoss, as_float, maybe_normalize
from contrastkit.losses.clip import clip_loss

__all__ = [
    "CatLIPLoss",
    "HarmonicLoss",
    "MLCDLoss",
    "SquentropyLoss",
    "TagAlignLoss",
    "assign_positives",
    "catlip_loss",
    "concept_targets",
    "fit_prototypes",
    "harmonic_contrastive_loss",
    "harmonic_logits",
    "harmonic_loss",
    "mlcd_loss",
    "multilabel_bce",
    "squentropy_contrastive_loss",
    "squentropy_loss",
    "tagalign_loss",
]

def _check_targets(targets: Any, n: int, c: int | None) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor) or targets.ndim != 2 or targets.shape[0] != n:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise InputError(f"targets must have shape [N, C] with N={n}, got {shape}")
    if c is not None and targets.shape[1] != c:
        raise InputError(f"targets must have C={c} columns (the concept vocabulary), got {targets.shape[1]}")
    t = targets.float() if targets.dtype == torch.bool or not targets.is_floating_point() else targets
    check_finite("targets", t)
    if ((t < 0) | (t > 1)).any():
        raise InputError("targets must lie in [0, 1] (multi-hot or soft labels)")
    return t


def multilabel_bce(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "batch_mean"
) -> torch.Tensor:
    """BCE-with-logits of ``[N, C]`` logits: ``"batch_mean"`` sums over classes and averages over
    rows; ``"mean"`` averages over all N·C entries."""
    per = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    if reduction == "batch_mean":
        return per.sum(1).mean()
    if reduction == "mean":
        return per.mean()
    raise ConfigError(f"reduction must be 'batch_mean' or 'mean', got {reduction!r}")


def _linear_logits(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, normalize: bool
) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != x.shape[1]:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise InputError(f"weight must have shape [C, d] with d={x.shape[1]}, got {shape}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise InputError(f"bias must have shape [C] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    dtype = torch.promote_types(as_float(x).dtype, weight.dtype)
    x = maybe_normalize(x, normalize).to(dtype)
    logits = x @ weight.to(dtype).T
    return logits if bias is None else logits + bias.to(dtype)


def catlip_loss(
    x: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    normalize: bool = True,
    reduction: str = "batch_mean",
) -> torch.Tensor:
    """CatLIP: BCE of the linear concept logits ``W x_i + b`` (``x`` normalised by default) against
    multi-hot ``targets [N, C]``. ``weight [C, d]``, ``bias [C]``. N = 1 is valid."""
    check_embeddings("x", x)
    t = _check_targets(targets, x.shape[0], weight.shape[0] if isinstance(weight, torch.Tensor) else None)
    return multilabel_bce(_linear_logits(x, weight, bias, normalize), t, reduction)


def tagalign_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor | float,
    *,
    lambda_con: float = 1.0,
    lambda_tag: float = 1.0,
    normalize: bool = True,
    reduction: str = "mean",
    allow_single: bool = False,
) -> torch.Tensor:
    """TagAlign: ``λ_con · clip_loss(x, y, scale) + λ_tag · BCE(W x + b, targets)`` (tags of the image)."""
    check_pair(x, y)
    tag = catlip_loss(x, targets, weight, bias, normalize=normalize, reduction=reduction)
    con = clip_loss(x, y, scale, normalize=normalize, allow_single=allow_single)
    return lambda_con * con + lambda_tag * tag


class _ConceptHead(nn.LazyLinear):
    """``Linear(d, C)`` with d read from the first input and C from the first targets if unknown."""

    def __init__(self, num_concepts: int | None) -> None:
        super().__init__(num_concepts or 0)
        self.sized = num_concepts is not None

    @torch.no_grad()
    def materialize(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        if not self.sized:
            self.out_features, self.sized = targets.shape[1], True
        self(x[:1].to(self.weight.dtype))  # the lazy hook sizes the weights and turns this into nn.Linear


def _make_head(num_concepts: int | None, dim: int | None) -> nn.Module:
    if (num_concepts is not None and num_concepts < 1) or (dim is not None and dim < 1):
        raise ConfigError(f"num_concepts and dim must be >= 1, got {num_concepts}, {dim}")
    if num_concepts is not None and dim is not None:
        return nn.Linear(dim, num_concepts)
    return _ConceptHead(num_concepts)


class _ConceptLoss(PairLoss):
    """Shared part of CatLIP / TagAlign: the concept vocabulary and the linear head."""

    accepts = frozenset({"targets"})

    def __init__(
        self,
        num_concepts: int | None,
        vocabulary: Sequence[str] | None,
        dim: int | None,
        stop_words: Sequence[str] | None,
    ) -> None:
        super().__init__()
        if vocabulary is not None:
            if num_concepts is not None and num_concepts != len(vocabulary):
                raise ConfigError(f"num_concepts={num_concepts} but the vocabulary has {len(vocabulary)}")
            num_concepts = len(vocabulary)
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        self.stop_words = list(stop_words) if stop_words is not None else None
        self.head = _make_head(num_concepts, dim)

    def targets_for(self, captions: Sequence[str], lexicon: Mapping[str, str] | None = None) -> torch.Tensor:
        """Multi-hot targets of ``captions`` over this module's vocabulary (:func:`concept_targets`)."""
        if self.vocabulary is None:
            raise ConfigError(f"{type(self).__name__} was built without a vocabulary")
        return concept_targets(captions, self.vocabulary, stop_words=self.stop_words, lexicon=lexicon)

    def _targets(self, x: torch.Tensor, aux: dict[str, Any]) -> torch.Tensor:
        self.check_aux(aux)
        targets = aux.get("targets")
        if targets is None:
            raise InputError(
                f"{type(self).__name__} needs the batch field targets [N, C] (multi-hot concepts)"
            )
        check_embeddings("x", x)
        _check_targets(targets, x.shape[0], None)
        if isinstance(self.head, _ConceptHead):
            self.head.materialize(as_float(x), targets)
        return targets


@LOSSES.register("catlip")
class CatLIPLoss(_ConceptLoss):
    """Module form of :func:`catlip_loss` holding the concept head ``Linear(d, C)``.

    Args:
        num_concepts: C (``None``: ``len(vocabulary)``, else read from the first ``targets``).
        vocabulary: concept names (optional; enables :meth:`targets_for`).
        dim: embedding width d (``None``: lazy, read from the first batch; pass it for distributed).
        normalize: classify the L2-normalised embedding (default). reduction: see :func:`multilabel_bce`.
        stop_words: words ignored by :meth:`targets_for`.
    ``forward(x, y=None, targets=...)``: y (the text embedding) is unused; if given it must pair with x.
    """

    def __init__(
        self,
        num_concepts: int | None = None,
        vocabulary: Sequence[str] | None = None,
        dim: int | None = None,
        normalize: bool = True,
        reduction: str = "batch_mean",
        stop_words: Sequence[str] | None = None,
    ) -> None:
        super().__init__(num_concepts, vocabulary, dim, stop_words)
        multilabel_bce(torch.zeros(1, 1), torch.zeros(1, 1), reduction)  # validates reduction early
        self.normalize, self.reduction = normalize, reduction

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, **aux: Any) -> torch.Tensor:
        targets = self._targets(x, aux)
        if y is not None:
            check_pair(x, y)
        h = self.head
        return catlip_loss(x, targets, h.weight, h.bias, normalize=self.normalize, reduction=self.reduction)


@LOSSES.register("tagalign")
class TagAlignLoss(_ConceptLoss):
    """Module form of :func:`tagalign_loss`: the tag head, CLIP's learnable ``θ_s = log s`` (init
    log(1/0.07), clamped to ``[0, ln max_scale]`` after each step) and both terms logged as
    ``loss/contrastive`` and ``loss/tag``. Other args as :class:`CatLIPLoss`."""

    def __init__(
        self,
        num_concepts: int | None = None,
        vocabulary: Sequence[str] | None = None,
        dim: int | None = None,
        lambda_con: float = 1.0,
        lambda_tag: float = 1.0,
        init_temperature: float = 0.07,
        max_scale: float = 100.0,
        normalize: bool = True,
        reduction: str = "mean",
        stop_words: Sequence[str] | None = None,
        allow_single: bool = False,
    ) -> None:
        super().__init__(num_concepts, vocabulary, dim, stop_words)
        if not init_temperature > 0 or not max_scale >= 1 or lambda_con < 0 or lambda_tag < 0:
            raise ConfigError("tagalign: need init_temperature > 0, max_scale >= 1, lambdas >= 0")
        multilabel_bce(torch.zeros(1, 1), torch.zeros(1, 1), reduction)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_scale = math.log(max_scale)
        self.lambda_con, self.lambda_tag = float(lambda_con), float(lambda_tag)
        self.normalize, self.reduction, self.allow_single = normalize, reduction, allow_single
        self._last: dict[str, float] = {}

    def forward(self, x: torch.Tensor, y: torch.Tensor, **aux: Any) -> torch.Tensor:
        targets = self._targets(x, aux)
        check_pair(x, y)
        h = self.head
        tag = catlip_loss(x, targets, h.weight, h.bias, normalize=self.normalize, reduction=self.reduction)
        s = self.log_scale.exp()
        con = clip_loss(x, y, s, normalize=self.normalize, allow_single=self.allow_single)
        self._last = {"loss/contrastive": float(con.detach()), "loss/tag": float(tag.detach())}
        return self.lambda_con * con + self.lambda_tag * tag

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.log_scale.clamp_(0.0, self.max_log_scale)

    def log_values(self) -> dict[str, float]:
        return {"logit_scale": float(self.log_scale.detach().exp()), **self._last}


# ----------------------------------------------------------------------------- MLCD
def _nearest(z: torch.Tensor, centres: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest centre (squared Euclidean) of each row, in row chunks to bound memory."""
    c2 = centres.pow(2).sum(1)
    parts = [(c2 - 2 * part @ centres.T).argmin(1) for part in z.split(chunk)]  # ‖z‖² is constant per row
    return torch.cat(parts)


@torch.no_grad()
def fit_prototypes(
    embeddings: torch.Tensor, k: int, iters: int = 20, seed: int = 0, *, normalize: bool = True
) -> torch.Tensor:
    """Plain seeded k-means (Lloyd) in torch: ``[k, d]`` centres of the (normalised) embeddings.

    Initial centres: k distinct rows drawn by ``randperm`` from a CPU generator seeded with ``seed``;
    then ``iters`` rounds of nearest-centre assignment (squared Euclidean) and mean update, stopping
    early when the centres no longer change. An empty cluster keeps its previous centre.
    """
    check_embeddings("embeddings", embeddings)
    n = embeddings.shape[0]
    if not 1 <= k <= n or iters < 0:
        raise ConfigError(
            f"fit_prototypes needs 1 <= k <= N (N={n}) and iters >= 0, got k={k}, iters={iters}"
        )
    z = maybe_normalize(embeddings.detach(), normalize)
    g = torch.Generator().manual_seed(int(seed))
    centres = z[torch.randperm(n, generator=g)[:k].to(z.device)].clone()
    for _ in range(iters):
        assign = _nearest(z, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, z)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        if torch.equal(new, centres):
            break
        centres = new
    return centres


@torch.no_grad()
def assign_positives(
    x: torch.Tensor, prototypes: torch.Tensor, num_positives: int, *, normalize: bool = True
) -> torch.Tensor:
    """MLCD multi-label assignment: indices ``[N, l]`` of the l most cosine-similar prototypes."""
    if not 1 <= num_positives <= prototypes.shape[0]:
        raise ConfigError(f"num_positives must be in [1, K={prototypes.shape[0]}], got {num_positives}")
    sims = maybe_normalize(x, normalize) @ maybe_normalize(prototypes, normalize).to(as_float(x).dtype).T
    return sims.topk(num_positives, dim=1).indices


def _check_index(name: str, idx: Any, k: int, ndim: int) -> torch.Tensor:
    if not isinstance(idx, torch.Tensor) or idx.ndim != ndim or idx.dtype != torch.long or idx.shape[-1] < 1:
        raise InputError(f"{name} must be a non-empty LongTensor with {ndim} dimension(s)")
    if ((idx < 0) | (idx >= k)).any():
        raise InputError(f"{name} must index prototypes in [0, {k})")
    srt = idx.sort(-1).values
    if (srt[..., 1:] == srt[..., :-1]).any():
        raise InputError(f"{name} must not repeat an index (within a row)")
    return srt


def mlcd_loss(
    x: torch.Tensor,
    prototypes: torch.Tensor,
    positives: torch.Tensor,
    *,
    candidates: torch.Tensor | None = None,
    scale: float = 32.0,
    normalize: bool = True,
) -> torch.Tensor:
    """MLCD: ``mean_i [log(1 + Σ_{j∈Ω_n(i)} e^{s c_ij}) + log(1 + Σ_{j∈Ω_p(i)} e^{−s c_ij})]``.

    Args:
        x: ``[N, d]`` embeddings. prototypes: ``[K, d]`` centres ``w_j``; ``c_ij = cos(x_i, w_j)``.
        positives: ``[N, l]`` LongTensor, Ω_p(i) (distinct within a row).
        candidates: ``[K_s]`` LongTensor of sampled centres; Ω_n(i) = candidates ∖ Ω_p(i)
            (``None``: all K centres). No negatives ⇒ that term is 0.
        scale: s. normalize: cosine (default) or raw dot products.
    """
    check_embeddings("x", x)
    check_embeddings("prototypes", prototypes)
    if prototypes.shape[1] != x.shape[1]:
        raise InputError(f"prototypes must have d={x.shape[1]}, got {prototypes.shape[1]}")
    k = prototypes.shape[0]
    positives = _check_index("positives", positives, k, 2)
    if positives.shape[0] != x.shape[0]:
        raise InputError(
            f"positives must have shape [N, l] with N={x.shape[0]}, got {tuple(positives.shape)}"
        )
    cand = (
        torch.arange(k, device=x.device)
        if candidates is None
        else _check_index("candidates", candidates, k, 1)
    )
    xn = maybe_normalize(x, normalize)
    w = maybe_normalize(prototypes, normalize).to(xn.dtype)
    c_pos = torch.einsum("nd,nld->nl", xn, w[positives])
    # a candidate is a positive of row i iff searchsorted finds it among the row's sorted positives
    at = torch.searchsorted(positives, cand.expand(x.shape[0], -1).contiguous())
    hit = positives.gather(1, at.clamp_max(positives.shape[1] - 1)) == cand
    neg = (scale * (xn @ w[cand].T)).masked_fill(hit, float("-inf"))
    zero = neg.new_zeros(x.shape[0], 1)  # the appended 0 logit: log(1 + Σ e^a) = LSE([0, a])
    loss_neg = torch.logsumexp(torch.cat([zero, neg], 1), 1)
    loss_pos = torch.logsumexp(torch.cat([zero, -scale * c_pos], 1), 1)
    return (loss_neg + loss_pos).mean()


@LOSSES.register("mlcd")
class MLCDLoss(PairLoss):
    """Module form of :func:`mlcd_loss` holding the prototypes (a buffer, not trained).

    Set them with :meth:`fit` (k-means over embeddings, :func:`fit_prototypes`) or
    :meth:`set_prototypes`. Positives come from the batch field ``positives [N, l]`` (offline
    assignment, as in the paper) or, when absent, from :func:`assign_positives` on the detached
    batch. With ``sample_ratio < 1`` a shared subset of ``ceil(ratio·K)`` centres is drawn each
    step (PartialFC-style) from a generator seeded with ``(seed, step)``; ``step`` is a buffer and
    advances in training mode only. ``y`` is unused (image-only objective).
    """

    accepts = frozenset({"positives"})

    def __init__(
        self,
        num_positives: int = 8,
        scale: float = 32.0,
        sample_ratio: float = 1.0,
        seed: int = 0,
        normalize: bool = True,
        prototypes: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if num_positives < 1 or not scale > 0 or not 0 < sample_ratio <= 1:
            raise ConfigError("mlcd: need num_positives >= 1, scale > 0, 0 < sample_ratio <= 1")
        self.num_positives, self.scale, self.sample_ratio = (
            int(num_positives),
            float(scale),
            float(sample_ratio),
        )
        self.seed, self.normalize = int(seed), normalize
        self.register_buffer("prototypes", torch.zeros(0, 0))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        if prototypes is not None:
            self.set_prototypes(prototypes)

    def set_prototypes(self, prototypes: torch.Tensor) -> None:
        check_embeddings("prototypes", prototypes)
        self.prototypes = prototypes.detach().clone()

    def fit(self, embeddings: torch.Tensor, k: int, iters: int = 20, seed: int | None = None) -> None:
        """k-means the embeddings (seed defaults to the module's) and keep the centres."""
        seed = self.seed if seed is None else seed
        self.set_prototypes(fit_prototypes(embeddings, k, iters, seed, normalize=self.normalize))

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        if prefix + "prototypes" in state_dict:  # the saved centres define the buffer's shape
            self.prototypes = torch.empty_like(state_dict[prefix + "prototypes"])
        super()._load_from_state_dict(state_dict, prefix, *args)

    def candidates(self) -> torch.Tensor | None:
        """This step's sampled centres (``None`` when all are used)."""
        k = self.prototypes.shape[0]
        if self.sample_ratio >= 1:
            return None
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.step))
        ks = max(1, math.ceil(self.sample_ratio * k))
        return torch.randperm(k, generator=g)[:ks].to(self.prototypes.device)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, **aux: Any) -> torch.Tensor:
        self.check_aux(aux)
        if self.prototypes.numel() == 0:
            raise InputError("mlcd has no prototypes: call fit(embeddings, k) or set_prototypes(W) first")
        check_embeddings("x", x)
        if y is not None:
            check_pair(x, y)
        positives = aux.get("positives")
        if positives is None:
            positives = assign_positives(
                x.detach(), self.prototypes, self.num_positives, normalize=self.normalize
            )
        out = mlcd_loss(
            x,
            self.prototypes,
            positives,
            candidates=self.candidates(),
            scale=self.scale,
            normalize=self.normalize,
        )
        if self.training:
            self.step += 1
        return out


# ----------------------------------------------------------------------------- squentropy, harmonic
def squentropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squentropy: ``mean_i [CE(f_i, y_i) + (1/(C−1)) Σ_{j≠y_i} f_ij²]`` over ``logits [N, C]`` (C ≥ 2),
    ``target [N]`` class indices."""
    check_embeddings("logits", logits)
    if logits.shape[1] < 2:
        raise InputError(f"squentropy needs C >= 2 classes, got C={logits.shape[1]}")
    if (
        not isinstance(target, torch.Tensor)
        or target.shape != (logits.shape[0],)
        or target.dtype != torch.long
    ):
        raise InputError(f"target must be a LongTensor of shape [N] = [{logits.shape[0]}]")
    if ((target < 0) | (target >= logits.shape[1])).any():
        raise InputError(f"target must hold class indices in [0, {logits.shape[1]})")
    f = as_float(logits)
    is_target = F.one_hot(target, f.shape[1]).bool()
    squares = f.pow(2).masked_fill(is_target, 0.0).sum(1) / (f.shape[1] - 1)
    return (F.cross_entropy(f, target, reduction="none") + squares).mean()


def _contrastive(
    logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    symmetric: bool,
) -> torch.Tensor:
    check_pair(x, y)
    if x.shape[0] < 2:
        raise InputError("a classification-style contrastive loss needs N >= 2 (the y rows are the classes)")
    logits = logits_fn(x, y)
    target = torch.arange(x.shape[0], device=x.device)
    out = loss_fn(logits, target)
    return 0.5 * (out + loss_fn(logits.T, target)) if symmetric else out


def squentropy_contrastive_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float = 1 / 0.07,
    *,
    normalize: bool = True,
    symmetric: bool = False,
) -> torch.Tensor:
    """Squentropy with logits ``s · cos(x_i, y_j)`` and target i (x classified among the y rows)."""

    def logits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = maybe_normalize(a, normalize)
        return scale * (a @ maybe_normalize(b, normalize).to(a.dtype).T)

    return _contrastive(logits, squentropy_loss, x, y, symmetric)


def harmonic_logits(
    x: torch.Tensor, w: torch.Tensor, n: float | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """``−n·log(‖x_i − w_c‖₂ + ε)``, ``[N, C]``; n = sqrt(D) when ``None``.

    Distances come from ``torch.cdist`` without the matrix-product shortcut (no cancellation for
    near-coincident points; its gradient is 0, not NaN, at distance 0). ε = 0 is allowed but a zero
    distance then gives an infinite logit.
    """
    n = math.sqrt(x.shape[1]) if n is None else n
    if not n > 0 or eps < 0:
        raise ConfigError(f"harmonic: need n > 0 and eps >= 0, got n={n}, eps={eps}")
    x = as_float(x)
    d = torch.cdist(x, w.to(x.dtype), compute_mode="donot_use_mm_for_euclid_dist")
    return -n * torch.log(d + eps)


def harmonic_loss(
    x: torch.Tensor,
    class_vectors: torch.Tensor,
    target: torch.Tensor,
    *,
    n: float | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Harmonic loss: ``mean_i −log p_{y_i}``, ``p_c = d_c^{−n} / Σ_j d_j^{−n}`` (with ``d + ε``)."""
    check_embeddings("x", x)
    check_embeddings("class_vectors", class_vectors)
    if class_vectors.shape[1] != x.shape[1]:
        raise InputError(f"class_vectors must have d={x.shape[1]}, got {class_vectors.shape[1]}")
    c = class_vectors.shape[0]
    if not isinstance(target, torch.Tensor) or target.shape != (x.shape[0],) or target.dtype != torch.long:
        raise InputError(f"target must be a LongTensor of shape [N] = [{x.shape[0]}]")
    if ((target < 0) | (target >= c)).any():
        raise InputError(f"target must hold class indices in [0, {c})")
    return F.cross_entropy(harmonic_logits(x, class_vectors, n, eps), target)


def harmonic_contrastive_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n: float | None = None,
    eps: float = 1e-8,
    normalize: bool = True,
    symmetric: bool = False,
) -> torch.Tensor:
    """Harmonic loss with the y rows as class vectors: logits ``−n·log(‖x_i − y_j‖ + ε)``, target i."""

    def logits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return harmonic_logits(maybe_normalize(a, normalize), maybe_normalize(b, normalize), n, eps)

    return _contrastive(logits, F.cross_entropy, x, y, symmetric)


@LOSSES.register("squentropy")
class SquentropyLoss(PairLoss):
    """Module form of :func:`squentropy_contrastive_loss` (fixed temperature τ, s = 1/τ)."""

    def __init__(self, temperature: float = 0.07, symmetric: bool = False, normalize: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.symmetric, self.normalize = float(temperature), symmetric, normalize

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        kwargs = {"scale": 1.0 / self.temperature, "normalize": self.normalize, "symmetric": self.symmetric}
        return squentropy_contrastive_loss, kwargs


@LOSSES.register("harmonic")
class HarmonicLoss(PairLoss):
    """Module form of :func:`harmonic_contrastive_loss` (n = sqrt(d) unless given)."""

    def __init__(
        self, n: float | None = None, eps: float = 1e-8, symmetric: bool = False, normalize: bool = True
    ) -> None:
        super().__init__()
        if (n is not None and not n > 0) or eps < 0:
            raise ConfigError(f"harmonic: need n > 0 and eps >= 0, got n={n}, eps={eps}")
        self.n, self.eps, self.symmetric, self.normalize = n, float(eps), symmetric, normalize

    def pure(self) -> tuple[Callable[..., torch.Tensor], dict[str, Any]]:
        kw = {"n": self.n, "eps": self.eps, "normalize": self.normalize, "symmetric": self.symmetric}
        return harmonic_contrastive_loss, kw
