"""ColloSSL with device selection: MMD-chosen positive and weighted negative devices (``collossl_mmd``).

No spec entry. Paper: Jain et al. 2022, "ColloSSL: Collaborative Self-Supervised Learning for Human
Activity Recognition" (seed 111). **UNVERIFIED**: written from the abstract (Device Selection,
Contrastive Sampling, Multi-view Contrastive Loss) without reading the paper's body or a reference
implementation; every choice below that the abstract leaves open is ours and marked so.

Setting: D devices record the same N time windows; ``views[d, i]`` is device d's embedding of
window i (from ``series_devices``, :mod:`contrastkit.models.series`), ``x_d[i]`` its raw window
(channels × time, flattened), ``e(u, v) = exp(û·v̂/τ)`` on L2-normalised embeddings.

**Device selection** (for the anchor device a). RBF kernel ``k(u, v) = exp(−‖u − v‖²/(2σ²))``,
biased (V-statistic) squared MMD between the anchor's and device d's windows in the batch::

    MMD²(a, d) = mean_ij k(x_a[i], x_a[j]) + mean_ij k(x_d[i], x_d[j]) − 2 mean_ij k(x_a[i], x_d[j])
    MMD(a, d)  = sqrt(max(MMD², 0))

σ = ``bandwidth``, or (``None``) the median distance between distinct windows of all devices in
the batch — one σ for every device pair, so their MMDs compare (our choice). Positive devices P:
the ``num_positives`` devices closest to a (smallest MMD; ties by index). Negative devices G:
``negatives="rest"`` the others (D ≥ num_positives + 2 needed), ``"all"`` every device but a
(with D = 2 the only choice). Weights ``w_g = (1/MMD(a, g)) / mean_{g'∈G} (1/MMD(a, g'))``
(``weighting="inverse_mmd"``: closer = harder negatives weigh more, mean weight 1; MMD floored at
1e-6) or ``w_g = 1`` (``"uniform"``). Selection and weights carry no gradient. With
``mmd_on="embeddings"`` the windows are replaced by the detached normalised embeddings (devices
of different channel counts can then be compared). The abstract names a Device Selection step
but not its criterion: the MMD, the inverse-MMD weights and their normalisation are our reading.

**Contrastive sampling**: the positive of window i is the same window (time-aligned) of each
positive device; its negatives are the negative devices' windows at *other* times ``j ≠ i`` of
the batch (a shuffled batch is a uniform sample of other times).

**Multi-view contrastive loss**::

    ℓ_i = −(1/|P|) Σ_{p∈P} log( e(a_i, p_i) / [ Σ_{p′∈P} e(a_i, p′_i) + Σ_{g∈G} w_g Σ_{j≠i} e(a_i, g_j) ] )
    L_a = mean_i ℓ_i            ``anchor="all"``: L = mean_a L_a (each anchor with its own selection)

computed as ``LSE([s_ip′ ; s_igj + log w_g]) − mean_p s_ip`` (``s = a·v/τ``). With uniform weights
and the same device sets this is :func:`contrastkit.losses.multiview.collossl_loss` (tested).
Defaults τ = 0.1, anchor 0, one positive device (our choices; paper values not checked).
Shapes: ``views [D, N, d]``, ``data`` D tensors ``[N, …]`` → 0-d tensor (float32; float64 in,
float64 out). Tiled / distributed: dense only; distributed by gathering the embeddings and the
``series`` batch field first (the MMD then sees the global batch).
Related: ``collossl`` (:mod:`contrastkit.losses.multiview`, device sets given by hand), ``infonce``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from contrastkit.core.checks import check_finite, check_scalar_param
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.registry import NonNegInt, Positive, PositiveInt
from contrastkit.losses.base import LOSSES, MultiLoss, as_float, maybe_normalize

__all__ = [
    "ColloSSLMMDLoss",
    "DeviceChoice",
    "choose_devices",
    "collossl_mmd_loss",
    "device_mmd",
    "median_bandwidth",
    "multiview_contrastive_loss",
    "rbf_mmd2",
    "select_devices",
    "split_devices",
]

_NEG_INF = float("-inf")
_MMD_FLOOR = 1e-6


def rbf_mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Biased squared MMD between the rows of ``x [N, F]`` and ``y [M, F]`` under the RBF kernel
    ``exp(−‖u − v‖²/(2σ²))``, σ = ``bandwidth`` (clamped at 0 from below: rounding can dip it)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise InputError(
            f"rbf_mmd2 needs [N, F] and [M, F] with one F, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    if not bandwidth > 0:
        raise InputError(f"bandwidth must be > 0, got {bandwidth}")
    g = -0.5 / float(bandwidth) ** 2

    def k(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.exp(g * torch.cdist(u, v).square()).mean()

    return (k(x, x) + k(y, y) - 2 * k(x, y)).clamp_min(0.0)


def median_bandwidth(data: Sequence[torch.Tensor]) -> float:
    """The median distance between distinct rows of all ``data`` tensors together (σ heuristic);
    1.0 if every row is the same."""
    rows = torch.cat([d.reshape(d.shape[0], -1) for d in data])
    dist = torch.cdist(rows, rows)
    off = dist[~torch.eye(rows.shape[0], dtype=torch.bool, device=rows.device)]
    med = float(off.median()) if off.numel() else 0.0
    return med if med > 0 else 1.0


def device_mmd(data: Sequence[torch.Tensor], bandwidth: float | None = None) -> torch.Tensor:
    """``[D, D]`` MMDs (not squared) between the devices' windows ``data[d] [N, …]`` (flattened per
    window; every device needs the same window size). No gradient."""
    if len(data) < 2:
        raise InputError(f"device selection needs at least 2 devices, got {len(data)}")
    flat = [as_float(d.detach()).reshape(d.shape[0], -1) for d in data]
    sizes = sorted({tuple(f.shape) for f in flat})
    if len(sizes) != 1:
        raise InputError(
            f"devices' windows differ in shape {sizes}: MMD on data needs equal channel counts and "
            "lengths; use mmd_on='embeddings'"
        )
    for d, f in enumerate(flat):
        check_finite(f"device {d} data", f)
    sigma = median_bandwidth(flat) if bandwidth is None else float(bandwidth)
    n = len(flat)
    out = torch.zeros(n, n, dtype=flat[0].dtype, device=flat[0].device)
    for a in range(n):
        for b in range(a + 1, n):
            out[a, b] = out[b, a] = rbf_mmd2(flat[a], flat[b], sigma).sqrt()
    return out


@dataclass(frozen=True)
class DeviceChoice:
    """One anchor's selection: positive and negative devices, the negatives' weights, and the
    anchor's MMD to every device (0 to itself)."""

    anchor: int
    positives: tuple[int, ...]
    negatives: tuple[int, ...]
    weights: tuple[float, ...]
    mmd: tuple[float, ...]


def select_devices(
    mmd: torch.Tensor,
    anchor: int,
    num_positives: int = 1,
    negatives: Literal["rest", "all"] = "rest",
    weighting: Literal["inverse_mmd", "uniform"] = "inverse_mmd",
) -> DeviceChoice:
    """ColloSSL device selection from a ``[D, D]`` MMD matrix (rules in the module docstring)."""
    n = mmd.shape[0]
    if not 0 <= anchor < n:
        raise ConfigError(f"anchor device {anchor} is out of range for {n} devices")
    row = [float(v) for v in mmd[anchor]]
    others = sorted((k for k in range(n) if k != anchor), key=lambda k: (row[k], k))
    if not 1 <= num_positives < n:
        raise ConfigError(f"num_positives must be in [1, {n - 1}] for {n} devices, got {num_positives}")
    pos = tuple(sorted(others[:num_positives]))
    if negatives == "rest":
        neg = tuple(sorted(others[num_positives:]))
        if not neg:
            raise ConfigError(
                f"no negative device left: {n} devices, anchor + {num_positives} positive(s); "
                "ColloSSL's 'rest' needs at least num_positives + 2 devices — use negatives: all "
                "(every other device's windows at other times)"
            )
    elif negatives == "all":
        neg = tuple(sorted(others))
    else:
        raise ConfigError(f"negatives must be 'rest' or 'all', got {negatives!r}")
    if weighting == "uniform":
        w = [1.0] * len(neg)
    elif weighting == "inverse_mmd":
        inv = [1.0 / max(row[g], _MMD_FLOOR) for g in neg]
        w = [v * len(inv) / sum(inv) for v in inv]
    else:
        raise ConfigError(f"weighting must be 'inverse_mmd' or 'uniform', got {weighting!r}")
    return DeviceChoice(anchor, pos, neg, tuple(w), tuple(row))


def multiview_contrastive_loss(
    views: torch.Tensor,
    temperature: torch.Tensor | float,
    choice: DeviceChoice,
    *,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """``mean_i ℓ_i`` of the module docstring for one anchor's :class:`DeviceChoice`;
    ``views [D, N, d]``. Memory ``[N, |G|·N]``."""
    if not isinstance(views, torch.Tensor) or views.ndim != 3 or not views.is_floating_point():
        got = (
            f"{views.dtype} {tuple(views.shape)}" if isinstance(views, torch.Tensor) else type(views).__name__
        )
        raise InputError(f"views must be a float tensor [D, N, d], got {got}")
    m, n, _ = views.shape
    if n == 0:
        raise InputError("views is an empty batch (N=0)")
    if n == 1 and not allow_single:
        raise InputError("collossl_mmd got N=1: there are no other times to draw negatives from")
    if max((choice.anchor, *choice.positives, *choice.negatives)) >= m:
        raise InputError(f"device choice {choice} does not fit {m} devices")
    if isinstance(temperature, torch.Tensor):
        check_scalar_param("temperature", temperature)
    elif not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    check_finite("views", views)
    z = maybe_normalize(as_float(views), normalize)
    a = z[choice.anchor]
    pos = torch.einsum("nd,pnd->np", a, z[list(choice.positives)]) / temperature  # [N, |P|]
    neg = torch.einsum("nd,gjd->ngj", a, z[list(choice.negatives)]) / temperature  # [N, |G|, N]
    log_w = torch.tensor(choice.weights, dtype=z.dtype, device=z.device).log()
    same_time = torch.eye(n, dtype=torch.bool, device=z.device)[:, None, :]
    neg = (neg + log_w[None, :, None]).masked_fill(same_time, _NEG_INF).reshape(n, -1)
    den = torch.cat([pos, neg], dim=1).logsumexp(1)
    return (den - pos.mean(1)).mean()


def split_devices(series: torch.Tensor, devices: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Each device's channels of ``series [N, C, T]``: ``[N, C_d, T]`` per device."""
    if not isinstance(series, torch.Tensor) or series.ndim != 3:
        got = tuple(series.shape) if isinstance(series, torch.Tensor) else type(series).__name__
        raise InputError(f"series must be [N, C, T], got {got}")
    top = max(c for g in devices for c in g)
    if top >= series.shape[1]:
        raise InputError(f"devices name channel {top}, but the series has {series.shape[1]} channels")
    return [series[:, list(g)] for g in devices]


def choose_devices(
    views: torch.Tensor,
    data: Sequence[torch.Tensor] | None = None,
    *,
    anchor: int | Literal["all"] = 0,
    num_positives: int = 1,
    negatives: Literal["rest", "all"] = "rest",
    weighting: Literal["inverse_mmd", "uniform"] = "inverse_mmd",
    bandwidth: float | None = None,
) -> list[DeviceChoice]:
    """One :class:`DeviceChoice` per anchor (``anchor="all"``: every device in turn) from the MMDs
    of ``data`` (the D devices' windows ``[N, …]``) or, when ``data`` is ``None``, of the detached
    normalised embeddings ``views [D, N, d]``."""
    if not isinstance(views, torch.Tensor) or views.ndim != 3:
        got = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
        raise InputError(f"views must be [D, N, d], got {got}")
    if data is None:
        data = list(maybe_normalize(as_float(views.detach()), True))
    elif len(data) != views.shape[0]:
        raise InputError(f"{len(data)} devices' data for {views.shape[0]} devices' embeddings")
    mmd = device_mmd(data, bandwidth)
    anchors = range(views.shape[0]) if anchor == "all" else [int(anchor)]
    return [select_devices(mmd, a, num_positives, negatives, weighting) for a in anchors]


def collossl_mmd_loss(
    views: torch.Tensor,
    data: Sequence[torch.Tensor] | None = None,
    temperature: torch.Tensor | float = 0.1,
    *,
    anchor: int | Literal["all"] = 0,
    num_positives: int = 1,
    negatives: Literal["rest", "all"] = "rest",
    weighting: Literal["inverse_mmd", "uniform"] = "inverse_mmd",
    bandwidth: float | None = None,
    normalize: bool = True,
    allow_single: bool = False,
) -> torch.Tensor:
    """ColloSSL: select devices by MMD (:func:`choose_devices`), then the weighted multi-view
    contrastive loss, averaged over the anchors.

    Args:
        views: ``[D, N, d]`` device embeddings, time-aligned rows.
        data: the D devices' raw windows ``[N, …]`` for the MMD; ``None``: the detached,
            normalised embeddings instead.
        temperature: τ.
        anchor: the anchor device, or ``"all"`` (mean over every device as the anchor).
        num_positives: how many closest devices are positives.
        negatives: ``"rest"`` (devices neither anchor nor positive) or ``"all"`` (all but the anchor).
        weighting: ``"inverse_mmd"`` or ``"uniform"`` negative-device weights.
        bandwidth: RBF σ of the MMD (``None``: the median heuristic).
        normalize: L2-normalise the embeddings first.
        allow_single: accept N = 1 (no negatives; the loss is then 0 with one positive).
    """
    choices = choose_devices(
        views,
        data,
        anchor=anchor,
        num_positives=num_positives,
        negatives=negatives,
        weighting=weighting,
        bandwidth=bandwidth,
    )
    terms = [
        multiview_contrastive_loss(views, temperature, c, normalize=normalize, allow_single=allow_single)
        for c in choices
    ]
    return torch.stack(terms).mean()


@LOSSES.register("collossl_mmd")
class ColloSSLMMDLoss(MultiLoss):
    """Module form of :func:`collossl_mmd_loss` (fixed τ). Reads the embedding ``key`` (default
    ``"series"``), ``[N, D, d]`` from the ``series_devices`` tower, and — with ``mmd_on="data"`` —
    the batch field ``series`` ``[N, C, T]``, split into ``devices`` (channel groups, required
    then; BasicMotions ``[[0, 1, 2], [3, 4, 5]]``). Logs the first anchor's positive device and
    its MMD as ``collossl_positive`` and ``collossl_mmd``."""

    accepts: ClassVar[frozenset[str]] = frozenset({"series"})

    def __init__(
        self,
        temperature: Positive = 0.1,
        devices: Sequence[Sequence[int]] | None = None,
        anchor: NonNegInt | Literal["all"] = 0,
        num_positives: PositiveInt = 1,
        negatives: Literal["rest", "all"] = "rest",
        weighting: Literal["inverse_mmd", "uniform"] = "inverse_mmd",
        bandwidth: Positive | None = None,
        mmd_on: Literal["data", "embeddings"] = "data",
        key: str = "series",
        allow_single: bool = False,
    ) -> None:
        super().__init__()
        if mmd_on not in ("data", "embeddings"):
            raise ConfigError(f"mmd_on must be 'data' or 'embeddings', got {mmd_on!r}")
        if devices is not None:
            flat = [int(c) for g in devices for c in g]
            if not devices or any(not g for g in devices) or len(set(flat)) != len(flat) or min(flat) < 0:
                raise ConfigError(
                    f"devices must be non-empty lists of distinct channel indices, got {devices!r}"
                )
        self.devices = None if devices is None else tuple(tuple(int(c) for c in g) for g in devices)
        self.inputs = (key,)  # type: ignore[misc]  # instance-level: set by the config
        self.kwargs: dict[str, Any] = dict(
            temperature=float(temperature),
            num_positives=num_positives,
            negatives=negatives,
            weighting=weighting,
            bandwidth=bandwidth,
            allow_single=allow_single,
        )
        self.anchor, self.mmd_on = anchor, mmd_on
        self._last: DeviceChoice | None = None

    def forward(self, emb: dict[str, torch.Tensor], **aux: Any) -> torch.Tensor:  # type: ignore[override]
        self.check_aux(aux)
        (z,) = self.select(emb)
        if z.ndim != 3:
            raise InputError(
                f"collossl_mmd needs {self.inputs[0]!r} as [N, D, d] device embeddings "
                f"(tower series_devices), got {tuple(z.shape)}"
            )
        views = z.transpose(0, 1)
        data = None
        if self.mmd_on == "data":
            if aux.get("series") is None or self.devices is None:
                raise InputError(
                    "collossl_mmd with mmd_on='data' needs the batch field 'series' [N, C, T] and "
                    "params.devices (channel groups); or set mmd_on: embeddings"
                )
            if len(self.devices) != views.shape[0]:
                raise InputError(
                    f"{len(self.devices)} devices in params.devices, {views.shape[0]} in the embeddings"
                )
            data = split_devices(aux["series"], self.devices)
        kw = self.kwargs
        choices = choose_devices(
            views,
            data,
            anchor=self.anchor,
            num_positives=kw["num_positives"],
            negatives=kw["negatives"],
            weighting=kw["weighting"],
            bandwidth=kw["bandwidth"],
        )
        self._last = choices[0]
        terms = [
            multiview_contrastive_loss(views, kw["temperature"], c, allow_single=kw["allow_single"])
            for c in choices
        ]
        return torch.stack(terms).mean()

    def log_values(self) -> dict[str, float]:
        if self._last is None:
            return {}
        p = self._last.positives[0]
        return {"collossl_positive": float(p), "collossl_mmd": self._last.mmd[p]}
