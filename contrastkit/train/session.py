"""A training run's session: the loss, data, model, optimizer, schedule, logger and training-time
curation of one process, built from a :class:`~contrastkit.train.config.RunConfig` in the order that
keeps initial weights identical on every rank and on resume (the loss first: its errors need no
data; seeding before the model is built). :mod:`contrastkit.train.trainer` runs the loop over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from contrastkit.core.errors import ConfigError
from contrastkit.core.runtime import seed_everything, set_threads
from contrastkit.data import Source, open_split, source_captions
from contrastkit.data.pairs import PairSet
from contrastkit.losses import from_config as build_loss
from contrastkit.losses.base import PairLoss
from contrastkit.models.dual_encoder import DualEncoder, build_model
from contrastkit.train import setup, teacher
from contrastkit.train.class_prompts import class_prompt_ids
from contrastkit.train.config import RunConfig
from contrastkit.train.dist_towers import GradSync, tower_sync
from contrastkit.train.distill import frozen_teacher
from contrastkit.train.distributed import DistContext, broadcast_parameters
from contrastkit.train.feed import DataFeed
from contrastkit.train.guard import StepGuard, WeightSnapshot
from contrastkit.train.jest import Jest
from contrastkit.train.jigsaw import check_world
from contrastkit.train.logger import MetricsLogger
from contrastkit.train.noisy import NoisyPairs
from contrastkit.train.optim import build_optimizer, build_scheduler, param_groups
from contrastkit.train.previous import frozen_previous
from contrastkit.train.replay import StageTeacher, stage_teacher
from contrastkit.train.speed import apply_speed_options

__all__ = ["Session", "build_session"]


@dataclass
class Session:
    """Everything one process holds while a run trains, built from the config by
    :func:`build_session`."""

    cfg: RunConfig
    run_dir: Path
    device: torch.device
    train_set: Source
    model: DualEncoder
    loss: PairLoss  # the configured loss: checkpointed, optimised, clamped
    objective: PairLoss  # what is computed: ``loss`` or a tiled/cross-rank wrapper of it
    dist: DistContext
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    guard: StepGuard
    logger: MetricsLogger
    feed: DataFeed  # the training batches, skip totals and stream places
    snapshot: WeightSnapshot  # weights + optimizer state before a step, to undo a non-finite one
    towers: GradSync  # how gradients are averaged over ranks: DDP runners, FSDP shards, all-reduce
    noisy: NoisyPairs | None = None  # curation.noisy_pairs: per-pair clean probabilities
    jest: Jest | None = None  # curation.jest: the reference that picks the batch of a super-batch
    teacher: StageTeacher | None = None  # continual (coconut) stage: the previous stage, frozen
    distill_teacher: DualEncoder | None = None  # model.teacher: frozen, embeds every batch (distill)
    previous: DualEncoder | None = None  # model.previous: frozen, Sy-CON's past embeddings
    class_ids: torch.Tensor | None = None  # loss class_prompts: token ids of every class's prompt
    aux_log: dict[str, float] = field(default_factory=dict)  # the towers' auxiliary terms, last step


def build_session(
    cfg: RunConfig, run_dir: Path, fresh: bool, ctx: DistContext, device: torch.device
) -> Session:
    """The session of a fresh run (``fresh``: initial weights, assets written by rank 0) or of a
    resumed one (the model rebuilt from the run's assets; the checkpoint is loaded by the caller)."""
    set_threads(cfg.train.threads, cap=not fresh)  # a resumed run may come from a bigger machine
    seed_everything(cfg.train.seed)  # the same on every rank: identical initial weights
    # the loss first: its errors need no data (reading data draws no torch random numbers, so the
    # model's initial weights are the same in either order)
    loss = build_loss(cfg.loss)
    objective = setup.objective(cfg, loss, ctx)
    check_world(cfg, ctx.world)  # data.jigsaw: one process
    train_set = open_split(cfg.data, cfg.data.train_split, progress=cfg.train.progress and ctx.main)
    _check_modalities(cfg, train_set)
    setup.check_present(cfg, loss, getattr(train_set, "present", {}), ctx.world)
    model = _model(cfg, train_set, loss, run_dir, fresh, ctx)
    if fresh and not cfg.train.init_from and cfg.model.from_:
        setup.pretrained_scale(loss, cfg)
    model.to(device)
    loss.to(device)
    broadcast_parameters([model, loss], ctx)
    apply_speed_options(
        model, compile_towers=cfg.train.compile, channels_last=cfg.train.channels_last, device=device
    )
    towers = tower_sync(cfg, model, loss, ctx, device)  # train.dist_wrapper: before the optimizer
    groups = param_groups(model, loss, cfg.optim.weight_decay)
    optimizer = build_optimizer(towers.optim_config(cfg.optim), groups)
    towers.bind(optimizer)
    scheduler = build_scheduler(cfg.optim, optimizer, cfg.train.steps)
    logger = MetricsLogger(run_dir, tensorboard=cfg.train.tensorboard, enabled=ctx.main)
    return Session(
        cfg,
        run_dir,
        device,
        train_set,
        model,
        loss,
        objective,
        ctx,
        optimizer,
        scheduler,
        StepGuard(cfg.guard),
        logger,
        DataFeed(  # b3: a data config that carries the cached teacher embeddings
            train_set,
            teacher.b3_data(cfg, train_set, run_dir, ctx, device),
            ctx,
            pair_index=cfg.curation.noisy_pairs is not None,
        ),
        WeightSnapshot(optimizer),
        towers,
        NoisyPairs.for_run(cfg, train_set, ctx.world),
        Jest.for_run(cfg, model, train_set, ctx.rank, ctx.world),
        stage_teacher(cfg, device),
        distill_teacher=frozen_teacher(cfg, model, getattr(train_set, "captions", None), ctx.world, device),
        previous=frozen_previous(cfg, model, getattr(train_set, "captions", None), ctx.world, device),
        class_ids=class_prompt_ids(cfg, loss, model, train_set, device),
    )


def _check_modalities(cfg: RunConfig, train_set: Source) -> None:
    """Every modality ``data.modalities`` asks for is one the training set provides."""
    if "attributes" in cfg.data.modalities and getattr(train_set, "attributes", None) is None:
        raise ConfigError(
            f"data.modalities has 'attributes' but data set {cfg.data.name!r} provides none (Shapes does)"
        )
    have = list(getattr(train_set, "modalities", ("image", "text")))
    lacking = [m for m in cfg.data.modalities if m not in have]
    if lacking:
        raise ConfigError(f"data.modalities has {lacking} but data set {cfg.data.name!r} provides {have}")


def _model(
    cfg: RunConfig, train_set: Source, loss: PairLoss, run_dir: Path, fresh: bool, ctx: DistContext
) -> DualEncoder:
    """A fresh run's initial model (``train.init_from``: a source run's weights, all or only
    ``init_towers``; its assets written by rank 0), or a resumed run's, rebuilt from its assets."""
    if not fresh:
        return build_model(cfg.model, assets_dir=run_dir / "assets")
    write = run_dir if ctx.main else None
    if cfg.train.init_from and not cfg.train.init_towers:
        return setup.init_from(cfg, Path(cfg.train.init_from), loss, write)
    held = train_set.images if isinstance(train_set, PairSet) else None  # in memory: a built-in set
    model = build_model(cfg.model, texts=source_captions(train_set), images=held)
    if cfg.train.init_from:  # init_towers: these from the source, the rest exactly as from scratch
        setup.init_towers_from(cfg, model, Path(cfg.train.init_from), write)
    if ctx.main:
        model.save_assets(run_dir / "assets")
    return model
