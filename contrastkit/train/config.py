"""Typed configuration of a training run (declared once; each section has a tiny variant)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from contrastkit.core.errors import ConfigError
from contrastkit.core.runtime import check_device_name, check_seed
from contrastkit.data.config import DataConfig
from contrastkit.losses.base import LossConfig
from contrastkit.models.dual_encoder import ModelConfig
from contrastkit.scale.config import ScaleConfig
from contrastkit.train.continual import ContinualConfig
from contrastkit.train.jest import JestConfig
from contrastkit.train.modulation import ModulationConfig, check_modulation
from contrastkit.train.multistage import MCLConfig
from contrastkit.train.noisy import NoisyPairsConfig

__all__ = [
    "DIST_WRAPPERS",
    "MAX_LR",
    "OPTIM_IMPLS",
    "CurationConfig",
    "GuardConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
]

MAX_LR = 10.0  # OptimConfig's docstring says why
OPTIM_IMPLS = ("auto", "for_loop", "foreach", "fused")
DIST_WRAPPERS = ("ddp", "fsdp", "allreduce")  # train.dist_wrapper (contrastkit.train.dist_towers)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio · lr``.

    Weight decay applies to matrices only (not biases, norms, or the loss's temperature/bias).
    ``grad_clip``: max global gradient norm (``None``: no clipping, the norm is still logged).

    Every number must be finite. ``lr`` is at most :data:`MAX_LR` (10): Adam-family updates move
    each weight by about ``lr`` per step whatever the gradient's scale, so an ``lr`` above 10 only
    ever diverges (useful values are 1e-5 … 1e-1), and a huge one overflows float32 in the
    scheduler. ``eps`` (added to Adam's denominator) must be > 0 and at most 1.

    ``impl``: how AdamW runs its update — ``for_loop`` (one parameter at a time), ``foreach``
    (grouped multi-tensor kernels), ``fused`` (one fused kernel per dtype/device), or ``auto``
    (torch's choice: ``foreach`` on CUDA, ``for_loop`` on CPU). The same update, computed in another
    order: results agree to float rounding. Measured on the demo in docs/performance.md.
    """

    lr: float = 2e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    impl: Literal["auto", "for_loop", "foreach", "fused"] = "auto"

    def __post_init__(self) -> None:
        if self.impl not in OPTIM_IMPLS:
            raise ConfigError(f"optim.impl must be one of {list(OPTIM_IMPLS)}, got {self.impl!r}")
        if not 0 < self.lr <= MAX_LR:
            raise ConfigError(f"optim.lr must be > 0 and <= {MAX_LR:g} (a finite step size), got {self.lr}")
        if not 0 < self.eps <= 1:
            raise ConfigError(f"optim.eps must be > 0 and <= 1, got {self.eps}")
        if not math.isfinite(self.weight_decay):
            raise ConfigError(f"optim.weight_decay must be finite, got {self.weight_decay}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("optim: weight_decay and warmup_steps must be >= 0, min_lr_ratio in [0, 1]")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be in [0, 1), got {self.betas}")
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise ConfigError(f"optim.grad_clip must be > 0 and finite, or null, got {self.grad_clip}")


@dataclass(frozen=True)
class GuardConfig:
    """Skip steps whose loss/gradients are non-finite or whose loss spikes.

    A spike is ``loss − EMA > (spike_factor − 1)·|EMA|`` (i.e. ``loss > spike_factor × EMA`` for a
    positive loss; also meaningful for losses that go negative) once ``spike_warmup`` good steps
    have set the EMA. Training stops with :class:`TrainingDivergedError` after ``max_consecutive`` skips in a
    row or ``max_total`` skips overall.
    """

    spike_factor: float = 4.0
    spike_warmup: int = 50
    ema_decay: float = 0.95
    max_consecutive: int = 10
    max_total: int = 100

    def __post_init__(self) -> None:
        if not self.spike_factor > 1:
            raise ConfigError(f"guard.spike_factor must be > 1, got {self.spike_factor}")
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"guard.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.max_consecutive < 1 or self.max_total < 1:
            raise ConfigError("guard.max_consecutive and guard.max_total must be >= 1")
        if self.spike_warmup < 0:
            raise ConfigError(f"guard.spike_warmup must be >= 0, got {self.spike_warmup}")


@dataclass(frozen=True)
class TrainConfig:
    """Length, batch, seed, precision, device and threads of a run, with its logging and
    checkpoint cadence.

    Speed options (:mod:`contrastkit.train.speed`; measured on the demo in docs/performance.md):
    ``compile`` compiles each tower's forward with ``torch.compile`` (state-dict keys unchanged;
    without a C++ compiler the run warns and trains uncompiled); ``channels_last`` stores image
    towers in the channels-last memory format. Both change float rounding, not what is computed.
    ``channels_last`` is on by default (the demo's step 1.1–1.2× faster on CPU; a no-op for models
    without 4-d weights); the configs behind the studies published in docs/ set it to false,
    because their numbers were measured before it became the default.

    ``auto_resume``: a start (not ``--resume``) that finds its run folder holding the same config
    resumes its newest checkpoint exactly (from step 0 if it has none yet), as a restart under
    ``torchrun --max-restarts`` needs; a folder of another config is still an error. Off (the
    default): an existing folder is an error unless ``--overwrite`` (docs/distributed.md).

    ``dist_wrapper`` (several processes only): how the towers' gradients are averaged —
    ``ddp`` (each trainable tower + projection in ``DistributedDataParallel``, all-reduce overlapped
    with the backward), ``fsdp`` (towers + projections sharded with FSDP2 ``fully_shard``: each rank
    holds 1/world of their weights, gradients and optimizer moments) or ``allreduce`` (one flat
    all-reduce after the backward). The same averaged gradients (:mod:`contrastkit.train.dist_towers`).
    """

    steps: int = 800
    batch_size: int = 256
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = "auto"
    threads: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    progress: bool = True
    tensorboard: bool = True
    # fine-tune: start from the newest checkpoint of this run folder (its weights and assets, e.g.
    # the tokenizer; the loss's learnable state too when its loss config is the same)
    init_from: str | None = None
    # which of init_from's towers (with their projections) to load; the others keep the fresh init
    # of this seed, as from scratch (() = the whole model and loss state). No effect without
    # init_from, so a study can compare init_from: [null, RUN] with one init_towers for both arms
    init_towers: tuple[str, ...] = ()
    compile: bool = False
    channels_last: bool = True
    # a start whose run folder already holds this same config resumes it (torchrun restarts)
    auto_resume: bool = False
    dist_wrapper: Literal["ddp", "fsdp", "allreduce"] = "ddp"
    # per-tower gradient scales from per-modality scores (R-OGM-GE, contrastkit.train.modulation)
    modulation: ModulationConfig | None = None

    def __post_init__(self) -> None:
        for name in ("compile", "channels_last", "auto_resume"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"train.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ConfigError(f"train.threads must be >= 0 (0 = all cores), got {self.threads}")
        # the cap at this machine's cores is checked where threads are set (core.runtime.check_threads):
        # a run config must stay loadable (eval, WiSE-FT) on a machine with fewer cores
        if self.dist_wrapper not in DIST_WRAPPERS:
            raise ConfigError(
                f"train.dist_wrapper must be one of {list(DIST_WRAPPERS)}, got {self.dist_wrapper!r}"
            )
        check_seed(self.seed, "train.seed")
        check_device_name(self.device, "train.device")
        if len(set(self.init_towers)) != len(self.init_towers):
            raise ConfigError(f"train.init_towers repeats a tower: {list(self.init_towers)}")
        if self.modulation is not None and self.dist_wrapper == "fsdp":  # std(g) over a shard differs
            raise ConfigError(
                "train.modulation needs whole gradients: use train.dist_wrapper ddp or allreduce"
            )


@dataclass(frozen=True)
class CurationConfig:
    """Training-time curation: which pairs count, and how much, while the run trains (offline
    filters that write a new source are ``contrastkit curate``). ``noisy_pairs``: down-weight or
    drop pairs a beta mixture over per-pair losses calls mismatched (:mod:`contrastkit.train.noisy`);
    ``jest``: train on the sub-batch of a larger super-batch that a reference run calls learnable
    (:mod:`contrastkit.train.jest`); ``mcl``: multistage training, each stage on batches from one
    cluster of the previous stages' embeddings (:mod:`contrastkit.train.multistage`); ``null`` = off."""

    noisy_pairs: NoisyPairsConfig | None = None
    jest: JestConfig | None = None
    mcl: MCLConfig | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; saved as ``config.yaml`` in the run folder."""

    name: str = "run"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    # class-incremental stages with a rehearsal memory (COCONUT; contrastkit.train.continual); null = off
    continual: ContinualConfig | None = None

    def __post_init__(self) -> None:
        fed = set(self.data.modalities) | ({"image"} if self.data.views else set())
        starved = [m for m in self.model.towers if m not in fed]
        if starved:
            raise ConfigError(
                f"model tower(s) {starved} get no input: data.modalities is {list(self.data.modalities)}"
                f"{f' with {self.data.views} image views' if self.data.views else ''}; add them there"
            )
        unknown = [m for m in self.train.init_towers if m not in self.model.towers]
        if unknown:
            raise ConfigError(
                f"train.init_towers names {unknown}, not towers of this model: {list(self.model.towers)}"
            )
        if self.train.modulation is not None:
            check_modulation(self.train.modulation, tuple(self.model.towers), self.data.label_task)

    @classmethod
    def tiny(cls, name: str = "tiny", out_dir: str = "runs") -> RunConfig:
        """Seconds-long run for tests: tiny model, 512 Shapes pairs."""
        return cls(
            name=name,
            out_dir=out_dir,
            data=DataConfig.tiny(),
            model=ModelConfig.tiny(),
            optim=OptimConfig(warmup_steps=5),
            train=TrainConfig(
                steps=20,
                batch_size=32,
                threads=1,
                log_every=5,
                ckpt_every=10,
                progress=False,
                tensorboard=False,
            ),
        )
