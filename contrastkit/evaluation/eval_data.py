"""What an evaluation reads: the evaluated splits of a built-in set or a file source, decoded as
the model expects, the split that fitting tasks fit on, and the checks made before any model is
loaded or data generated (unknown task, data set, split or parameter; missing prompt file).
Used by :mod:`contrastkit.evaluation.report` and :mod:`contrastkit.curation` (``run_image``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

from contrastkit.core.errors import InputError
from contrastkit.core.progress import progress_enabled
from contrastkit.data import SOURCES, DataConfig, ImageConfig, check_data, load_split
from contrastkit.data.pairs import PairSet
from contrastkit.evaluation.prompts import apply_prompt_files, prompt_entries
from contrastkit.evaluation.splits import fit_split
from contrastkit.evaluation.tasks import EVAL_TASKS

__all__ = [
    "check_batch_size",
    "check_request",
    "data_split",
    "load_sets",
    "model_image",
    "named_data",
    "run_image",
]


def data_split(data: str, split: str, params: dict[str, Any] | None, image: ImageConfig) -> PairSet:
    """``split`` of a built-in set, or of a file source decoded with ``image`` (module docstring)."""
    cfg = DataConfig(
        name=data,
        params=dict(params or {}),
        splits={split: {}},
        train_split=split,
        eval_splits=(split,),
        image=image,
    )
    return load_split(cfg, split, progress_enabled())


def load_sets(
    data: str,
    splits: Sequence[str],
    params: dict[str, Any] | None,
    prompt_files: dict[str, Any],
    train_split: str | None,
    image: ImageConfig,
    tasks: Sequence[str] = (),
) -> tuple[dict[str, PairSet], PairSet | None, dict[str, Any]]:
    """The evaluated splits, the split ``tasks`` fit on (default: a built-in set's ``train``; a file
    source has none, module docstring) and the data record of ``data``."""
    sets = {s: apply_prompt_files(data_split(data, s, params, image), **prompt_files) for s in splits}
    default, origin = "train", f"default: the train split of the built-in data set {data!r}"
    if data in SOURCES:
        default = None
        origin = f"no default for the file source {data!r}: without a split column or split folders "
        origin += "every split name returns the same rows"
    load = lambda s: data_split(data, s, params, image)  # noqa: E731
    train, fit = fit_split(tasks, train_split, default, origin, load)
    record: dict[str, Any] = {"data": data, "data_params": dict(params or {}), "fit_split": fit}
    if data in SOURCES:
        record["image"] = asdict(image)
    return sets, train, record


def run_image(cfg: DataConfig) -> ImageConfig:
    """How a run decodes other data: as it trained (a file source), else at its images' size."""
    size = cfg.split_params(cfg.train_split).get("image_size")
    return replace(cfg.image, size=int(size)) if cfg.name not in SOURCES and size else cfg.image


def model_image(record: dict[str, Any]) -> ImageConfig:
    """Decode size for a Hugging Face model: its processor's resize size (else 224)."""
    resize = (record.get("image_preprocessing") or {}).get("resize") or {}
    return ImageConfig(size=int(resize.get("shortest_edge") or resize.get("height") or 224))


def check_batch_size(batch_size: int | None) -> None:
    """An encoder batch size is an integer >= 1 (``None``: the default), refused up front."""
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def named_data(data: str, params: dict[str, Any] | None, splits: Sequence[str]) -> DataConfig:
    """``data`` with ``params`` and ``splits`` as a data config (what :func:`check_data` checks)."""
    names = tuple(dict.fromkeys(splits))
    return DataConfig(
        name=data,
        params=dict(params or {}),
        splits={s: {} for s in names},
        train_split=names[0],
        eval_splits=names,
    )


def check_request(
    tasks: Sequence[str], data: DataConfig, splits: Sequence[str], prompt_files: dict[str, Any]
) -> None:
    """Refuse, before a model is loaded or any data generated or read, what the request alone gets
    wrong: an unknown task; an unknown data set, split or parameter, a missing data file
    (:func:`~contrastkit.data.loading.check_data`); a missing or empty prompt file."""
    for name in tasks:
        EVAL_TASKS.get(name)  # an unknown name lists the tasks
    check_data(data, splits)
    for key, what in (("classes", "class names"), ("templates", "templates")):
        if prompt_files.get(key) is not None:
            prompt_entries(prompt_files[key], what)
