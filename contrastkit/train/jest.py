"""JEST: joint example selection by learnability — train on the sub-batch a reference says is learnable.

Paper: Evans, Parthasarathy, Merzic, Hénaff 2024, "Data curation via joint example selection
further accelerates multimodal learning" (spec S-JEST; the first-chunk distribution is the paper's
pseudo-code as recalled, not checked against the original: ``first_chunk`` keeps the alternative).

Per step the feed delivers a super-batch of ``B = round(b / (1 − f))`` rows (``b`` =
``train.batch_size``, ``f`` = ``filter_ratio``). The current learner θ (eval mode, no gradient)
and a frozen reference θ* (any contrastkit run) embed it; each gives the PAIRWISE sigmoid-loss
matrix over the super-batch, with its own loss's logit scale ``t`` and bias ``b₀`` (0 for a loss
without one, e.g. CLIP)::

    ℓ_ij = softplus(−z_ij (t · x̂_i·ŷ_j + b₀)),   z_ij = +1 if i = j else −1,   [B, B]

Scores ``S`` (``score``): ``learnability`` (default) ``ℓ^learn − ℓ^ref``; ``hard_learner``
``ℓ^learn``; ``easy_reference`` ``−ℓ^ref``. The score of a sub-batch A is ``Σ_{i,j∈A} S_ij``:
for SigLIP exactly its loss (up to 1/|A|); for CLIP the sigmoid form stands in for the softmax loss,
which does not split over pairs.

Blocked sampling (``n_chunks`` = n): chunk 1 draws its rows without replacement with probability
∝ softmax(S_ii) (``first_chunk="uniform"``: uniformly); each next chunk draws ∝ softmax(λ) with
``λ_c = S_cc + Σ_{k∈A}(S_ck + S_kc)`` — the exact increase of the batch score when c joins the
chosen set A — and ``λ_c = −∞`` for c ∈ A. "Without replacement ∝ softmax" is Gumbel-top-k:
the k largest ``λ_c + g_c`` with ``g`` i.i.d. standard Gumbel. Chunk sizes are ``b // n``, the
first ``b % n`` chunks one larger. The draws come from a generator seeded by (seed, step, rank),
never the global RNG: a resumed run selects exactly what an uninterrupted one would.

Defaults (``curation.jest``): ``filter_ratio`` 0.8 (train on 20% of a 5× super-batch),
``n_chunks`` 16, ``score`` learnability, ``first_chunk`` diag. ``filter_ratio: 0`` trains on
every row (no selection, only the scoring cost). Cost per step: a forward pass of both models over
B rows (≈ 2B forward passes) on top of the training step on b rows (≈ 3b); O(B²) scores. Logged every
``log_every`` steps: ``jest_score_selected`` / ``jest_score_all``, the mean ``S_ij`` over the
chosen sub-batch's pairs and over the whole super-batch.

Several processes: each rank scores and selects within its own slice of the super-batch (B/D rows
→ b/D rows, no communication); B and b must divide by D. The reference must read the learner's
inputs: the same tokenizer (checked on the training captions) and image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError, MissingFileError

if TYPE_CHECKING:
    from contrastkit.losses.base import PairLoss
    from contrastkit.models.dual_encoder import DualEncoder
    from contrastkit.train.config import RunConfig

__all__ = [
    "Jest",
    "JestConfig",
    "check_jest",
    "chunk_sizes",
    "gumbel_draws",
    "joint_select",
    "load_reference",
    "score_matrix",
    "sigmoid_pair_losses",
    "super_batch_size",
]

Score = Literal["learnability", "hard_learner", "easy_reference"]
_TAG = 0x4E57  # the selection's random stream: apart from the sampler's and dropout's


@dataclass(frozen=True)
class JestConfig:
    """``curation.jest`` (module docstring): ``reference`` run folder (required), ``filter_ratio``
    f in [0, 1) (the fraction of the super-batch left out), ``n_chunks``, ``score``, ``first_chunk``."""

    reference: str = ""
    filter_ratio: float = 0.8
    n_chunks: int = 16
    score: Score = "learnability"
    first_chunk: Literal["diag", "uniform"] = "diag"

    def __post_init__(self) -> None:
        if not self.reference:
            raise ConfigError("curation.jest.reference is required: the folder of a trained contrastkit run")
        if not 0 <= self.filter_ratio < 1:
            raise ConfigError(f"curation.jest.filter_ratio must be in [0, 1), got {self.filter_ratio}")
        if self.n_chunks < 1:
            raise ConfigError(f"curation.jest.n_chunks must be >= 1, got {self.n_chunks}")
        if self.score not in ("learnability", "hard_learner", "easy_reference"):
            raise ConfigError(
                f"curation.jest.score is learnability, hard_learner or easy_reference, not {self.score!r}"
            )
        if self.first_chunk not in ("diag", "uniform"):
            raise ConfigError(f"curation.jest.first_chunk must be diag or uniform, got {self.first_chunk!r}")


def super_batch_size(batch_size: int, filter_ratio: float) -> int:
    """``B = round(b / (1 − f))`` rows scored per step to keep ``b``."""
    if batch_size < 1 or not 0 <= filter_ratio < 1:
        raise InputError(f"need batch_size >= 1 and filter_ratio in [0, 1), got {batch_size}, {filter_ratio}")
    return max(batch_size, round(batch_size / (1.0 - filter_ratio)))


def chunk_sizes(b: int, n_chunks: int) -> list[int]:
    """Sizes of the n chunks that make up b selected rows: ``b // n``, the first ``b % n`` one more."""
    if n_chunks < 1 or b < n_chunks:
        raise InputError(f"n_chunks must be in [1, b={b}] (every chunk selects a row), got {n_chunks}")
    return [b // n_chunks + (1 if k < b % n_chunks else 0) for k in range(n_chunks)]


def sigmoid_pair_losses(
    x: torch.Tensor, y: torch.Tensor, scale: float | torch.Tensor, bias: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """``ℓ_ij = softplus(−z_ij (t x̂_i·ŷ_j + b))`` of embeddings ``x, y [B, d]`` (normalised here),
    ``[B, B]``; z = +1 on the diagonal, −1 elsewhere."""
    if x.ndim != 2 or x.shape != y.shape:
        raise InputError(f"x and y must both be [B, d], got {tuple(x.shape)} and {tuple(y.shape)}")
    logits = scale * F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T + bias
    z = 2 * torch.eye(len(x), dtype=logits.dtype, device=logits.device) - 1
    return F.softplus(-z * logits)


def score_matrix(learner: torch.Tensor | None, reference: torch.Tensor | None, score: Score) -> torch.Tensor:
    """``S`` from the two ``[B, B]`` pair-loss matrices (the one a score does not use may be None)."""
    if score == "learnability":
        if learner is None or reference is None:
            raise InputError("learnability needs the learner's and the reference's pair losses")
        return learner - reference
    if score == "hard_learner" and learner is not None:
        return learner
    if score == "easy_reference" and reference is not None:
        return -reference
    raise InputError(f"unknown score {score!r} or its pair losses missing")


def gumbel_draws(n_chunks: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise ``[n_chunks, n]`` (float64) from ``generator``: one row per chunk."""
    u = torch.rand(n_chunks, n, generator=generator, dtype=torch.float64)
    tiny = torch.finfo(torch.float64).tiny
    e = (-torch.log(u.clamp_min(tiny))).clamp_min(tiny)  # Exp(1); u = 0 or 1 stays finite
    return -torch.log(e)


def joint_select(
    scores: torch.Tensor, b: int, n_chunks: int, gumbel: torch.Tensor, first_chunk: str = "diag"
) -> torch.Tensor:
    """Indices ``[b]`` chosen from the ``B`` rows of ``scores [B, B]`` by blocked joint sampling
    (module docstring), chunk after chunk, each chunk's in order of decreasing ``λ + g``.
    ``gumbel [n_chunks, B]``: the random draws (:func:`gumbel_draws`)."""
    n = scores.shape[0]
    if scores.ndim != 2 or scores.shape[1] != n:
        raise InputError(f"scores must be square [B, B], got {tuple(scores.shape)}")
    if not 1 <= b <= n:
        raise InputError(f"cannot select b={b} of B={n} rows")
    sizes = chunk_sizes(b, n_chunks)
    if gumbel.shape != (n_chunks, n):
        raise InputError(f"gumbel must be [n_chunks={n_chunks}, B={n}], got {tuple(gumbel.shape)}")
    if first_chunk not in ("diag", "uniform"):
        raise InputError(f"first_chunk must be diag or uniform, got {first_chunk!r}")
    s = scores.detach().double().cpu()
    if not bool(torch.isfinite(gumbel).all()):
        raise InputError("gumbel draws must be finite")
    if not bool(torch.isfinite(s).all()):
        raise InputError("JEST scores are not all finite (non-finite embeddings?)")
    diag = s.diagonal().clone()
    chosen = torch.zeros(n, dtype=torch.float64)
    picks: list[torch.Tensor] = []
    for k, size in enumerate(sizes):
        if k == 0:
            logits = diag if first_chunk == "diag" else torch.zeros(n, dtype=torch.float64)
        else:  # the batch score's gain when c joins: S_cc + Σ_{a∈A} (S_ca + S_ac)
            logits = diag + s @ chosen + chosen @ s
        logits = logits.masked_fill(chosen > 0, float("-inf"))
        pick = torch.topk(logits + gumbel[k], size).indices
        chosen[pick] = 1.0
        picks.append(pick)
    return torch.cat(picks)


def load_reference(run_dir: Path) -> tuple[DualEncoder, PairLoss]:
    """The frozen reference: a run's newest checkpoint (model and loss, eval mode, no gradients)."""
    from contrastkit.losses import from_config as build_loss
    from contrastkit.losses.base import MultiLoss
    from contrastkit.models.dual_encoder import build_model
    from contrastkit.train.checkpoint import latest_checkpoint, load_weights
    from contrastkit.train.setup import load_run_config

    rcfg = load_run_config(run_dir)
    model = build_model(rcfg.model, assets_dir=run_dir / "assets")
    loss = build_loss(rcfg.loss)
    if isinstance(loss, MultiLoss) or not isinstance(getattr(loss, "log_scale", None), torch.Tensor):
        raise ConfigError(
            f"curation.jest.reference {run_dir}: its loss ({rcfg.loss.name or 'terms'}) has no logit "
            "scale to score pairs with; use a clip or siglip run"
        )
    load_weights(latest_checkpoint(run_dir, fallback=False), model, loss)
    model.requires_grad_(False)
    loss.requires_grad_(False)
    return model.eval(), loss.eval()


def check_jest(cfg: RunConfig, world: int = 1) -> None:
    """Refuse, before any data is read, a ``curation.jest`` this run cannot serve."""
    jest = cfg.curation.jest
    if jest is None:
        return
    ref = Path(jest.reference)
    if not ref.is_dir():
        raise MissingFileError(f"curation.jest.reference: no run folder at {ref} (no such folder)")
    if not (ref / "config.yaml").is_file() or not (ref / "checkpoints").is_dir():
        raise ConfigError(
            f"curation.jest.reference: {ref} is not a trained contrastkit run "
            "(it needs config.yaml and checkpoints/)"
        )
    if cfg.loss.terms:
        raise ConfigError("curation.jest scores with a pair loss's logit scale: not with loss.terms")
    noisy = cfg.curation.noisy_pairs
    if noisy is not None and noisy.mode == "drop":  # a super-batch shorter than b could not be served
        raise ConfigError("curation.jest works with curation.noisy_pairs mode weight, not drop")
    if len([m for m in cfg.data.modalities if m in cfg.model.towers]) < 2:
        raise ConfigError("curation.jest scores two-modality pairs (image–text); data.modalities has fewer")
    b = cfg.train.batch_size
    big = super_batch_size(b, jest.filter_ratio)
    if b % world or big % world:
        raise ConfigError(
            f"curation.jest: train.batch_size={b} and the super-batch {big} must both divide by the "
            f"{world} processes (each selects within its own slice)"
        )
    if jest.n_chunks > b // world:
        raise ConfigError(
            f"curation.jest.n_chunks={jest.n_chunks} is above the {b // world} rows selected per process"
        )


def _scale_bias(loss: PairLoss) -> tuple[float, float]:
    log_scale = getattr(loss, "log_scale", None)
    if not isinstance(log_scale, torch.Tensor):
        raise ConfigError(
            f"curation.jest needs a loss with a logit scale (clip, siglip), not {type(loss).__name__}"
        )
    bias = getattr(loss, "bias", None)
    return float(log_scale.detach().exp()), float(bias.detach()) if isinstance(bias, torch.Tensor) else 0.0


class Jest:
    """The JEST state of a run: the frozen reference and the sizes; :meth:`select` turns a
    super-batch into the training batch."""

    def __init__(
        self,
        cfg: JestConfig,
        batch_size: int,
        seed: int,
        reference: DualEncoder,
        reference_loss: PairLoss,
        rank: int = 0,
        world: int = 1,
        amp: bool = False,
    ) -> None:
        self.cfg, self.seed, self.rank, self.amp = cfg, seed, rank, amp
        self.reference, self.reference_loss = reference, reference_loss
        self.super_batch = super_batch_size(batch_size, cfg.filter_ratio)  # global, what the feed delivers
        self.keep = batch_size // world  # rows this rank trains on
        chunk_sizes(self.keep, cfg.n_chunks)  # refuse now, not at the first step
        self.last: dict[str, float] = {}

    @classmethod
    def for_run(
        cls, cfg: RunConfig, model: DualEncoder, source: object, rank: int, world: int
    ) -> Jest | None:
        """The JEST of ``cfg.curation.jest`` (``None`` when off), its reference on ``model``'s device."""
        jest = cfg.curation.jest
        if jest is None:
            return None
        check_jest(cfg, world)
        ref, ref_loss = load_reference(Path(jest.reference))
        device = next(model.parameters()).device
        ref.to(device)
        ref_loss.to(device)
        pair = model.modalities[:2]
        if ref.modalities[:2] != pair:
            raise ConfigError(
                f"curation.jest.reference encodes {list(ref.modalities[:2])}, this run {list(pair)}"
            )
        captions = getattr(source, "captions", None)
        if "text" in pair and captions:
            sample = [c for caps in list(captions)[:128] for c in caps]
            if not torch.equal(model.tokenize(sample), ref.tokenize(sample)):
                raise ConfigError(
                    f"curation.jest.reference {jest.reference} tokenizes this run's captions differently; "
                    "JEST needs a reference with the same tokenizer (same vocabulary)"
                )
        amp = cfg.train.precision == "bf16"
        return cls(jest, cfg.train.batch_size, cfg.train.seed, ref, ref_loss, rank, world, amp)

    def generator(self, step: int) -> torch.Generator:
        """The selection's random stream at 0-based ``step``: a function of (seed, step, rank)."""
        return torch.Generator().manual_seed(
            ((self.seed * 1_000_003 + step) * 1_009 + self.rank) * 65_537 + _TAG
        )

    @torch.no_grad()
    def pair_losses(self, model: DualEncoder, loss: PairLoss, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, B]`` sigmoid pair losses (float64) of ``model`` (eval mode inside) on ``batch``."""
        was_training = model.training
        model.eval()
        pair = model.modalities[:2]
        inputs = {m: batch[m] for m in pair}
        step = max(self.keep, 1)  # embed in pieces of a training batch: bounded activation memory
        parts: dict[str, list[torch.Tensor]] = {m: [] for m in pair}
        n = len(next(iter(inputs.values())))
        device = next(model.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
            for lo in range(0, n, step):
                emb = model({m: v[lo : lo + step] for m, v in inputs.items()})
                for m in pair:
                    parts[m].append(emb[m].double())
        model.train(was_training)
        scale, bias = _scale_bias(loss)
        x, y = (torch.cat(parts[m]) for m in pair)
        return sigmoid_pair_losses(x, y, scale, bias)

    def select(
        self, model: DualEncoder, loss: PairLoss, batch: dict[str, torch.Tensor], step: int
    ) -> dict[str, torch.Tensor]:
        """The training batch: the ``b`` (per rank) rows of the super-batch ``batch`` that blocked
        joint sampling chooses at 0-based ``step``."""
        n = len(next(v for v in batch.values() if isinstance(v, torch.Tensor)))
        if n < self.keep:
            raise InputError(f"JEST got a super-batch of {n} rows, fewer than the {self.keep} it keeps")
        if n == self.keep:  # filter_ratio 0: every row, no scoring needed
            return batch
        use = self.cfg.score
        learn = self.pair_losses(model, loss, batch) if use != "easy_reference" else None
        ref = self.pair_losses(self.reference, self.reference_loss, batch) if use != "hard_learner" else None
        scores = score_matrix(learn, ref, use)
        gumbel = gumbel_draws(self.cfg.n_chunks, n, self.generator(step))
        index = joint_select(scores, self.keep, self.cfg.n_chunks, gumbel, self.cfg.first_chunk)
        picked = scores[index][:, index]
        self.last = {"jest_score_selected": float(picked.mean()), "jest_score_all": float(scores.mean())}
        return _rows(batch, index, n)


def _rows(batch: dict[str, torch.Tensor], index: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """The batch's rows ``index`` (pairwise ``[n, n]`` fields: rows and columns)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n:
            i = index.to(v.device)
            v = v[i]
            if k == "weights" and v.ndim == 2 and v.shape[1] == n:  # pairwise weights [n, n]
                v = v[:, i]
        out[k] = v
    return out
