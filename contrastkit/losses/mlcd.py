"""Multi-label cluster discrimination (MLCD): k-means centres over embeddings as multi-labels.

``mlcd`` [L-MLCD, UNVERIFIED] — An et al. 2024, "Multi-label Cluster Discrimination for Visual
  Representation Learning": with ``c_j = cos(x, w_j)`` over prototypes ``W [K, d]`` (k-means centres,
  a buffer), positives Ω_p (the l nearest centres) and negatives Ω_n (the other centres, optionally a
  random subset): ``L = mean_i [log(1 + Σ_{Ω_n} e^{s c_j}) + log(1 + Σ_{Ω_p} e^{−s c_j})]``; spec form,
  not checked against the original. Defaults s = 32, l = 8, sampling ratio 1 (all centres).

Prototypes from a config: :func:`save_prototypes` fits k-means on embeddings (e.g. a pretrained
run's image embeddings, :func:`contrastkit.evaluation.prototypes.fit_run_prototypes`) and writes
the ``[K, d]`` centres with ``torch.save``; the loss parameter ``prototypes_file`` names that file
(``loss: {name: mlcd, params: {prototypes_file: protos.pt}}``), read by :func:`load_prototypes`.

Tiled / distributed: dense only (``TiledLoss`` and ``GatherLoss`` dispatch on clip/siglip only);
gather embeddings (and targets) across devices first. Related: L-SUPCON, L-CATLIP
(:mod:`contrastkit.losses.labels`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import torch
from annotated_types import Gt, Le

from contrastkit.core.checks import check_embeddings, check_pair
from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.core.registry import Positive, PositiveInt
from contrastkit.losses.base import LOSSES, PairLoss, as_float, maybe_normalize

__all__ = [
    "MLCDLoss",
    "assign_positives",
    "fit_prototypes",
    "load_prototypes",
    "mlcd_loss",
    "save_prototypes",
]


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


def save_prototypes(
    embeddings: torch.Tensor,
    path: str | Path,
    k: int,
    iters: int = 20,
    seed: int = 0,
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """Fit :func:`fit_prototypes` on ``embeddings`` and write the ``[k, d]`` float32 centres to
    ``path`` (``torch.save`` of a plain tensor; parent folders created). Returns the centres."""
    centres = fit_prototypes(embeddings, k, iters, seed, normalize=normalize).float().cpu().contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(centres, path)
    return centres


def load_prototypes(path: str | Path) -> torch.Tensor:
    """The ``[K, d]`` centres saved by :func:`save_prototypes` (a ``.pt`` tensor, read with
    ``weights_only=True``) or a NumPy ``.npy`` array; clear errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"prototypes file {path} does not exist (write it with save_prototypes)")
    if path.suffix == ".npy":
        import numpy as np

        value: Any = torch.from_numpy(np.load(path))
    else:
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle / zip errors: name the file, not the unpickler internals
            raise InputError(f"prototypes file {path} is not a saved tensor: {err}") from None
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InputError(f"prototypes file {path} must hold a float [K, d] tensor, got {shape}")
    check_embeddings("prototypes", value)
    return value


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

    Set them with :meth:`fit` (k-means over embeddings, :func:`fit_prototypes`),
    :meth:`set_prototypes`, or from a config: ``prototypes_file`` names a file written by
    :func:`save_prototypes` (read once, at construction; the centres then live in the state
    dict). Positives come from the batch field ``positives [N, l]`` (offline assignment, as in
    the paper) or, when absent, from :func:`assign_positives` on the detached
    batch. With ``sample_ratio < 1`` a shared subset of ``ceil(ratio·K)`` centres is drawn each
    step (PartialFC-style) from a generator seeded with ``(seed, step)``; ``step`` is a buffer and
    advances in training mode only. ``y`` is unused (image-only objective).
    """

    accepts = frozenset({"positives"})

    def __init__(
        self,
        num_positives: PositiveInt = 8,
        scale: Positive = 32.0,
        sample_ratio: Annotated[float, Gt(0), Le(1)] = 1.0,
        seed: int = 0,
        normalize: bool = True,
        prototypes: torch.Tensor | None = None,
        prototypes_file: str | None = None,
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
        if prototypes is not None and prototypes_file is not None:
            raise ConfigError("mlcd: give prototypes or prototypes_file, not both")
        if prototypes_file is not None:
            prototypes = load_prototypes(prototypes_file)
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
