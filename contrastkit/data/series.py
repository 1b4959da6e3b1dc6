"""Sensor time series with class captions: UCR/UEA classification sets read from local ``.ts`` files.

The sets ship inside the ``sktime`` wheel (``sktime/datasets/data/<Name>/<Name>_{TRAIN,TEST}.ts``,
installed by ``make setup`` without sktime's dependencies, which pin an older pandas). This module
**never imports sktime**: it finds the package folder with ``importlib.util.find_spec`` (which runs
no sktime code) and parses the ``.ts`` text itself, so no download code path exists.
``$CONTRASTKIT_SERIES_DIR`` points at another folder of ``<Name>/<Name>_TRAIN.ts`` files instead
(e.g. sets unpacked from the UEA archive by hand).

Classification sets in sktime 1.2.0 (train / test sizes, channels C, length T):

========================  ==========  ====  ===========  =====================================
set                       train/test  C     T            classes
========================  ==========  ====  ===========  =====================================
BasicMotions              40 / 40     6     100          standing, running, walking, badminton
JapaneseVowels            270 / 370   12    7–29 → 29    9 speakers
ACSF1                     100 / 100   1     1460         10 appliances
ArrowHead                 36 / 175    1     251          3 arrowhead types
GunPoint                  50 / 150    1     150          gun-draw, point
ItalyPowerDemand          67 / 1029   1     24           winter / summer half-year days
OSULeaf                   200 / 242   1     427          6 leaf species
PLAID                     537 / 537   1     100–1344     11 appliances
========================  ==========  ====  ===========  =====================================

(ArticularyWordRecognition, Epilepsy, UWave… are *not* in the wheel; sktime's loader would
download them.) The other ``.ts`` files there (Covid3Month, Tecator: regression; UnitTest) have no
class labels and are refused.

Protocol of :func:`load_series`:

* classes are numbered in the order of the file's ``@classLabel`` header; readable names come from
  the set's description (:data:`SERIES_SETS`; codes without a description become ``"class <code>"``);
* **fixed length** T: equal-length sets keep theirs; unequal ones are brought to ``length``
  (default: the set's own, e.g. 29 for JapaneseVowels) by ``fit="resample"`` — per channel linear
  interpolation on ``T`` evenly spaced points of the original span (first and last samples kept)
  — or ``fit="pad"`` — truncate to T, then pad the end with zeros *after* standardisation (= the
  channel's train mean); ``lengths`` keeps each recording's original length;
* **per-channel standardisation** with the train split's statistics: ``(x − μ_c)/σ_c`` with
  ``μ_c, σ_c`` over every (sample, real time step) of the train split (population std; ``σ_c = 0``
  becomes 1), the same numbers for ``test`` (``SeriesSet.mean/std``);
* **devices**: channel groups recorded by one sensor (BasicMotions: accelerometer xyz = channels
  0–2, gyroscope xyz = 3–5, as the description lists them; the first three channels carry the
  larger, gravity-like means, which fits); every other set is one device holding all channels;
* **captions** (:meth:`SeriesSet.captions`): one per sample, ``template.format(classname)`` with
  the template drawn from ``(seed, index)`` — deterministic; zero-shot prompts use *other*
  templates (``eval_templates``) so accuracy measures transfer to unseen wording.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from contrastkit.core.errors import InputError, MissingFileError, UnknownNameError

__all__ = [
    "SERIES_SETS",
    "SPLITS",
    "SeriesSet",
    "SeriesSpec",
    "load_series",
    "read_ts",
    "series_dir",
    "series_names",
]

SPLITS = ("train", "test")
_ENV = "CONTRASTKIT_SERIES_DIR"
_INSTALL = "pip install --no-deps sktime==1.2.0"


@dataclass(frozen=True)
class SeriesSpec:
    """What the ``.ts`` file does not say: readable class names (file code → name), caption and
    prompt templates, channel names, the device grouping of channels, the fixed length of an
    unequal-length set, and where the names come from (``source``)."""

    classnames: dict[str, str] = field(default_factory=dict)
    templates: tuple[str, ...] = ("a time series of {}", "a recording of {}", "measurements of {}")
    eval_templates: tuple[str, ...] = ("a signal of {}", "data from {}")
    channel_names: tuple[str, ...] = ()
    devices: tuple[tuple[int, ...], ...] = ()
    device_names: tuple[str, ...] = ()
    length: int | None = None
    source: str = "codes only"


def _codes(names: Sequence[str], codes: range) -> dict[str, str]:
    return dict(zip(map(str, codes), names, strict=True))


_ACSF1 = ("a mobile phone charger", "a coffee machine", "a computer station", "a fridge",
    "a hi-fi system", "a compact fluorescent lamp", "a laptop charger",
    "a microwave oven", "a printer", "a television")  # fmt: skip
_OSULEAF = ("Acer circinatum", "Acer glabrum", "Acer macrophyllum", "Acer negundo",
    "Quercus garryana", "Quercus kelloggii")  # fmt: skip
_PLAID = ("an air conditioner", "a compact fluorescent lamp", "a fan", "a fridge", "a hairdryer",
    "a heater", "an incandescent light bulb", "a laptop", "a microwave", "a vacuum cleaner",
    "a washing machine")  # fmt: skip
_ORDER = "names in the order the description lists them (the file does not tie names to codes)"
SERIES_SETS: dict[str, SeriesSpec] = {
    "BasicMotions": SeriesSpec(
        classnames={
            "Standing": "standing still",
            "Running": "running",
            "Walking": "walking",
            "Badminton": "playing badminton",
        },
        templates=("a person {}", "sensor readings of someone {}", "someone is {}"),
        eval_templates=("smartwatch data of a person {}", "a recording of someone {}"),
        channel_names=("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"),
        devices=((0, 1, 2), (3, 4, 5)),
        device_names=("accelerometer", "gyroscope"),
        source="file labels; 'Standing' is the description's 'resting'",
    ),
    "JapaneseVowels": SeriesSpec(
        classnames={str(k): f"speaker {k}" for k in range(1, 10)},
        templates=("the vowels spoken by {}", "a recording of {}", "the voice of {}"),
        eval_templates=("speech from {}", "audio features of {}"),
        channel_names=tuple(f"lpc_{k}" for k in range(1, 13)),
        device_names=("microphone",),
        length=29,
        source="description: 9 male speakers; 12 LPC cepstrum coefficients per frame",
    ),
    "ACSF1": SeriesSpec(
        classnames=_codes(_ACSF1, range(10)),
        templates=("the power consumption of {}", "an electricity trace of {}", "{} drawing power"),
        eval_templates=("the energy use of {}", "a power signature of {}"),
        channel_names=("power",),
        device_names=("power meter",),
        source=_ORDER,
    ),
    "ArrowHead": SeriesSpec(
        classnames={"0": "an Avonlea arrowhead", "1": "a Clovis arrowhead", "2": "a Mix arrowhead"},
        templates=("the outline of {}", "the shape of {}"),
        eval_templates=("a contour of {}",),
        channel_names=("angle",),
        device_names=("outline",),
        source=_ORDER,
    ),
    "GunPoint": SeriesSpec(
        classnames={"1": "drawing a gun", "2": "pointing a finger"},
        templates=("a hand {}", "an actor {}", "someone is {}"),
        eval_templates=("motion of a person {}",),
        channel_names=("hand_x",),
        device_names=("camera tracker",),
        source=_ORDER,
    ),
    "ItalyPowerDemand": SeriesSpec(
        classnames={"1": "a day from October to March", "2": "a day from April to September"},
        templates=("the power demand of {}", "electricity demand on {}"),
        eval_templates=("Italian power use on {}",),
        channel_names=("demand",),
        device_names=("grid",),
        source=_ORDER,
    ),
    "OSULeaf": SeriesSpec(
        classnames=_codes(_OSULEAF, range(1, 7)),
        templates=("the outline of a leaf of {}", "a leaf of {}"),
        eval_templates=("a leaf contour of {}",),
        channel_names=("radius",),
        device_names=("outline",),
        source=_ORDER,
    ),
    "PLAID": SeriesSpec(
        classnames=_codes(_PLAID, range(11)),
        templates=("the current drawn by {}", "an electricity trace of {}", "{} switching on"),
        eval_templates=("the power signature of {}",),
        channel_names=("current",),
        device_names=("power meter",),
        length=500,
        source="description: class 0 air conditioner … class 10 washing machine, listed in order",
    ),
}


@dataclass(frozen=True)
class SeriesSet:
    """One split of a series set. ``values``: ``float32 [N, C, T]`` standardised with the train
    split's ``mean``/``std`` (``float32 [C]``); ``labels``: ``int64 [N]`` indices into
    ``classnames``; ``lengths``: ``int64 [N]`` original lengths; ``devices``: channel indices per
    device (a partition of ``range(C)``), named by ``device_names``."""

    name: str
    split: str
    values: torch.Tensor
    labels: torch.Tensor
    classnames: tuple[str, ...]
    channel_names: tuple[str, ...]
    devices: tuple[tuple[int, ...], ...]
    device_names: tuple[str, ...]
    lengths: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    templates: tuple[str, ...]
    eval_templates: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def captions(self, seed: int = 0, templates: Sequence[str] | None = None) -> tuple[str, ...]:
        """One caption per sample: ``templates[k].format(classnames[label])`` with ``k`` drawn
        uniformly from a generator seeded by ``seed`` (the same list for the same seed)."""
        templates = tuple(self.templates if templates is None else templates)
        _check_templates(templates)
        gen = torch.Generator().manual_seed(int(seed))
        picks = torch.randint(len(templates), (len(self),), generator=gen).tolist()
        return tuple(templates[k].format(self.classnames[y]) for k, y in zip(picks, self.labels.tolist()))

    def prompts(self, templates: Sequence[str] | None = None) -> list[list[str]]:
        """Zero-shot prompts: for each class, ``template.format(name)`` for every template
        (default ``eval_templates``, none of which is a caption template)."""
        templates = tuple(self.eval_templates if templates is None else templates)
        _check_templates(templates)
        return [[t.format(name) for t in templates] for name in self.classnames]

    def device_values(self, device: int) -> torch.Tensor:
        """``values`` of one device's channels, ``[N, C_d, T]``."""
        if not 0 <= device < len(self.devices):
            raise InputError(f"device {device} out of range: {self.name} has {len(self.devices)} devices")
        return self.values[:, list(self.devices[device])]


def _check_templates(templates: Sequence[str]) -> None:
    if not templates or any("{}" not in t for t in templates):
        raise InputError(f"every template must contain '{{}}', got {list(templates)}")


def series_dir() -> Path:
    """The folder of ``<Name>/<Name>_TRAIN.ts`` sets: ``$CONTRASTKIT_SERIES_DIR`` if set, else the
    installed sktime wheel's ``datasets/data`` (found without importing sktime)."""
    override = os.environ.get(_ENV)
    if override:
        folder = Path(override).expanduser()
        if not folder.is_dir():
            raise MissingFileError(f"${_ENV} is {override!r}, which is not a folder")
        return folder
    spec = importlib.util.find_spec("sktime")  # locates the package; runs none of its code
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(
            f"series data sets not found: sktime is not installed; install it with `{_INSTALL}` "
            f"(or `make setup`), or point ${_ENV} at a folder of <Name>/<Name>_TRAIN.ts files"
        )
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def series_names(root: Path | None = None) -> list[str]:
    """Sets that have a train and a test file in ``root`` (default :func:`series_dir`), sorted;
    the label-free ones (regression, sktime's unit test set) are left out."""
    root = series_dir() if root is None else Path(root)
    names = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        n = folder.name
        if n not in ("UnitTest", "Covid3Month", "Tecator") and all(
            (folder / f"{n}_{s.upper()}.ts").is_file() for s in SPLITS
        ):
            names.append(n)
    return names


@lru_cache(maxsize=16)
def read_ts(path: Path) -> tuple[tuple[np.ndarray, ...], tuple[str, ...], tuple[str, ...]]:
    """Parse a ``.ts`` classification file: ``(series, labels, classes)`` with one float64
    ``[C, T_i]`` array per recording, its label string, and the ``@classLabel`` list (file order).
    Dimensions are separated by ``:``, the label is the last field; ``?`` (missing) is refused."""
    classes: tuple[str, ...] = ()
    series, labels = [], []
    in_data = False
    with open(path, encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                tag, *rest = line.split()
                tag = tag.lower()
                if tag == "@classlabel":
                    if not rest or rest[0].lower() != "true":
                        raise InputError(f"{path} has no class labels (not a classification set)")
                    classes = tuple(rest[1:])
                elif tag == "@timestamps" and rest and rest[0].lower() == "true":
                    raise InputError(f"{path}: time-stamped .ts files are not supported")
                elif tag == "@data":
                    in_data = True
                continue
            *dims, label = line.split(":")
            if "?" in line:
                raise InputError(f"{path}:{lineno}: missing values ('?') are not supported")
            try:
                rows = [np.array(d.split(","), dtype=np.float64) for d in dims]
            except ValueError as err:
                raise InputError(f"{path}:{lineno}: not a number ({err})") from None
            if not rows or len({len(r) for r in rows}) != 1:
                raise InputError(f"{path}:{lineno}: every dimension of a recording needs the same length")
            series.append(np.stack(rows))
            labels.append(label.strip())
    if not classes:
        raise InputError(f"{path} has no @classLabel header (not a classification set)")
    if not series:
        raise InputError(f"{path} holds no recordings")
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise InputError(f"{path}: labels {unknown} are not in @classLabel {list(classes)}")
    return tuple(series), tuple(labels), classes


def _fit_length(series: Sequence[np.ndarray], length: int, fit: str) -> tuple[np.ndarray, np.ndarray]:
    """``[N, C, length]`` array and a ``bool [N, length]`` mask of real (not padded) steps."""
    c = series[0].shape[0]
    out = np.zeros((len(series), c, length), dtype=np.float64)
    real = np.zeros((len(series), length), dtype=bool)
    for i, s in enumerate(series):
        t = s.shape[1]
        if fit == "pad" or t == length:
            k = min(t, length)
            out[i, :, :k], real[i, :k] = s[:, :k], True
        else:  # linear interpolation on `length` evenly spaced points of [0, t − 1]
            grid = np.linspace(0.0, t - 1.0, length) if t > 1 else np.zeros(length)
            out[i] = np.stack([np.interp(grid, np.arange(t), ch) for ch in s])
            real[i] = True
    return out, real


def _split_arrays(path: Path, length: int, fit: str, channels: int):
    """``(values [N, C, T], real [N, T], labels, classes, original lengths)`` of one ``.ts`` file."""
    series, labels, classes = read_ts(path)
    bad = {s.shape[0] for s in series} - {channels}
    if bad:
        raise InputError(f"{path}: recordings with {sorted(bad)} channels; the set has {channels}")
    values, real = _fit_length(series, length, fit)
    return values, real, labels, classes, [s.shape[1] for s in series]


def _channel_stats(values: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std over every (sample, real time step); std 0 → 1."""
    steps = values.transpose(1, 0, 2)[:, real]  # [C, number of real steps]
    mean, std = steps.mean(1), steps.std(1)
    std[std == 0] = 1.0  # a constant channel becomes 0 rather than a division by zero
    return mean, std


def load_series(
    name: str,
    split: str = "train",
    *,
    length: int | None = None,
    fit: Literal["resample", "pad"] = "resample",
    root: Path | str | None = None,
) -> SeriesSet:
    """Load ``split`` (``train`` or ``test``) of the series set ``name`` as a :class:`SeriesSet`
    (protocol in the module docstring). ``length``: the fixed T (default: the set's own; for an
    equal-length set any other value resamples / pads it too). ``root``: folder of the sets
    (default :func:`series_dir`). Unknown names list the available sets."""
    if split not in SPLITS:
        raise InputError(f"series set {name!r} has no split {split!r}; splits: {list(SPLITS)}")
    if fit not in ("resample", "pad"):
        raise InputError(f"fit must be 'resample' or 'pad', got {fit!r}")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise InputError(f"length must be a positive integer, got {length!r}")
    folder = series_dir() if root is None else Path(root)
    available = series_names(folder)
    if name not in available:
        raise UnknownNameError(f"unknown series set {name!r}; available in {folder}: {', '.join(available)}")
    spec = SERIES_SETS.get(name, SeriesSpec())
    train_path = folder / name / f"{name}_TRAIN.ts"
    train_raw, _, classes = read_ts(train_path)
    channels = train_raw[0].shape[0]
    t = length or spec.length or max(s.shape[1] for s in train_raw)
    mean, std = _channel_stats(*_split_arrays(train_path, t, fit, channels)[:2])
    values, real, labels, file_classes, raw_len = _split_arrays(
        folder / name / f"{name}_{split.upper()}.ts", t, fit, channels
    )
    if file_classes != classes:
        raise InputError(
            f"{name}: train classes {list(classes)} differ from {split} classes {list(file_classes)}"
        )
    values = (values - mean[None, :, None]) / std[None, :, None]
    values[~np.broadcast_to(real[:, None, :], values.shape)] = 0.0
    index = {c: k for k, c in enumerate(classes)}
    return SeriesSet(
        name=name,
        split=split,
        values=torch.from_numpy(values.astype(np.float32)),
        labels=torch.tensor([index[y] for y in labels], dtype=torch.int64),
        classnames=tuple(spec.classnames.get(c, f"class {c}") for c in classes),
        channel_names=spec.channel_names or tuple(f"dim_{k}" for k in range(channels)),
        devices=spec.devices or (tuple(range(channels)),),
        device_names=spec.device_names or ("sensor",),
        lengths=torch.tensor(raw_len, dtype=torch.int64),
        mean=torch.from_numpy(mean.astype(np.float32)),
        std=torch.from_numpy(std.astype(np.float32)),
        templates=spec.templates,
        eval_templates=spec.eval_templates,
    )
