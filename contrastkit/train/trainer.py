"""The training loop: config → batches → model → loss → guarded step → checkpoint.

>>> from contrastkit.train import RunConfig, train
>>> result = train(RunConfig.tiny(out_dir="/tmp/runs"))

``train`` starts a run in ``out_dir/name``; ``resume(run_dir)`` continues the newest checkpoint
exactly (same weights, optimizer moments, schedule, RNG and data position as an uninterrupted
run). A pair loss gets the model's first two modalities (``loss(x, y, **aux)``; a one-tower model:
the modality and its view 1, or views 0 and 1 when the batch carries views only); a
:class:`~contrastkit.losses.base.MultiLoss` gets every embedding the model produced — modalities,
views ``"image@v"`` and momentum outputs ``"<key>:ema"`` — as ``loss(emb, **aux)``, with ``aux``
the batch fields it ``accepts`` (docs/architecture.md; the embedding and the objective of a step
are :mod:`contrastkit.train.forward`'s); with ``data.jigsaw``, the jigsaw loss gets
the image tower's cell embeddings alone (:mod:`contrastkit.train.jigsaw`), and with
``model.previous`` the batch carries the earlier run's ``past_x``/``past_y``
(:mod:`contrastkit.train.previous`). After every optimizer step the loss's
constraints are applied and the model's momentum encoder (if any) is updated. Upper layers add
periodic work (e.g. zero-shot tracking) through ``callbacks`` — functions
``(step, model) -> dict of metrics`` — so this module never imports evaluation code.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml

from contrastkit.core.config import to_dict
from contrastkit.core.errors import ConfigError, TrainingDivergedError
from contrastkit.core.io import atomic_write_text, check_writable_dir
from contrastkit.core.progress import progress_bar, progress_default
from contrastkit.core.runtime import check_threads, resolve_device
from contrastkit.losses import from_config as build_loss
from contrastkit.losses.base import PairLoss
from contrastkit.models.aux import pop_aux_losses
from contrastkit.models.dual_encoder import DualEncoder, build_model
from contrastkit.models.pretrained import check_files
from contrastkit.scale import backward_through_chunks
from contrastkit.train import continual, multistage, setup
from contrastkit.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from contrastkit.train.config import RunConfig
from contrastkit.train.distill import teacher_fields
from contrastkit.train.distributed import (
    all_mean,
    all_true,
    init_from_env,
)
from contrastkit.train.forward import compute_loss, embed_batch, loss_pair, with_aux_losses
from contrastkit.train.guard import all_finite, module_tensors
from contrastkit.train.logger import read_metrics
from contrastkit.train.modulation import modulate
from contrastkit.train.previous import past_fields
from contrastkit.train.rundir import (
    RunLock,
    agreed_checkpoint,
    auto_resume,
    exists_message,
    run_folder,
    start_folder,
)
from contrastkit.train.session import Session, build_session
from contrastkit.train.setup import load_run_config

__all__ = ["Callback", "TrainResult", "load_run", "load_run_config", "resume", "train"]

Callback = tuple[int, Callable[[int, DualEncoder], dict[str, float]]]  # (every n steps, fn)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    step: int
    last_loss: float
    skipped: int
    seconds: float
    already_finished: bool = False  # resume found nothing to train: the numbers are the run's last logged


def _device(name: str) -> torch.device:
    return resolve_device(name)  # a device this machine lacks is a ConfigError, not a late traceback


def train(cfg: RunConfig, *, overwrite: bool = False, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Start run ``cfg.out_dir/cfg.name`` and train it for ``cfg.train.steps`` steps.

    Under ``torchrun`` (or inside an initialised process group) every rank calls this; rank 0
    locks and writes the run folder, logs and checkpoints (:mod:`contrastkit.train.rundir`).
    With ``train.auto_resume``, a folder that already holds this config is resumed (:func:`resume`).
    """
    if cfg.train.auto_resume:  # rank 0 reads the folder; every rank follows its verdict
        run_dir, ctx = run_folder(cfg.out_dir, cfg.name), init_from_env(_device(cfg.train.device))
        if auto_resume(run_dir, cfg, ctx, overwrite):
            return resume(run_dir, callbacks=callbacks)
    if cfg.curation.mcl is not None:  # multistage: its stages are ordinary runs in the folder
        return multistage.train_multistage(cfg, overwrite=overwrite, callbacks=callbacks)
    if cfg.continual is not None and cfg.continual.stage is None:  # continual: stages are runs too
        return continual.train_continual(cfg, overwrite=overwrite, callbacks=callbacks)
    run_dir = run_folder(cfg.out_dir, cfg.name)
    check_threads(cfg.train.threads)
    if cfg.train.init_from:
        setup.check_init_from(Path(cfg.train.init_from), cfg)
    for modality, tower in cfg.model.towers.items():  # pretrained files: before any data is read
        check_files(tower.params, f"model.towers.{modality}.params")
    setup.check_config(cfg)
    device = _device(cfg.train.device)
    ctx = init_from_env(device)
    setup.check_batch_split(cfg, ctx.world)
    if ctx.main:
        check_writable_dir(cfg.out_dir)
    with RunLock(run_dir) if ctx.main else nullcontext(), progress_default(cfg.train.progress and ctx.main):
        exists = (run_dir / "checkpoints").exists() or (run_dir / "config.yaml").exists()
        config_yaml = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        start_folder(run_dir, config_yaml, ctx, exists, overwrite, exists_message(run_dir) if exists else "")
        try:
            s = build_session(cfg, run_dir, fresh=True, ctx=ctx, device=device)
        except BaseException:  # nothing trained yet: leave no folder that blocks the next attempt
            if ctx.main:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        return _fit(s, start=0, callbacks=callbacks)


def resume(
    run_dir: str | Path, *, callbacks: Sequence[Callback] = (), steps: int | None = None
) -> TrainResult:
    """Continue a run from its newest checkpoint, exactly as if it had never stopped. A run that
    stopped before its first checkpoint starts again from step 0 with its saved config.

    ``steps`` sets a new total ``train.steps`` (above the checkpoint's step): it extends a finished
    run, or changes the length of an unfinished one, and is saved in ``config.yaml``. From the
    checkpoint's step on, the learning-rate schedule (warm-up, cosine decay) and the momentum
    schedule follow the new total; the steps already taken followed the old one, so the weights
    differ from a run configured with the new total from the start. A finished run resumed without
    a larger ``steps`` trains nothing and reads no data: the result has ``already_finished`` set
    and the run's last logged loss.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if cfg.curation.mcl is not None:
        return multistage.resume_multistage(run_dir, callbacks=callbacks, steps=steps)
    if cfg.continual is not None and cfg.continual.stage is None:
        return continual.resume_continual(run_dir, callbacks=callbacks, steps=steps)
    if steps is not None:
        cfg = replace(cfg, train=replace(cfg.train, steps=steps))  # validates: steps >= 1
    device = _device(cfg.train.device)
    ctx = init_from_env(device)
    with RunLock(run_dir) if ctx.main else nullcontext(), progress_default(cfg.train.progress and ctx.main):
        ckpt = agreed_checkpoint(run_dir, ctx)  # rank 0's choice: every rank loads the same step
        done = 0 if ckpt is None else int(ckpt.name[5:])  # step_00000500
        if steps is not None and steps <= done:
            raise ConfigError(f"train.steps={steps} must be above step {done}, where run {run_dir} stopped")
        if done >= cfg.train.steps:
            return _finished(run_dir, done)
        setup.check_config(cfg)  # e.g. a data folder moved since the run started: before reading data
        if steps is not None and ctx.main:
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if ckpt is None:
            warnings.warn(f"{run_dir} has no checkpoint yet: starting it from step 0", stacklevel=2)
            s = build_session(cfg, run_dir, fresh=True, ctx=ctx, device=device)
            if ctx.main:
                s.logger.truncate_after(0)
            return _fit(s, start=0, callbacks=callbacks)
        s = build_session(cfg, run_dir, fresh=False, ctx=ctx, device=device)
        state = load_checkpoint(ckpt, s.model, s.loss, s.optimizer, s.scheduler)
        if steps is not None:
            _follow_schedule(s)
        s.guard.load_state_dict(state.extra["guard"])
        s.feed.load_state_dict(state.extra.get("data", {}))
        if s.noisy is not None:
            s.noisy.load_state_dict(state.extra.get("noisy_pairs"))
        if ctx.main:
            s.logger.truncate_after(state.step)
        return _fit(s, start=state.step, callbacks=callbacks)


def _finished(run_dir: Path, done: int) -> TrainResult:
    """What resuming a finished run reports, without training: its last logged loss and skips."""
    rows = [r for r in read_metrics(run_dir) if "loss" in r and r.get("step", 0) <= done]
    last = rows[-1] if rows else {}
    loss, skipped = float(last.get("loss", math.nan)), int(last.get("skipped_total", 0))
    return TrainResult(run_dir, done, loss, skipped, 0.0, already_finished=True)


def _follow_schedule(s: Session) -> None:
    """After a checkpoint of a run with another total was loaded: set the learning rates of the
    next step from the new schedule (the saved ones came from the old total's schedule)."""
    sched = s.scheduler
    for group, base, fn in zip(s.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * fn(sched.last_epoch)


def load_run(run_dir: str | Path) -> tuple[RunConfig, DualEncoder, PairLoss, Path]:
    """A trained run's config, model and loss (newest checkpoint's weights), in eval mode."""
    from contrastkit.train.checkpoint import load_weights

    cfg = load_run_config(run_dir)
    ckpt = latest_checkpoint(run_dir, fallback=False)  # evaluating a damaged checkpoint is an error
    model = build_model(cfg.model, assets_dir=Path(run_dir) / "assets")
    loss = build_loss(cfg.loss)
    load_weights(ckpt, model, loss)
    return cfg, model.eval(), loss.eval(), ckpt


def _step(s: Session, batch: dict[str, torch.Tensor], step: int) -> tuple[float, float, str | None]:
    """One guarded optimisation step (0-based ``step``); returns (loss, grad norm, skip reason or None).

    Every decision (skip or not) is taken on values that all ranks share — the mean loss, the
    averaged gradients' norm — so ranks never diverge or wait on each other's collectives.
    """
    s.model.train()
    pop_aux_losses(s.model)  # terms of forwards outside a step (none in practice) are not this step's
    emb, cached = embed_batch(s, batch)
    if s.distill_teacher is not None:  # model.teacher: its embeddings of this batch (teacher_x/y)
        batch = {**batch, **teacher_fields(s.distill_teacher, batch, s.model.modalities[:2])}
    if s.previous is not None:  # model.previous: the earlier run's embeddings of this batch (sycon)
        batch = {**batch, **past_fields(s.previous, batch, loss_pair(s, batch))}
    loss_val, grad_norm = float("nan"), float("nan")
    if not all_true(all(bool(torch.isfinite(e).all()) for e in emb.values()), s.dist):
        reason: str | None = "non-finite embeddings"
    else:
        loss = with_aux_losses(s, compute_loss(s, emb, batch))
        loss_val = all_mean(float(loss.detach()), s.dist)  # local forms: the mean is the global loss
        reason = s.guard.check_loss(loss_val)
        if reason is None:
            loss.backward()
            if cached is not None:
                amp = s.cfg.train.precision == "bf16"
                with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=amp), s.towers.step():
                    final = s.towers.final if s.towers.wrapped else None  # the syncing chunks
                    with s.towers.no_sync():
                        backward_through_chunks(s.model, batch, cached, final=final)
            s.towers.average()  # train.dist_wrapper: what DDP/FSDP left, or everything (allreduce)
            mod = s.cfg.train.modulation
            if mod is not None:  # R-OGM-GE: each tower's gradient × k_u (+ noise), logged as modulation/*
                t = s.cfg.train
                s.aux_log.update(modulate(mod, s.model, emb, batch, step, t.steps, t.seed, s.dist))
            params = [p for g in s.optimizer.param_groups for p in g["params"]]
            clip = s.cfg.optim.grad_clip or float("inf")
            grad_norm = s.towers.clip_grad_norm(params, clip)
            reason = s.guard.check_grad_norm(grad_norm)
    if reason is None:
        s.snapshot.take()
        s.optimizer.step()
        if not all_true(s.snapshot.finite(), s.dist):  # undo it: never carry non-finite weights on
            s.snapshot.restore()
            reason = "non-finite weights or optimizer state after the step (undone)"
    if reason is None:
        s.loss.after_optimizer_step()
        s.model.after_optimizer_step(step, s.cfg.train.steps)
    s.optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # a skipped step advances the schedule without optimizer.step()
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        s.scheduler.step()
    return loss_val, grad_norm, reason


def _step_seed(seed: int, step: int, rank: int) -> int:
    """Dropout & co. draw from a generator seeded by (seed, step, rank): the random stream of a
    step does not depend on how the run got there, so resume is exact on any number of ranks."""
    return (seed * 1_000_003 + step) * 1_009 + rank


def _record(
    s: Session,
    step: int,
    loss_val: float,
    grad_norm: float,
    reason: str | None,
    times: tuple[float, float, float],
) -> float:
    """Log a step (rank 0 writes); returns samples/s of the global batch."""
    t0, t1, t2 = times
    rate = s.cfg.train.batch_size / max(t2 - t0, 1e-9)
    cfg = s.cfg.train
    if step % cfg.log_every == 0 or step == cfg.steps or reason is not None:
        s.logger.log(
            step,
            {
                "loss": loss_val,
                "lr": s.scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                **s.loss.log_values(),
                **s.model.log_values(),
                **s.aux_log,  # the towers' auxiliary loss terms of this step (already in "loss")
                "data_time": t1 - t0,
                "step_time": t2 - t1,
                "samples_per_s": rate,
                "skipped_total": s.guard.total,
                **s.feed.skips.log_values(),
                **(s.jest.last if s.jest is not None else {}),  # mean score: selected rows vs all
                **({"skip_reason": reason} if reason else {}),
            },
        )
    return rate


def _checkpoint(s: Session, step: int) -> None:
    finite = all_true(all_finite(module_tensors(s.model, s.loss)), s.dist)  # FSDP: each rank its rows
    if not finite:  # never replace a good checkpoint with this
        raise TrainingDivergedError(
            f"weights or buffers are non-finite at step {step}; checkpoint not written (the newest good "
            f"one is kept). Last skipped step: {s.guard.last_reason or 'none'}"
        )
    data_state = s.feed.state_dict()
    model, optimizer = s.towers.for_saving(s.optimizer)  # FSDP: every rank gathers what rank 0 writes
    if s.dist.main:
        save_checkpoint(
            s.run_dir / "checkpoints",
            step,
            model,
            s.loss,
            optimizer,
            s.scheduler,
            {"guard": s.guard.state_dict(), "batches_consumed": step, "data": data_state}
            | ({"noisy_pairs": s.noisy.state_dict()} if s.noisy is not None else {}),
            keep=s.cfg.train.keep_checkpoints,
        )
    s.dist.barrier()


def _next_batch(s: Session, batches: Iterator[dict], step: int) -> dict[str, torch.Tensor]:
    """The step's batch on the device: pair weights or noisy pairs dropped (curation.noisy_pairs),
    and under JEST the sub-batch the reference and the learner find learnable."""
    batch = s.feed.take(next(batches), s.device)
    if s.noisy is not None:  # pair weights, or noisy pairs dropped (after the first fit)
        batch = s.noisy.apply(batch)
    if s.jest is not None:
        batch = s.jest.select(s.model, s.loss, batch, step)
    return batch


def _after_step(s: Session, step: int, callbacks: Sequence[Callback], shown: bool) -> None:
    """After step ``step``: the noisy-pair refit when due, callbacks, the all-skipped check and
    the checkpoint, in that order (the checkpoint holds the new fit)."""
    cfg = s.cfg.train
    if s.noisy is not None and s.noisy.due(step):
        s.logger.log(step, s.noisy.refit(s.model, s.loss, step, shown))
        s.guard.ema = None  # new pair weights, a new loss level: the spike baseline restarts
    for every, fn in callbacks:
        if s.dist.main and (step % every == 0 or step == cfg.steps):
            s.logger.log(step, fn(step, s.model))
    if step == cfg.steps and s.guard.good_steps == 0:
        raise TrainingDivergedError(
            f"every step of this run was skipped ({s.guard.total}); last: {s.guard.last_reason}. "
            "Nothing was learned and the final checkpoint is not written"
        )
    if step % cfg.ckpt_every == 0 or step == cfg.steps:
        _checkpoint(s, step)


def _fit(s: Session, start: int, callbacks: Sequence[Callback]) -> TrainResult:
    cfg = s.cfg.train
    if callbacks and s.towers.wrapped and cfg.dist_wrapper == "fsdp":  # they run on rank 0 alone
        raise ConfigError("per-step callbacks cannot run with sharded towers (train.dist_wrapper=fsdp)")
    data = s.cfg.data
    text = "text" in data.modalities
    loader = s.feed.loader(
        s.model.tokenize if text else None,
        s.model.count_truncated if text else None,
        cfg.batch_size if s.jest is None else s.jest.super_batch,  # JEST: a super-batch per step
        cfg.seed,
        start,
        s.device,
    )
    shown = cfg.progress and s.dist.main
    bar = progress_bar(None, s.cfg.name, shown, total=cfg.steps, initial=start, unit="step")
    t_begin, step, loss_val = time.perf_counter(), start, float("nan")
    batches = iter(loader)
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            batch = _next_batch(s, batches, step)
            t1 = time.perf_counter()
            torch.manual_seed(_step_seed(cfg.seed, step, s.dist.rank))
            loss_val, grad_norm, reason = _step(s, batch, step)
            s.guard.record(step + 1, loss_val, reason)
            step += 1
            rate = _record(s, step, loss_val, grad_norm, reason, (t0, t1, time.perf_counter()))
            scale = s.loss.log_values().get("logit_scale", float("nan"))
            bar.set_postfix(
                loss=f"{loss_val:.4f}",
                scale=f"{scale:.2f}",
                sps=f"{rate:.0f}",
                skipped=s.guard.total,
                bad_data=s.feed.skips.skipped,
                refresh=False,
            )
            bar.update(1)
            _after_step(s, step, callbacks, shown)
        s.logger.hparams(
            to_dict(s.cfg), {"hparam/last_loss": loss_val, "hparam/skipped_steps": s.guard.total}
        )
    finally:
        bar.close()
        s.logger.close()
    return TrainResult(s.run_dir, step, loss_val, s.guard.total, time.perf_counter() - t_begin)
