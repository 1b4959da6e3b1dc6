"""Noisy pairs: per-pair losses, a beta mixture over them, and clean probabilities in the loss.

Paper: Arazo et al. 2019, "Unsupervised Label Noise Modeling and Loss Correction" (ICML), applied
to image–caption pairs. A mismatched pair (a caption of another image) keeps a high contrastive
loss while the matched ones are learnt; a two-component beta mixture over the per-pair losses
(:mod:`contrastkit.train.bmm`) gives each pair a noise probability ``B`` and a clean probability
``w = 1 − B``.

Schedule: plain training until step ``start``; then at ``start`` and every ``every`` steps after
it, one pass in eval mode over **every** training pair computes its loss
``ℓ_i = ½ (CE_row_i + CE_col_i)``, the per-pair CLIP loss
(:func:`~contrastkit.losses.clip.clip_pair_losses`) among ``batch_size`` pairs (the loss depends on
the batch: a fixed size, the last batch filled up from the first ones; pairs in a fixed seeded
order, caption j of each image in pass j so no batch holds an image twice) at the training loss's
logit scale. The mixture is fitted afresh to those losses, and the following steps use the new ``w``:

* ``mode="weight"`` (default): ``L = (1/N) Σ_i w_i ℓ_i`` — the loss takes ``w`` as the batch
  field ``pair_weights`` (losses that accept it: ``clip``); every pair stays a negative for the
  other anchors; ``normalize=True`` divides by ``Σ w_i`` instead of N.
* ``mode="drop"``: pairs with ``B > 0.5`` leave the batch entirely (rows and columns; any loss),
  the ordinary loss is computed on the rest (at least the two cleanest pairs are kept).

Defaults (``curation.noisy_pairs``): ``every`` = one epoch of ``train.batch_size`` batches,
``start = every``, 10 EM iterations, ``posterior="lookup"`` (the authors' 100-entry table; or
``"exact"``) with ``monotone=True``: unlike the authors' table, the lowest losses are never called
noisy (theirs called the cleanest ~9% of Shapes pairs noisy, docs/curation.md); ``batch_size`` =
``train.batch_size``; ``scale`` = the loss's logit scale (1/0.07 for a loss without one). A
degenerate fit (e.g. all losses equal) keeps the previous weights, with a warning. The clean
probabilities and the fit are checkpointed: resume is exact. Cost: one forward pass over all pairs
per refit. Any indexed source: built-in sets and the user's files (csv, folders, …), not webdataset
shards or ``data.sources`` mixtures.

Several processes (``torchrun``): the scoring pass is split by batches over the processes (the
same batches as on one process) and the losses are summed across them, so every process fits the
same mixture to the same losses; ``mode="weight"`` then needs ``scale.dist_loss=local`` (each
process weights its own pairs' terms of the gathered CLIP loss: exact), ``mode="drop"`` is refused
(it makes the processes' batch sizes differ). ``scale.chunk_size`` (gradient caching) is exact with
weights; ``scale.tile_size`` is refused in weight mode (tiles keep no per-pair terms).
"""

from __future__ import annotations

import base64
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.progress import progress_bar
from contrastkit.data.images import ImageConfig, SkipSample
from contrastkit.data.pairs import INDEX_KEY, PairSet, pair_offsets
from contrastkit.data.table import PairTable
from contrastkit.losses.base import declared_fields
from contrastkit.losses.clip import clip_pair_losses
from contrastkit.models.dual_encoder import DualEncoder
from contrastkit.train.bmm import fit_noise_model, noise_probability

if TYPE_CHECKING:
    from contrastkit.losses.base import PairLoss
    from contrastkit.train.config import RunConfig

__all__ = ["NoisyPairs", "NoisyPairsConfig", "check_noisy_pairs", "clean_probabilities", "pair_losses"]

NOISY_ABOVE = 0.5  # B > 0.5: the pair is called noisy (the reference's predict) and dropped in "drop"
_ORDER_TAG = 0x9A12  # the eval pass's pair order: a stream apart from the sampler's


@dataclass(frozen=True)
class NoisyPairsConfig:
    """``curation.noisy_pairs`` (module docstring): when to refit, how to use the clean probabilities.

    ``every``/``start``: steps between refits and the first refit (``None``: one epoch / ``every``);
    ``mode``: ``weight`` or ``drop``; ``normalize``: divide the weighted loss by ``Σ w``;
    ``posterior``: ``lookup`` or ``exact``; ``monotone`` (default true; false = the reference):
    flatten the lookup table left of its minimum too, so the lowest losses are never called noisy
    (:mod:`contrastkit.train.bmm`);
    ``max_iters``: EM iterations; ``eps_var``: variance floor of a component (``None``: a zero
    variance is an error); ``batch_size``: pairs per batch of the scoring pass (``None``:
    ``train.batch_size``); ``scale``: logit scale of the scoring loss.
    """

    every: int | None = None
    start: int | None = None
    mode: Literal["weight", "drop"] = "weight"
    normalize: bool = False
    posterior: Literal["lookup", "exact"] = "lookup"
    monotone: bool = True
    max_iters: int = 10
    eps_var: float | None = None
    batch_size: int | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        for name in ("every", "batch_size", "max_iters"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"curation.noisy_pairs.{name} must be >= 1, got {value}")
        if self.start is not None and self.start < 1:
            raise ConfigError(f"curation.noisy_pairs.start must be >= 1 (a step), got {self.start}")
        if self.eps_var is not None and not 0 < self.eps_var < 0.25:
            raise ConfigError(f"curation.noisy_pairs.eps_var must be in (0, 0.25), got {self.eps_var}")
        if self.scale is not None and not 0 < self.scale < float("inf"):
            raise ConfigError(f"curation.noisy_pairs.scale must be > 0 and finite, got {self.scale}")


def check_noisy_pairs(cfg: RunConfig, world: int = 1) -> None:
    """Refuse, before any data is read, a run config noisy pairs cannot serve."""
    noisy = cfg.curation.noisy_pairs
    if noisy is None:
        return
    where = "curation.noisy_pairs"
    if world > 1 and noisy.mode == "drop":
        raise ConfigError(
            f"{where}.mode=drop changes each process's batch size, which the cross-process loss of "
            f"this {world}-process run cannot take: use mode: weight"
        )
    if cfg.data.sources or cfg.data.name == "webdataset":
        raise ConfigError(f"{where} needs one indexed training set: not data.sources or webdataset shards")
    if len([m for m in cfg.data.modalities if m in cfg.model.towers]) < 2:
        raise ConfigError(f"{where} scores image–text (two-modality) pairs; data.modalities has fewer")
    if noisy.mode == "weight":
        accepts = set()
        if not cfg.loss.terms:
            accepts = set(declared_fields(cfg.loss.name))
        if "pair_weights" not in accepts:
            raise ConfigError(
                f"{where}.mode=weight needs a loss that takes per-pair weights (clip); "
                f"loss {cfg.loss.name if not cfg.loss.terms else 'terms'!r} does not: use mode: drop"
            )
        if cfg.scale.tile_size is not None:  # tiles keep row log-sum-exps only, no per-pair terms
            raise ConfigError(
                f"{where}.mode=weight conflicts with scale.tile_size={cfg.scale.tile_size}: the tiled "
                "loss takes no per-pair weights; unset scale.tile_size (scale.chunk_size is fine) "
                "or use mode: drop"
            )
        if world > 1 and cfg.scale.dist_loss != "local":
            raise ConfigError(
                f"{where}.mode=weight on {world} processes needs scale.dist_loss=local (each process "
                f"weights its own pairs' terms), got {cfg.scale.dist_loss!r}"
            )


@torch.no_grad()
def pair_losses(
    model: DualEncoder,
    source: PairSet | PairTable,
    scale: float,
    batch_size: int,
    seed: int = 0,
    image: ImageConfig | None = None,
    amp: bool = False,
    progress: bool = False,
    rank: int = 0,
    world: int = 1,
) -> np.ndarray:
    """Per-pair CLIP losses ``ℓ`` of every ``(image, caption)`` pair of ``source``, float64 in
    :meth:`PairSet.flat_captions` order (NaN for a pair a file source cannot read). ``model``
    must be in eval mode; its first two modalities are scored; ``image``: how a file source's
    images are decoded (evaluation transform). ``world > 1`` (inside a process group): process
    ``rank`` scores batches ``rank, rank + world, …`` of the same batches and the losses are
    summed over processes, so every process returns the same array as one process would."""
    n_caps = np.asarray([len(c) for c in source.captions], dtype=np.int64)
    first, out = pair_offsets(source.captions), np.full(int(n_caps.sum()), np.nan)
    order = np.random.default_rng([seed, _ORDER_TAG]).permutation(len(n_caps))
    device = next(model.parameters()).device
    total = int(sum(-(-int((n_caps > j).sum()) // batch_size) for j in range(int(n_caps.max()))))
    mine = -(-(total - rank) // world)
    bar = progress_bar(None, "noisy pairs: scoring", progress, total=mine, unit="batch", leave=False)
    count = -1
    for j in range(int(n_caps.max())):  # pass j: caption j of every image that has one
        rows = order[n_caps[order] > j]
        size = min(batch_size, len(rows))
        for lo in range(0, len(rows), size):
            count += 1
            if count % world != rank:  # another process's batch
                continue
            chunk = rows[lo : lo + size]
            full = np.concatenate([chunk, rows[: size - len(chunk)]])  # fixed size: fill from the start
            batch, ok = _batch(model, source, full, j, image, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                emb = model(batch)
            a, b = (emb[m].float() for m in model.modalities[:2])
            ell = clip_pair_losses(a, b, scale, allow_single=True).double().cpu().numpy()
            keep = ok[: len(chunk)]
            out[first[chunk[keep]] + j] = ell[: len(chunk)][keep]
            bar.update(1)
    bar.close()
    return out if world == 1 else _sum_over_processes(out, device)


def _sum_over_processes(out: np.ndarray, device: torch.device) -> np.ndarray:
    """Every process's scored pairs in one array (each pair is scored by exactly one process)."""
    import torch.distributed as dist

    scored = np.isfinite(out)
    t = torch.from_numpy(np.stack([np.where(scored, out, 0.0), scored.astype(np.float64)])).to(device)
    dist.all_reduce(t)  # adding zeros to one value is exact: the sum is that value
    total, hits = t.cpu().numpy()
    return np.where(hits > 0, total, np.nan)


def _batch(
    model: DualEncoder,
    source: PairSet | PairTable,
    rows: np.ndarray,
    j: int,
    image: ImageConfig | None,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """The model inputs of caption j of images ``rows`` and which rows are usable."""
    texts = [source.captions[i][j] for i in rows.tolist()]
    ok = np.asarray([bool(t.strip()) for t in texts])
    batch: dict[str, torch.Tensor] = {}
    for m in model.modalities[:2]:
        if m == "text":
            batch[m] = model.tokenize(texts)
        elif m == "attributes" and isinstance(source, PairSet) and source.attributes is not None:
            batch[m] = source.attributes[torch.from_numpy(rows)]
        elif m == "image" and isinstance(source, PairSet):
            batch[m] = source.images[torch.from_numpy(rows)]
        elif m == "image":
            batch[m] = _read_images(source, rows, image or ImageConfig(), ok)
        else:
            raise ConfigError(f"noisy pairs cannot score modality {m!r} of {source.name or 'this source'}")
    return {k: v.to(device) for k, v in batch.items()}, ok


def _read_images(table: PairTable, rows: np.ndarray, image: ImageConfig, ok: np.ndarray) -> torch.Tensor:
    """Evaluation-transform images of ``rows``; an unreadable one is marked in ``ok`` and stands
    in as a blank image (it is still a negative of the others, as a substitute is in training)."""
    out = []
    for r, i in enumerate(rows.tolist()):
        try:
            out.append(table.read(i, image))
        except SkipSample:
            ok[r] = False
            out.append(torch.zeros(3, image.size, image.size, dtype=torch.uint8))
    return torch.stack(out)


class NoisyPairs:
    """The noisy-pair state of a run: one clean probability per training pair (1 until the first
    fit), refitted on schedule (:meth:`due`, :meth:`refit`) and applied to batches (:meth:`apply`)."""

    def __init__(
        self,
        cfg: NoisyPairsConfig,
        source: PairSet | PairTable,
        train_batch_size: int,
        seed: int,
        image: ImageConfig | None = None,
        amp: bool = False,
    ) -> None:
        if not isinstance(source, (PairSet, PairTable)):
            raise ConfigError(
                f"curation.noisy_pairs needs an indexed training set, got {type(source).__name__}"
            )
        self.cfg, self.source, self.seed, self.image, self.amp = cfg, source, seed, image, amp
        self.every = cfg.every or max(1, len(source) // train_batch_size)  # one epoch of batches
        self.start = cfg.start or self.every
        self.batch_size = cfg.batch_size or train_batch_size
        self.n_pairs = sum(len(c) for c in source.captions)
        self.clean = np.ones(self.n_pairs)
        self.fitted_at: int | None = None
        self.fit: dict[str, float] = {}

    @classmethod
    def for_run(cls, cfg: RunConfig, source: object, world: int = 1) -> NoisyPairs | None:
        """The state ``cfg.curation.noisy_pairs`` asks for (``None`` when it is off)."""
        if cfg.curation.noisy_pairs is None:
            return None
        check_noisy_pairs(cfg, world)
        amp = cfg.train.precision == "bf16"
        t = cfg.train
        return cls(cfg.curation.noisy_pairs, source, t.batch_size, t.seed, cfg.data.image, amp)  # type: ignore[arg-type]

    def due(self, step: int) -> bool:
        """Refit after optimizer step ``step`` (1-based count of steps taken)?"""
        return step >= self.start and (step - self.start) % self.every == 0

    def refit(
        self, model: DualEncoder, loss: PairLoss, step: int, progress: bool = False
    ) -> dict[str, float]:
        """Score every pair with ``model``, fit the mixture, replace the clean probabilities;
        returns the metrics to log (``noisy_*``). The model is left in eval mode."""
        t0 = time.perf_counter()
        model.eval()
        rank, world = _process_group()
        ell = pair_losses(
            model,
            self.source,
            self._scale(loss),
            self.batch_size,
            self.seed,
            self.image,
            self.amp,
            progress,
            rank,
            world,
        )
        ok = np.isfinite(ell)
        try:
            scaling, mixture = fit_noise_model(ell[ok], self.cfg.max_iters, self.cfg.eps_var)
        except InputError as err:  # a fit that cannot be made never stops a run: keep the old weights
            warnings.warn(f"noisy pairs: no fit at step {step} ({err}); weights unchanged", stacklevel=2)
            return {"noisy_fit_failed": 1.0}
        clean = np.ones(self.n_pairs)
        clean[ok] = 1.0 - noise_probability(ell[ok], scaling, mixture, self.cfg.posterior, self.cfg.monotone)
        self.clean, self.fitted_at = clean, step
        self.fit = {
            "lo": scaling.lo,
            "hi": scaling.hi,
            **{f"alpha{k}": mixture.alphas[k] for k in (0, 1)},
            **{f"beta{k}": mixture.betas[k] for k in (0, 1)},
            "pi_noisy": mixture.weights[1],
        }
        return {
            "noisy_flagged": float(np.mean(clean < 1 - NOISY_ABOVE)),
            "noisy_mean_clean": float(clean.mean()),
            "noisy_pi": mixture.weights[1],
            "noisy_mean_loss": float(ell[ok].mean()),
            "noisy_seconds": time.perf_counter() - t0,
        }

    def _scale(self, loss: PairLoss) -> float:
        if self.cfg.scale is not None:
            return self.cfg.scale
        log_scale = getattr(loss, "log_scale", None)
        return float(log_scale.detach().exp()) if isinstance(log_scale, torch.Tensor) else 1 / 0.07

    def apply(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pop the batch's pair indices; after a fit, add ``pair_weights`` or drop noisy pairs."""
        index = batch.pop(INDEX_KEY, None)
        if index is None:
            raise InputError("noisy pairs: the batch has no pair indices (_pair); is pair_index set?")
        if self.fitted_at is None:
            return batch  # plain training until the first fit
        clean = self.clean[index.cpu().numpy()]
        if self.cfg.mode == "weight":
            if self.cfg.normalize:  # (1/N) Σ w'ℓ with w' = N·w/Σw is Σ wℓ / Σ w
                clean = clean * len(clean) / clean.sum()
            batch["pair_weights"] = torch.from_numpy(clean).float().to(index.device)
            return batch
        keep = clean >= 1 - NOISY_ABOVE
        if keep.sum() < 2:  # a contrastive loss needs two pairs: keep the two cleanest
            keep[np.argsort(-clean, kind="stable")[:2]] = True
        return _rows(batch, torch.from_numpy(keep).to(index.device), len(clean))

    def state_dict(self) -> dict:
        raw = base64.b64encode(self.clean.astype("<f8").tobytes()).decode("ascii")
        return {"n_pairs": self.n_pairs, "fitted_at": self.fitted_at, "fit": self.fit, "clean": raw}

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:
            raise ConfigError(
                "the checkpoint has no noisy-pair state: it was not written with curation.noisy_pairs"
            )
        if state.get("n_pairs") != self.n_pairs:
            raise ConfigError(
                f"this run's noisy-pair state covers {state.get('n_pairs')} pairs, the training set now "
                f"has {self.n_pairs}: resume it with the data it started with"
            )
        self.clean = np.frombuffer(base64.b64decode(state["clean"]), dtype="<f8").astype(np.float64)
        self.fitted_at, self.fit = state["fitted_at"], dict(state["fit"])


def _process_group() -> tuple[int, int]:
    """``(rank, world)`` of the initialised process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rows(batch: dict[str, torch.Tensor], keep: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """The batch without the dropped rows (pairwise ``weights [N, N]``: rows and columns)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n:
            v = v[keep]
            if k == "weights" and v.ndim == 2 and v.shape[1] == n:
                v = v[:, keep]
        out[k] = v
    return out


def clean_probabilities(run_dir: str | Path) -> np.ndarray:
    """The clean probability of every training pair in a run's newest checkpoint (flat pair order)."""
    from contrastkit.train.checkpoint import latest_checkpoint

    state = json.loads((latest_checkpoint(run_dir, fallback=False) / "state.json").read_text())
    noisy = state.get("extra", {}).get("noisy_pairs")
    if noisy is None:
        raise InputError(f"{run_dir} has no noisy-pair state (curation.noisy_pairs was not set)")
    return np.frombuffer(base64.b64decode(noisy["clean"]), dtype="<f8").astype(np.float64)
