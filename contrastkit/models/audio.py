"""Audio towers: log-mel features ``float [B, n_mels, T]`` → features ``[B, output_dim]``.

What: encoders for spoken captions (:mod:`contrastkit.data.speech`, features from
:mod:`contrastkit.data.audio_features`), registered in :data:`~contrastkit.models.towers.TOWERS`
so ``model.towers.<modality>: {name: audio_cnn, params: {...}}`` selects them:

* ``audio_cnn`` — a timm CNN (default a small ResNet-18: ``layers [1, 1, 1, 1]``, channels 32–256)
  with ``in_chans = 1`` over the log-mel map as a one-channel image ``[B, 1, n_mels, T]``, global
  average pooled (timm's head removed);
* ``audio_transformer`` — pre-LN transformer blocks (:class:`~contrastkit.models.blocks.Block`)
  over frame tokens: every ``stack`` consecutive frames (``stack · n_mels`` numbers) → Linear →
  ``+`` a learned positional embedding (``ceil(max_frames / stack)`` positions, plus one for the
  CLS token) → blocks → LayerNorm → the CLS token (``pooling: cls``) or the mean of the frame
  tokens (``mean``).

Normalisation (``normalize``), inside the tower so it travels with the saved model:
``utterance`` (default) — ``(x − mean(x)) / (std(x) + 1e-5)`` over each example's whole map;
``fixed`` — ``(x − mean) / std`` with the config's constants. Per-utterance is the default
because the level of a log-mel map depends on the synthesiser's loudness, the mel ``eps`` and the
clip's share of padding frames, none of which says what was spoken, and it needs no statistics of
the training set; ``fixed`` keeps absolute levels (loudness as information) given measured
constants. A transformer's frames past ``T`` up to a multiple of ``stack`` are zero after
normalisation (the mean).

Exactness: deterministic given the weights (no randomness in the forward; dropout is not used).
Related: :mod:`contrastkit.models.towers` (registry, timm helpers), :mod:`contrastkit.data.speech`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Positive, PositiveInt
from contrastkit.models.blocks import Block
from contrastkit.models.towers import TOWERS, Tower, TowerContext

__all__ = [
    "AudioCNNTower",
    "AudioTower",
    "AudioTransformerTower",
    "audio_cnn_tower",
    "audio_transformer_tower",
]

_SMALL_RESNET = {"layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256], "stem_width": 32}


class AudioTower(Tower):
    """Base: checks ``float [B, n_mels, T]`` input (``T <= max_frames`` when set) and normalises it."""

    def __init__(
        self,
        n_mels: int,
        normalize: str = "utterance",
        mean: float = 0.0,
        std: float = 1.0,
        max_frames: int | None = None,
    ) -> None:
        super().__init__()
        if normalize not in ("utterance", "fixed"):
            raise ConfigError(f"audio tower: normalize must be 'utterance' or 'fixed', got {normalize!r}")
        if not std > 0:
            raise ConfigError(f"audio tower: std must be > 0, got {std}")
        self.n_mels, self.normalize, self.mean, self.std, self.max_frames = (
            n_mels,
            normalize,
            mean,
            std,
            max_frames,
        )

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not isinstance(x, torch.Tensor)
            or x.ndim != 3
            or x.shape[1] != self.n_mels
            or not x.is_floating_point()
        ):
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(
                f"audio input must be log-mel features float [B, n_mels={self.n_mels}, T], got {got}"
            )
        if x.shape[0] == 0 or x.shape[2] == 0:
            raise InputError(f"empty audio batch {tuple(x.shape)}")
        if self.max_frames is not None and x.shape[2] > self.max_frames:
            raise InputError(f"audio input has {x.shape[2]} frames, more than max_frames={self.max_frames}")
        if self.normalize == "fixed":
            return (x - self.mean) / self.std
        mu = x.mean(dim=(1, 2), keepdim=True)
        sd = x.std(dim=(1, 2), keepdim=True, unbiased=False)
        return (x - mu) / (sd + 1e-5)


class AudioCNNTower(AudioTower):
    """A timm CNN (``in_chans = 1``, classifier removed) over the normalised map as an image."""

    def __init__(self, backbone: nn.Module, n_mels: int, normalize: str, mean: float, std: float) -> None:
        super().__init__(n_mels, normalize, mean, std)
        self.backbone = backbone
        self.output_dim = int(backbone.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prepare(x)
        return self.backbone(x.unsqueeze(1).to(next(self.backbone.parameters()).dtype))


class AudioTransformerTower(AudioTower):
    """Frame tokens (``stack`` frames each) → Linear → + positions → pre-LN blocks → pool."""

    def __init__(
        self,
        n_mels: int,
        max_frames: int,
        stack: int,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        pooling: str,
        normalize: str,
        mean: float,
        std: float,
    ) -> None:
        super().__init__(n_mels, normalize, mean, std, max_frames)
        if width % heads:
            raise ConfigError(f"tower 'audio_transformer': width={width} must be a multiple of heads={heads}")
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"tower 'audio_transformer': pooling must be 'cls' or 'mean', got {pooling!r}")
        self.stack, self.pooling, self.output_dim = stack, pooling, width
        tokens = math.ceil(max_frames / stack)
        self.proj = nn.Linear(stack * n_mels, width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, width) * 0.02)  # [0]: the CLS token's
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prepare(x).to(self.proj.weight.dtype)
        b, m, t = x.shape
        n = math.ceil(t / self.stack)
        x = nn.functional.pad(x, (0, n * self.stack - t))  # zero = the normalised mean
        # [B, M, n·k] → [B, n, k, M] → [B, n, k·M]: token i holds frames i·k … i·k + k − 1
        tokens = x.view(b, m, n, self.stack).permute(0, 2, 3, 1).reshape(b, n, self.stack * m)
        h = torch.cat([self.cls.expand(b, -1, -1), self.proj(tokens)], dim=1) + self.pos[:, : n + 1]
        for block in self.blocks:
            h, _ = block(h)
        h = self.norm(h)
        return h[:, 0] if self.pooling == "cls" else h[:, 1:].mean(dim=1)


@TOWERS.register("audio_cnn")
def audio_cnn_tower(
    n_mels: PositiveInt = 40,
    arch: str = "resnet18",
    kwargs: dict | None = None,
    normalize: Literal["utterance", "fixed"] = "utterance",
    mean: float = 0.0,
    std: Positive = 1.0,
    context: TowerContext | None = None,
) -> AudioCNNTower:
    """A randomly initialised timm CNN over log-mel maps ``[B, n_mels, T]``; ``kwargs`` override
    its constructor (default for ``resnet18``: ``layers [1, 1, 1, 1]``, ``channels [32, 64, 128,
    256]``, ``stem_width 32``, about 1.2M parameters); ``in_chans`` is always 1."""
    import timm

    if arch not in timm.list_models():
        raise InputError(f"unknown timm architecture {arch!r}")
    given = dict(_SMALL_RESNET if kwargs is None and arch == "resnet18" else kwargs or {})
    if "in_chans" in given or "num_classes" in given:
        raise ConfigError(
            "tower 'audio_cnn': in_chans (1) and num_classes (0) are fixed; drop them from kwargs"
        )
    for key in ("layers", "channels"):
        value = given.get(key)
        items = value if isinstance(value, (list, tuple)) else [value]
        if value is not None and (
            not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items)
        ):
            raise ConfigError(
                f"tower 'audio_cnn': kwargs.{key} must be a positive integer or a list of them, got {value!r}"
            )
    try:
        backbone = timm.create_model(arch, pretrained=False, in_chans=1, num_classes=0, **given)
    except TypeError as err:
        raise ConfigError(f"tower 'audio_cnn': timm {arch!r} rejects kwargs {given}: {err}") from None
    backbone.eval()
    try:  # a customised architecture may build but not run: fail on the config, not at step 1
        with torch.no_grad():
            backbone(torch.zeros(1, 1, n_mels, 64))
    except Exception as err:
        raise ConfigError(
            f"tower 'audio_cnn': timm {arch!r} with kwargs {given} does not run on [1, 1, {n_mels}, 64] "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    backbone.train()
    return AudioCNNTower(backbone, n_mels, normalize, mean, std)


@TOWERS.register("audio_transformer")
def audio_transformer_tower(
    n_mels: PositiveInt = 40,
    max_frames: PositiveInt = 401,
    stack: PositiveInt = 4,
    width: PositiveInt = 128,
    layers: PositiveInt = 2,
    heads: PositiveInt = 2,
    mlp_ratio: Positive = 2.0,
    pooling: Literal["cls", "mean"] = "cls",
    normalize: Literal["utterance", "fixed"] = "utterance",
    mean: float = 0.0,
    std: Positive = 1.0,
    context: TowerContext | None = None,
) -> AudioTransformerTower:
    """A small randomly initialised transformer over log-mel frames; inputs may have up to
    ``max_frames`` frames (the speech config's ``max_frames``: 401 for 4 s at a 10 ms hop)."""
    return AudioTransformerTower(
        n_mels, max_frames, stack, width, layers, heads, mlp_ratio, pooling, normalize, mean, std
    )
