"""Training-step timing shared by the benchmarks: sessions built as a run builds them
(:func:`contrastkit.train.session.build_session`, in a temporary run folder), stepped by the
trainer's own step (towers, loss, backward, clipping, optimiser) on pre-drawn batches, so data
loading is not timed, and interleaved in one process (:func:`_measure.interleaved`)."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _measure import TIMING, interleaved, set_mmap_threshold


def stepper(s: Any, n_batches: int) -> Callable[[], None]:
    """A no-argument call running session ``s``'s next step on ``n_batches`` pre-drawn batches in
    turn, seeded as the trainer seeds it; ``call.skipped`` counts the steps the guard skipped."""
    import torch

    from contrastkit.train.trainer import _step, _step_seed

    text = "text" in s.cfg.data.modalities
    tokenize, truncated = (s.model.tokenize, s.model.count_truncated) if text else (None, None)
    it = iter(s.feed.loader(tokenize, truncated, s.cfg.train.batch_size, s.cfg.train.seed, 0, s.device))
    batches = [s.feed.take(next(it), s.device) for _ in range(n_batches)]
    del it  # stops loader workers, if any

    def call() -> None:
        torch.manual_seed(_step_seed(s.cfg.train.seed, call.step, 0))
        *_, reason = _step(s, batches[call.step % n_batches], call.step)
        call.step += 1
        call.skipped += reason is not None

    call.step = call.skipped = 0  # type: ignore[attr-defined]
    return call


def step_times(
    cfgs: dict[str, Any], warmup: int, rounds: int, steps: int
) -> tuple[dict[str, list[float]], int]:
    """Seconds per training step of each run config in ``cfgs`` (``{arm: RunConfig}``), one value
    per round: ``warmup`` untimed steps each (lazy modules, optimizer state, allocator pools), then
    ``rounds`` rounds of ``steps`` steps per arm in rotated order. Returns the times and the number
    of skipped steps. ``train.steps`` is raised to the steps run, so no schedule runs out."""
    from contrastkit.core.runtime import resolve_device
    from contrastkit.train.distributed import DistContext
    from contrastkit.train.session import build_session

    set_mmap_threshold(TIMING)  # large temporaries reused from the heap, as in training
    total = warmup + rounds * steps
    calls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm, cfg in cfgs.items():
            train = dataclasses.replace(cfg.train, steps=max(cfg.train.steps, total))
            cfg = dataclasses.replace(cfg, train=train)
            run_dir = Path(tmp) / arm
            run_dir.mkdir()
            s = build_session(cfg, run_dir, True, DistContext(), resolve_device(cfg.train.device))
            calls[arm] = stepper(s, steps)
        for call in calls.values():
            for _ in range(warmup):
                call()
        times = interleaved(calls, rounds, steps)
    return times, sum(c.skipped for c in calls.values())  # type: ignore[attr-defined]
