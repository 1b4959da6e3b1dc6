"""D-MCL — multistage contrastive learning: cluster the previous stages, restrict negatives, concatenate.

Paper: Zhang et al. 2024 (ECCV), "Learning the Unlearned: Mitigating Feature Suppression in
Contrastive Learning" (MCL). Reference: MajorDavidZhang/MCL ``cluster.py``, ``my_training/data.py``.

``curation.mcl`` turns a run into ``stages`` ordinary runs in its folder, ``RUN_DIR/stage-<t>/``:

1. stage 0 trains with the config as given (or is the existing run ``stage0``);
2. after stage ``t``: embed every training image with ``f_t`` (evaluation transform, the image
   tower's raw output), L2-normalise, k-means with ``K = clusters`` (scikit-learn
   ``MiniBatchKMeans``: batch ``kmeans_batch`` = 10⁶, ``kmeans_iters`` = 100, tol 1e-5, seeded by
   ``(train.seed, t)``) → ``c^(t)``, saved as ``RUN_DIR/clusters/kmeans-<t>.npy``;
3. stage ``t+1`` trains on group-pure batches (sampler ``mcl``) whose groups are the mixed-radix
   labels ``p = Σ_s c^(s)·K^(t−s)`` (``combine="all_stages"``; ``"current_only"`` = the reference's
   ``c^(t)`` alone), ``RUN_DIR/clusters/groups-<t+1>.npy`` (:mod:`contrastkit.data.mcl`). Every
   other setting is the config's, except ``train.steps``: it is the run's TOTAL budget, split over
   the trained stages (``⌊steps/S⌋`` each, the remainder to the last; a plain run with the same
   ``train.steps`` has the same training compute). ``init="base"`` (default, the reference: every
   stage starts from the same initialisation as stage 0 — the same seed's fresh weights, or
   ``train.init_from``);
   ``"previous"``: from stage ``t``'s weights;
4. evaluation concatenates the stages (:mod:`contrastkit.evaluation.multistage`):
   ``F(x) = norm(concat_t f_t(x))`` of RAW outputs (``per_stage_normalize``: normalise each first).

Resume: each stage resumes exactly from its own checkpoints, cluster files are written once, so
``resume(RUN_DIR)`` continues at the right stage and step. Stage configs name their group file
(and, with ``init="previous"``, the previous stage) by absolute path; resume re-points them at the
run folder where they are now, so a moved or copied run folder resumes. Under ``torchrun`` every
rank trains each stage (global batches group-pure; the same batches, groups and losses as one
process with a BatchNorm-free model, tested on 2 gloo processes); rank 0 clusters while the
others wait. Cost: one inference pass and one k-means per
stage; training cost ``stages ×``; inference ``stages ×``. Indexed single sources (built-in sets,
file tables), not ``data.sources`` mixtures or webdataset shards. An item a file source cannot
read gets label ``−1`` (never drawn).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.io import atomic_path
from contrastkit.core.runtime import resolve_device
from contrastkit.data.config import SamplerConfig
from contrastkit.data.images import ImageConfig, SkipSample
from contrastkit.data.mcl import COMBINE, combine_labels
from contrastkit.data.pairs import PairSet
from contrastkit.data.table import PairTable
from contrastkit.train.distributed import DistContext
from contrastkit.train.stages import StagePlan, resume_staged, train_staged

if TYPE_CHECKING:
    from contrastkit.models.dual_encoder import DualEncoder
    from contrastkit.train.config import RunConfig
    from contrastkit.train.trainer import Callback, TrainResult

__all__ = [
    "MCLConfig",
    "cluster_labels",
    "embed_images",
    "groups_path",
    "is_multistage",
    "resume_multistage",
    "stage_config",
    "stage_dirs",
    "train_multistage",
]

_KMEANS_TAG = 0x4B4D  # k-means seeds: default_rng([seed, tag, stage])


@dataclass(frozen=True)
class MCLConfig:
    """``curation.mcl`` (module docstring). ``stages``: stages trained in all, stage 0 included
    (1 = an ordinary run); ``clusters``: K of k-means; ``combine``: ``all_stages`` |
    ``current_only``; ``per_stage_normalize``: how evaluation concatenates; ``init``: ``base`` |
    ``previous``; ``stage0``: an existing run folder used as stage 0 (not trained again);
    ``kmeans_*``: MiniBatchKMeans' batch, iterations and tolerance; ``embed_batch``: images per
    forward pass when embedding the training set."""

    stages: int = 2
    clusters: int = 10
    combine: Literal["all_stages", "current_only"] = "all_stages"
    per_stage_normalize: bool = False
    init: Literal["base", "previous"] = "base"
    stage0: str | None = None
    kmeans_batch: int = 1_000_000
    kmeans_iters: int = 100
    kmeans_tol: float = 1e-5
    embed_batch: int = 256

    def __post_init__(self) -> None:
        for name in ("stages", "clusters", "kmeans_batch", "kmeans_iters", "embed_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"curation.mcl.{name} must be >= 1, got {getattr(self, name)}")
        if self.combine not in COMBINE:
            raise ConfigError(f"curation.mcl.combine must be one of {list(COMBINE)}, got {self.combine!r}")
        if self.init not in ("base", "previous"):
            raise ConfigError(f"curation.mcl.init must be 'base' or 'previous', got {self.init!r}")
        if not (math.isfinite(self.kmeans_tol) and self.kmeans_tol >= 0):
            raise ConfigError(f"curation.mcl.kmeans_tol must be finite and >= 0, got {self.kmeans_tol}")
        if self.stages * math.log2(max(self.clusters, 2)) >= 62:
            raise ConfigError(f"curation.mcl: {self.clusters}^{self.stages} groups do not fit in int64")


def stage_dirs(run_dir: str | Path, mcl: MCLConfig) -> list[Path]:
    """The run folder of every stage: ``RUN_DIR/stage-<t>`` (stage 0: ``stage0`` when given)."""
    root = Path(run_dir)
    dirs = [root / f"stage-{t}" for t in range(mcl.stages)]
    if mcl.stage0:
        dirs[0] = Path(mcl.stage0).expanduser()
    return dirs


def groups_path(run_dir: str | Path, stage: int) -> Path:
    """The group labels stage ``stage`` (>= 1) trains on."""
    return Path(run_dir) / "clusters" / f"groups-{stage}.npy"


def _kmeans_path(run_dir: Path, stage: int) -> Path:
    return run_dir / "clusters" / f"kmeans-{stage}.npy"


def is_multistage(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is a multistage (``curation.mcl``) run folder."""
    from contrastkit.train.setup import load_run_config

    return (Path(run_dir) / "config.yaml").is_file() and load_run_config(run_dir).curation.mcl is not None


def stage_config(cfg: RunConfig, run_dir: str | Path, stage: int) -> RunConfig:
    """The ordinary run config of stage ``stage`` of the multistage run ``cfg`` in ``run_dir``."""
    mcl = _mcl(cfg)
    root = Path(run_dir)
    trained = mcl.stages - (1 if mcl.stage0 else 0)
    first = mcl.stages - trained
    steps = cfg.train.steps // trained + (cfg.train.steps % trained if stage == mcl.stages - 1 else 0)
    if stage < first or steps < 1:
        raise ConfigError(
            f"curation.mcl: stage {stage} is not trained (train.steps={cfg.train.steps}, "
            f"{trained} trained stage(s))"
        )
    base = replace(
        cfg,
        name=f"stage-{stage}",
        out_dir=str(root),
        curation=replace(cfg.curation, mcl=None),
        train=replace(cfg.train, steps=steps),
    )
    if stage == 0:
        return base
    groups = SamplerConfig("mcl", {"groups": str(groups_path(root, stage).resolve())})
    init = cfg.train.init_from if mcl.init == "base" else str(stage_dirs(root, mcl)[stage - 1].resolve())
    return replace(base, data=replace(cfg.data, sampler=groups), train=replace(base.train, init_from=init))


def _mcl(cfg: RunConfig) -> MCLConfig:
    if cfg.curation.mcl is None:
        raise ConfigError(f"run {cfg.name!r} has no curation.mcl: it is not a multistage run")
    return cfg.curation.mcl


def check_multistage(cfg: RunConfig) -> None:
    """What ``curation.mcl`` refuses before anything is trained."""
    mcl = _mcl(cfg)
    if cfg.data.sources or cfg.data.name == "webdataset":
        raise ConfigError(
            "curation.mcl clusters one indexed training set: not data.sources mixtures or webdataset shards"
        )
    if "image" not in cfg.model.towers:
        raise ConfigError("curation.mcl clusters image embeddings: the model needs an image tower")
    trained = mcl.stages - (1 if mcl.stage0 else 0)
    if trained < 1 or cfg.train.steps < trained:
        raise ConfigError(
            f"curation.mcl: train.steps={cfg.train.steps} (the total) cannot be split over {trained} trained "
            "stage(s): every stage needs at least one step"
        )
    if mcl.stage0 and not (Path(mcl.stage0).expanduser() / "config.yaml").is_file():
        raise ConfigError(
            f"curation.mcl.stage0: {mcl.stage0} is not a contrastkit run folder (no config.yaml)"
        )


@torch.no_grad()
def embed_images(
    model: DualEncoder, source: PairSet | PairTable, image: ImageConfig | None = None, batch_size: int = 256
) -> np.ndarray:
    """L2-normalised image-tower outputs of every item of ``source`` (float32 ``[n, d]``, evaluation
    transform; a row a file source cannot read is NaN). ``model`` is put in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for lo in range(0, len(source.captions), batch_size):
        rows = range(lo, min(lo + batch_size, len(source.captions)))
        ok = torch.ones(len(rows), dtype=torch.bool)
        if isinstance(source, PairSet):
            x = source.images[lo : rows.stop]
        else:
            x, ok = _read(source, rows, image or ImageConfig())
        e = torch.nn.functional.normalize(model.encode("image", x.to(device)).float(), dim=-1).cpu()
        e[~ok] = float("nan")
        out.append(e)
    return torch.cat(out).numpy()


def _read(table: PairTable, rows: range, image: ImageConfig) -> tuple[torch.Tensor, torch.Tensor]:
    ok, imgs = torch.ones(len(rows), dtype=torch.bool), []
    for r, i in enumerate(rows):
        try:
            imgs.append(table.read(i, image))
        except SkipSample:  # a blank stand-in; the item gets label -1 (never drawn)
            ok[r] = False
            imgs.append(torch.zeros(3, image.size, image.size, dtype=torch.uint8))
    return torch.stack(imgs), ok


def cluster_labels(emb: np.ndarray, clusters: int, seed: int = 0, mcl: MCLConfig | None = None) -> np.ndarray:
    """k-means labels (int64) of the rows of ``emb`` (MiniBatchKMeans, module docstring); NaN rows: ``−1``."""
    from sklearn.cluster import MiniBatchKMeans

    mcl = mcl or MCLConfig(clusters=clusters)
    ok = np.isfinite(emb).all(axis=1)
    if ok.sum() < clusters:
        raise InputError(
            f"k-means with {clusters} clusters needs at least {clusters} items, got {int(ok.sum())}"
        )
    km = MiniBatchKMeans(
        n_clusters=clusters,
        batch_size=min(mcl.kmeans_batch, int(ok.sum())),
        max_iter=mcl.kmeans_iters,
        tol=mcl.kmeans_tol,
        random_state=seed,
        n_init=3,
    )
    labels = np.full(len(emb), -1, dtype=np.int64)
    labels[ok] = km.fit_predict(emb[ok].astype(np.float64))
    return labels


def _save(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, labels)


def _groups(root: Path, cfg: RunConfig, stage: int, ctx: DistContext) -> None:
    """Write the group labels of ``stage`` (clustering stage ``stage−1`` first) unless they exist."""
    mcl = _mcl(cfg)
    if ctx.main and not groups_path(root, stage).is_file():
        prev = _kmeans_path(root, stage - 1)
        if not prev.is_file():
            from contrastkit.data import open_split
            from contrastkit.train.trainer import load_run

            _, model, _, _ = load_run(stage_dirs(root, mcl)[stage - 1])
            model.to(resolve_device(cfg.train.device))
            source = open_split(cfg.data, cfg.data.train_split, progress=False)
            if not isinstance(source, (PairSet, PairTable)):
                raise ConfigError(f"curation.mcl needs an indexed training set, got {type(source).__name__}")
            emb = embed_images(model, source, cfg.data.image, mcl.embed_batch)
            seed = int(np.random.default_rng([cfg.train.seed, _KMEANS_TAG, stage - 1]).integers(2**31))
            _save(prev, cluster_labels(emb, mcl.clusters, seed, mcl))
        stages = [np.load(_kmeans_path(root, s)) for s in range(stage)]
        _save(groups_path(root, stage), combine_labels(stages, mcl.clusters, mcl.combine))
    ctx.barrier()


def _plan(cfg: RunConfig, root: Path) -> StagePlan:
    """The stages of multistage run ``cfg`` in ``root``: the group file written before each stage
    t ≥ 1; a given ``stage0`` run is not trained again."""
    mcl = _mcl(cfg)
    prepare = lambda t, ctx: _groups(root, cfg, t, ctx)  # noqa: E731
    given = lambda t: t == 0 and bool(mcl.stage0)  # noqa: E731
    return StagePlan(
        "multistage", stage_dirs(root, mcl), lambda t: stage_config(cfg, root, t), prepare, given
    )


def train_multistage(
    cfg: RunConfig, *, overwrite: bool = False, callbacks: Sequence[Callback] = ()
) -> TrainResult:
    """Train every stage of ``cfg`` (``curation.mcl`` set) in ``cfg.out_dir/cfg.name``; what
    :func:`contrastkit.train.train` does for such a config. ``TrainResult.step``: steps of all stages."""
    check_multistage(cfg)
    return train_staged(cfg, lambda root: _plan(cfg, root), lambda world: None, overwrite, callbacks)


def resume_multistage(
    run_dir: str | Path, *, callbacks: Sequence[Callback] = (), steps: int | None = None
) -> TrainResult:
    """Continue a multistage run at the stage and step where it stopped (stages resume exactly;
    each stage trains ``train.steps``)."""
    from contrastkit.train.setup import load_run_config

    root = Path(run_dir)
    cfg = load_run_config(root)
    check_multistage(cfg)
    return resume_staged(root, cfg, _plan(cfg, root), lambda world: None, steps, callbacks)
