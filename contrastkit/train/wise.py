"""WiSE-FT: weight-space interpolation between a run's initial and fine-tuned weights.

Wortsman et al., "Robust fine-tuning of zero-shot models" (2022): ``θ(α) = (1-α)·θ₀ + α·θ₁``
with θ₀ the weights training started from (e.g. a pretrained zero-shot model) and θ₁ the
fine-tuned ones. α = 0 and α = 1 return the endpoints *exactly* (copies, no arithmetic); integer
buffers (``num_batches_tracked``) come from the nearer endpoint.

θ₀ of a run is rebuilt by :func:`initial_model`: training seeds every RNG with ``train.seed``
right before building the model (data loading draws no torch random numbers), so building the
run's model config under the same seed gives the exact initial weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from contrastkit.core.errors import InputError
from contrastkit.core.progress import progress_bar, progress_enabled
from contrastkit.core.runtime import seed_everything
from contrastkit.data import load_split
from contrastkit.models.dual_encoder import DualEncoder, build_model
from contrastkit.train.checkpoint import load_tower_weights, load_weights
from contrastkit.train.trainer import load_run, load_run_config

__all__ = [
    "calibration_images",
    "initial_model",
    "interpolate_weights",
    "recalibrate_batchnorm",
    "wise_models",
]


def interpolate_weights(
    theta0: Mapping[str, torch.Tensor], theta1: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1-α)·θ₀ + α·θ₁`` per floating tensor; α ∈ [0, 1]; same keys and shapes required."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    if set(theta0) != set(theta1):
        diff = sorted(set(theta0) ^ set(theta1))
        raise InputError(f"the two state dicts differ in keys, first: {diff[0]!r}")
    out = {}
    for k, a in theta0.items():
        b = theta1[k]
        if a.shape != b.shape:
            raise InputError(f"{k!r}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        if alpha == 0.0 or alpha == 1.0 or not a.is_floating_point():
            out[k] = (a if alpha < 0.5 else b).clone()
        else:
            out[k] = torch.lerp(a, b.to(a.dtype), alpha)
    return out


def initial_model(run_dir: str | Path) -> DualEncoder:
    """The run's model as training started, in eval mode: for a fine-tuning run
    (``train.init_from``) the source checkpoint recorded in ``init_from.json``, else the
    from-scratch initialisation (same seed, same config and assets) — with ``train.init_towers``
    the recorded towers loaded into it."""
    cfg = load_run_config(run_dir)
    record = Path(run_dir) / "init_from.json"
    info = json.loads(record.read_text()) if record.is_file() else {}
    if info and not info.get("towers"):
        model = build_model(cfg.model, assets_dir=Path(run_dir) / "assets")
        load_weights(info["checkpoint"], model)
        return model.eval()
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, assets_dir=Path(run_dir) / "assets")
    if info:  # train.init_towers: the fresh init with those towers from the source checkpoint
        load_tower_weights(info["checkpoint"], model, tuple(info["towers"]))
    return model.eval()


def calibration_images(run_dir: str | Path, n: int, seed: int = 0) -> torch.Tensor:
    """Up to ``n`` training images of the run and ``n`` of its ``init_from`` source run (if any),
    seeded: the data both endpoints of the interpolation were fitted to."""
    run_dir = Path(run_dir)
    runs = [run_dir]
    record = run_dir / "init_from.json"
    if record.is_file():
        runs.append(Path(json.loads(record.read_text())["run"]))
    g = torch.Generator().manual_seed(seed)
    parts = []
    for r in runs:
        data = load_run_config(r).data
        images = load_split(data, data.train_split, progress_enabled()).images
        parts.append(images[torch.randperm(len(images), generator=g)[:n]])
    return torch.cat(parts)


@torch.no_grad()
def recalibrate_batchnorm(model: DualEncoder, images: torch.Tensor, batch_size: int = 128) -> int:
    """Re-estimate the image tower's batch-norm running statistics on ``images`` (exact averages
    over the batches, ``momentum=None``); returns the number of BN layers reset. Interpolated
    weights need this: averaging two networks' running statistics does not give the statistics of
    the averaged network (with BN, the un-recalibrated WiSE curve dips far below both endpoints)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    starts = progress_bar(range(0, len(images), batch_size), "recalibrate BN", unit="batch", leave=False)
    for i in starts:
        model.encode("image", images[order[i : i + batch_size]])
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()
    return len(bns)


def wise_models(run_dir: str | Path, alphas: list[float], calibration: torch.Tensor | None = None):
    """Yield ``(α, model)`` with WiSE-FT weights of the run for each α (one model, reloaded).
    With ``calibration`` images, batch-norm statistics are re-estimated for 0 < α < 1 (the
    endpoints stay exact)."""
    _, model, _, _ = load_run(run_dir)
    theta1 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    theta0 = initial_model(run_dir).state_dict()
    for a in alphas:
        model.load_state_dict(interpolate_weights(theta0, theta1, a))
        if calibration is not None and 0.0 < a < 1.0:
            recalibrate_batchnorm(model, calibration)
        yield a, model.eval()
