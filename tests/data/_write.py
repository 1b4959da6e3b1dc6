"""Shared helpers of the file-source tests: write pairs as files, configure sources and runs."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from contrastkit.core.errors import MissingFileError
from contrastkit.data import DataConfig, ImageConfig
from contrastkit.data.convert import encode_image
from contrastkit.data.emoji import emoji_dir
from contrastkit.data.fashion import fashion_dir
from contrastkit.data.pairs import PairSet
from contrastkit.train import RunConfig, read_metrics


def _installed(find) -> bool:
    try:
        find()
    except MissingFileError:
        return False
    return True


# the same conditions and reasons as tests/data/test_real_data.py
needs_fashion = pytest.mark.skipif(
    not _installed(fashion_dir),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; make setup)",
)
needs_emoji = pytest.mark.skipif(
    not _installed(emoji_dir),
    reason="emoji data not installed (npm install --prefix .cache/npm emoji-datasource-google)",
)


def exact(size: int) -> ImageConfig:
    """Decoding whose evaluation and training transforms are both the identity on a square image
    of ``size`` px (a full-area, ratio-1 crop resized to its own size)."""
    return ImageConfig(size=size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))


def write_pngs(pairs: PairSet, folder: Path) -> list[str]:
    """Every image of ``pairs`` as ``folder/NNN.png`` (lossless); returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(len(pairs)):
        name = f"{i:03d}.png"
        (folder / name).write_bytes(encode_image(pairs.images[i]))
        names.append(name)
    return names


def write_table(path: Path, header: Sequence[str], rows: Iterable[Sequence], delimiter: str = ",") -> Path:
    """A csv (or, with ``delimiter="\\t"``, tsv) file written by Python's csv module (quoting)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def source_config(name: str, params: dict, image: ImageConfig, **changes) -> DataConfig:
    """A file source with one split, ``train`` (unless ``changes`` declare others), no evaluation."""
    changes = {"splits": {"train": {}}, "eval_splits": (), **changes}
    return DataConfig(name=name, params=params, image=image, **changes)


def run_config(out_dir: Path, name: str, data: DataConfig, **train_changes) -> RunConfig:
    """``RunConfig.tiny`` on ``data``, logging every step, without progress bars."""
    cfg = RunConfig.tiny(name=name, out_dir=str(out_dir))
    changes = {"log_every": 1, "progress": False, **train_changes}
    return dataclasses.replace(cfg, data=data, train=dataclasses.replace(cfg.train, **changes))


def logged_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def skip_totals(row: dict) -> dict[str, float]:
    """The ``skipped/<reason>`` values of a metrics row, by reason."""
    return {k.removeprefix("skipped/"): v for k, v in row.items() if k.startswith("skipped/")}


def take(loader, n: int) -> list:
    return list(itertools.islice(iter(loader), n))


def all_finite(values: Iterable[float]) -> bool:
    return all(math.isfinite(v) for v in values)
