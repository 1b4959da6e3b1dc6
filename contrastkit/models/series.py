"""Series towers: encoders of multichannel time series ``float [B, C, T]`` (sensor recordings).

Seed papers: MoRE (an ECG as a modality beside X-rays and reports, encoded by a transformer and
aligned contrastively) and ColloSSL (several body-worn devices recording the same moment).
Inputs are standardised per channel by the data (:mod:`contrastkit.data.series`), so the towers
do no preprocessing of their own.

* ``series_cnn`` — a 1-D convolution stack: per block ``Conv1d(k, same padding) → BatchNorm1d →
  ReLU``, then a global pool over time (``mean``, ``max`` or both concatenated, ``meanmax``);
  ``output_dim`` = the last block's channels (×2 for ``meanmax``).
* ``series_transformer`` — patches of ``patch_size`` steps (the end zero-padded to a whole patch)
  embedded by one ``Conv1d(C, dim, patch_size, stride=patch_size)``, a learned position embedding
  (at most ``max_patches``), a pre-norm ``nn.TransformerEncoder`` (``depth`` layers, GELU) and a
  final LayerNorm; pooled by a learned [CLS] token (``cls``) or the mean of the patch tokens
  (``mean``); ``output_dim`` = ``dim``.
* ``series_devices`` — ColloSSL's per-device encoding: the channels of each device
  (``devices``, lists of channel indices) go through an inner series tower on their own
  (``shared: true``: one tower for every device, which must then have equal channel counts; else
  one tower per device); the output is ``[B, D, output_dim]``, device d in row d, which the
  DualEncoder's projection maps per device and :mod:`contrastkit.losses.collossl` reads.

Bad input (a non-float tensor, not ``[B, C, T]``, the wrong C, an empty batch) raises an
:class:`InputError` naming what came. Related: :mod:`contrastkit.models.towers` (the registry).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import Fraction, PositiveInt
from contrastkit.models.towers import TOWERS, Tower, TowerContext

__all__ = [
    "DeviceSeriesTower",
    "SeriesCNNTower",
    "SeriesTransformerTower",
    "check_devices",
    "check_series",
    "encode_devices",
]


def check_series(x: torch.Tensor, channels: int, what: str = "series") -> None:
    """``x`` must be a non-empty floating ``[B, channels, T]`` tensor with T ≥ 1."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{what} input must be float [B, C={channels}, T], got {got}")
    if x.shape[1] != channels:
        raise InputError(f"{what} input has {x.shape[1]} channels, the tower expects {channels}")
    if x.shape[0] == 0 or x.shape[2] == 0:
        raise InputError(f"{what} input is empty: shape {tuple(x.shape)}")


def check_devices(
    devices: Sequence[Sequence[int]], channels: int | None = None
) -> tuple[tuple[int, ...], ...]:
    """Device groups as tuples: at least one device, each a non-empty list of distinct channel
    indices, no channel in two devices, every index ``< channels`` when that is given."""
    try:
        groups = tuple(tuple(int(c) for c in g) for g in devices)
    except TypeError:
        raise ConfigError(f"devices must be lists of channel indices, got {devices!r}") from None
    flat = [c for g in groups for c in g]
    if not groups or any(not g for g in groups) or len(set(flat)) != len(flat) or min(flat) < 0:
        raise ConfigError(
            "devices must be non-empty lists of distinct channel indices >= 0, no channel in two, "
            f"got {devices!r}"
        )
    if channels is not None and max(flat) >= channels:
        raise ConfigError(f"devices name channel {max(flat)}, but the series has {channels} channels")
    return groups


class SeriesCNNTower(Tower):
    """1-D CNN over ``float [B, C, T]`` with a global pool over time → ``[B, output_dim]``."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (32, 64, 128),
        kernel_size: int = 5,
        pool: Literal["mean", "max", "meanmax"] = "mean",
    ) -> None:
        super().__init__()
        self.in_channels, self.pool = in_channels, pool
        layers: list[nn.Module] = []
        width = in_channels
        for out in channels:
            layers += [
                nn.Conv1d(width, out, kernel_size, padding=kernel_size // 2, bias=False),
                nn.BatchNorm1d(out),
                nn.ReLU(inplace=True),
            ]
            width = out
        self.net = nn.Sequential(*layers)
        self.output_dim = width * (2 if pool == "meanmax" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_series(x, self.in_channels, "series_cnn")
        h = self.net(x.to(self.net[0].weight.dtype))
        if self.pool == "mean":
            return h.mean(-1)
        if self.pool == "max":
            return h.amax(-1)
        return torch.cat([h.mean(-1), h.amax(-1)], dim=1)


class SeriesTransformerTower(Tower):
    """Patch embedding + pre-norm transformer over ``float [B, C, T]`` → ``[B, dim]``."""

    def __init__(
        self,
        in_channels: int,
        patch_size: int = 10,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        pooling: Literal["cls", "mean"] = "cls",
        max_patches: int = 64,
    ) -> None:
        super().__init__()
        self.in_channels, self.patch_size, self.pooling = in_channels, patch_size, pooling
        self.max_patches = max_patches
        self.output_dim = dim
        self.embed = nn.Conv1d(in_channels, dim, patch_size, stride=patch_size)
        self.pos = nn.Parameter(torch.zeros(1, max_patches + 1, dim))  # slot 0: the [CLS] token's
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, int(dim * mlp_ratio), dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # enable_nested_tensor only applies to post-norm layers; off avoids its warning
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_series(x, self.in_channels, "series_transformer")
        pad = -x.shape[-1] % self.patch_size
        if pad:  # a last partial patch: zeros are the channel means of standardised data
            x = nn.functional.pad(x, (0, pad))
        n = x.shape[-1] // self.patch_size
        if n > self.max_patches:
            raise InputError(
                f"series_transformer: T={x.shape[-1]} gives {n} patches of {self.patch_size} steps, "
                f"more than max_patches={self.max_patches}"
            )
        tokens = self.embed(x.to(self.embed.weight.dtype)).transpose(1, 2)  # [B, n, dim]
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos[:, : n + 1]
        h = self.norm(self.encoder(tokens))
        return h[:, 0] if self.pooling == "cls" else h[:, 1:].mean(1)


def encode_devices(
    towers: Sequence[nn.Module], x: torch.Tensor, devices: Sequence[Sequence[int]]
) -> torch.Tensor:
    """``[B, D, M]``: ``towers[d]`` (or ``towers[0]`` for every device when one is given) applied to
    the channels ``devices[d]`` of ``x [B, C, T]``. One call per device, so a batch-norm tower
    normalises each device with its own batch statistics (as separate views are elsewhere)."""
    if len(towers) not in (1, len(devices)):
        raise InputError(f"{len(towers)} towers for {len(devices)} devices: give one, or one per device")
    if x.ndim != 3:
        raise InputError(f"series input must be [B, C, T], got {tuple(x.shape)}")
    out = [towers[d if len(towers) > 1 else 0](x[:, list(g)]) for d, g in enumerate(devices)]
    return torch.stack(out, dim=1)


class DeviceSeriesTower(Tower):
    """Each device's channels through a series tower: ``float [B, C, T]`` → ``[B, D, output_dim]``.
    ``device_set = True`` marks the 3-D output (one row per device, no padding rows)."""

    device_set = True

    def __init__(self, towers: Sequence[Tower], devices: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.devices = check_devices(devices)
        self.in_channels = max(c for g in self.devices for c in g) + 1
        if len(towers) not in (1, len(self.devices)):
            raise ConfigError(f"{len(towers)} towers for {len(self.devices)} devices")
        self.towers = nn.ModuleList(towers)
        dims = {t.output_dim for t in towers}
        if len(dims) != 1:
            raise ConfigError(f"per-device towers must share one output_dim, got {sorted(dims)}")
        self.output_dim = dims.pop()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1] < self.in_channels:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"series_devices input must be float [B, C >= {self.in_channels}, T], got {got}")
        return encode_devices(list(self.towers), x, self.devices)


def _positive_ints(tower: str, **values: Any) -> None:
    for key, v in values.items():
        items = v if isinstance(v, (list, tuple)) else [v]
        if not items or any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in items):
            raise ConfigError(
                f"tower {tower!r}: {key} must be a positive integer (or a list of them), got {v!r}"
            )


@TOWERS.register("series_cnn")
def series_cnn_tower(
    in_channels: PositiveInt | None = None,
    channels: tuple[int, ...] = (32, 64, 128),
    kernel_size: PositiveInt = 5,
    pool: Literal["mean", "max", "meanmax"] = "mean",
    context: TowerContext | None = None,
) -> SeriesCNNTower:
    """A 1-D CNN for ``float [B, in_channels, T]`` series (``in_channels`` required: BasicMotions 6);
    odd ``kernel_size`` keeps T (same padding)."""
    if in_channels is None:
        raise ConfigError("tower 'series_cnn' needs params.in_channels (BasicMotions: 6)")
    _positive_ints("series_cnn", in_channels=in_channels, channels=list(channels), kernel_size=kernel_size)
    if kernel_size % 2 == 0:
        raise ConfigError(f"tower 'series_cnn': kernel_size must be odd (same padding), got {kernel_size}")
    return SeriesCNNTower(in_channels, tuple(channels), kernel_size, pool)


@TOWERS.register("series_transformer")
def series_transformer_tower(
    in_channels: PositiveInt | None = None,
    patch_size: PositiveInt = 10,
    dim: PositiveInt = 64,
    depth: PositiveInt = 2,
    heads: PositiveInt = 4,
    mlp_ratio: float = 2.0,
    dropout: Fraction = 0.0,
    pooling: Literal["cls", "mean"] = "cls",
    max_patches: PositiveInt = 64,
    context: TowerContext | None = None,
) -> SeriesTransformerTower:
    """A patch transformer for ``float [B, in_channels, T]`` series (``in_channels`` required);
    T may be at most ``patch_size · max_patches`` steps."""
    if in_channels is None:
        raise ConfigError("tower 'series_transformer' needs params.in_channels (BasicMotions: 6)")
    _positive_ints("series_transformer", in_channels=in_channels, patch_size=patch_size, dim=dim, depth=depth)
    if dim % heads:
        raise ConfigError(f"tower 'series_transformer': dim={dim} must be a multiple of heads={heads}")
    if not mlp_ratio > 0:
        raise ConfigError(f"tower 'series_transformer': mlp_ratio must be > 0, got {mlp_ratio}")
    return SeriesTransformerTower(
        in_channels, patch_size, dim, depth, heads, mlp_ratio, dropout, pooling, max_patches
    )


@TOWERS.register("series_devices")
def series_devices_tower(
    devices: Sequence[Sequence[int]] | None = None,
    encoder: dict[str, Any] | None = None,
    shared: bool = True,
    context: TowerContext | None = None,
) -> DeviceSeriesTower:
    """ColloSSL's per-device encoder: ``devices`` (required; BasicMotions ``[[0, 1, 2], [3, 4, 5]]``)
    and ``encoder: {name: series_cnn | series_transformer, params: {...}}`` (``in_channels`` is set
    from the device size; default ``series_cnn``); ``shared`` uses one encoder for all devices."""
    if devices is None:
        raise ConfigError("tower 'series_devices' needs params.devices, e.g. [[0, 1, 2], [3, 4, 5]]")
    groups = check_devices(devices)
    spec = dict(encoder or {"name": "series_cnn"})
    name, params = spec.pop("name", "series_cnn"), dict(spec.pop("params", None) or {})
    if spec or name not in ("series_cnn", "series_transformer"):
        raise ConfigError(
            "tower 'series_devices': encoder must be {name: series_cnn | series_transformer, params: {...}}, "
            f"got {encoder!r}"
        )
    if "in_channels" in params:
        raise ConfigError("tower 'series_devices': the encoder's in_channels comes from devices; remove it")
    sizes = sorted({len(g) for g in groups})
    if shared and len(sizes) > 1:
        raise ConfigError(
            f"tower 'series_devices': a shared encoder needs devices of equal size, got sizes {sizes}; "
            "set shared: false (one encoder per device)"
        )
    build = [len(groups[0])] if shared else [len(g) for g in groups]
    towers = [TOWERS.build(name, in_channels=c, context=context, **params) for c in build]
    return DeviceSeriesTower(towers, groups)
