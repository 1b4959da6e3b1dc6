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

from collections.abc import Mapping
from pathlib import Path

import torch

from contrastkit.core.errors import InputError
from contrastkit.core.runtime import seed_everything
from contrastkit.models.dual_encoder import DualEncoder, build_model
from contrastkit.train.trainer import load_run, load_run_config

__all__ = ["initial_model", "interpolate_weights", "wise_models"]


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
    """The run's model as training started (same seed, same config and assets), in eval mode."""
    cfg = load_run_config(run_dir)
    seed_everything(cfg.train.seed)
    return build_model(cfg.model, assets_dir=Path(run_dir) / "assets").eval()


def wise_models(run_dir: str | Path, alphas: list[float]):
    """Yield ``(α, model)`` with WiSE-FT weights of the run for each α (one model, reloaded)."""
    _, model, _, _ = load_run(run_dir)
    theta1 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    theta0 = initial_model(run_dir).state_dict()
    for a in alphas:
        model.load_state_dict(interpolate_weights(theta0, theta1, a))
        yield a, model.eval()
