"""Training: typed run configs, AdamW + warm-up/cosine, a step guard, atomic checkpoints, resume."""

from contrastkit.train.adapters import AdapterConfig, Heads, train_heads
from contrastkit.train.checkpoint import (
    CheckpointError,
    CheckpointState,
    CheckpointWriteError,
    MissingCheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    verify_checkpoint,
)
from contrastkit.train.config import CurationConfig, GuardConfig, OptimConfig, RunConfig, TrainConfig
from contrastkit.train.guard import StepGuard
from contrastkit.train.logger import MetricsLogger, read_metrics
from contrastkit.train.noisy import NoisyPairs, NoisyPairsConfig, clean_probabilities, pair_losses
from contrastkit.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from contrastkit.train.trainer import (
    Callback,
    TrainResult,
    load_run,
    load_run_config,
    resume,
    train,
)
from contrastkit.train.wise import initial_model, interpolate_weights, wise_models

__all__ = [
    "AdapterConfig",
    "Callback",
    "CheckpointError",
    "CheckpointState",
    "CheckpointWriteError",
    "CurationConfig",
    "GuardConfig",
    "Heads",
    "MetricsLogger",
    "MissingCheckpointError",
    "NoisyPairs",
    "NoisyPairsConfig",
    "OptimConfig",
    "RunConfig",
    "StepGuard",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "build_scheduler",
    "clean_probabilities",
    "initial_model",
    "interpolate_weights",
    "latest_checkpoint",
    "load_checkpoint",
    "load_run",
    "load_run_config",
    "load_weights",
    "lr_factor",
    "pair_losses",
    "param_groups",
    "read_metrics",
    "resume",
    "save_checkpoint",
    "train",
    "train_heads",
    "verify_checkpoint",
    "wise_models",
]
