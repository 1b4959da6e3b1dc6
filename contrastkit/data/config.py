"""Typed configuration of a data source and its splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contrastkit.core.errors import ConfigError

__all__ = ["DataConfig"]


@dataclass(frozen=True)
class DataConfig:
    """Which data set, with which parameters, split how.

    ``params`` go to every split's builder; ``splits[split]`` adds per-split parameters
    (e.g. Shapes' ``n``). ``train_split`` is trained on; ``eval_splits`` are evaluated.
    ``label_task``: put this class task's labels in every batch as ``labels`` (for losses that
    use them, e.g. SupCon); images the task does not cover get unique labels (no positives).
    """

    name: str = "shapes"
    params: dict[str, Any] = field(default_factory=lambda: {"image_size": 32, "seed": 0})
    splits: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "train": {"n": 30000},
            "val": {"n": 1000},
            "test": {"n": 2000},
            "unseen": {"n": 1000},
        }
    )
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("test", "unseen")
    num_workers: int = 0
    label_task: str | None = None

    def __post_init__(self) -> None:
        for s in (self.train_split, *self.eval_splits):
            if s not in self.splits:
                raise ConfigError(f"data split {s!r} is not declared in data.splits {sorted(self.splits)}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")

    def split_params(self, split: str) -> dict[str, Any]:
        if split not in self.splits:
            raise ConfigError(f"unknown split {split!r}; declared: {sorted(self.splits)}")
        return {**self.params, **self.splits[split]}

    @classmethod
    def tiny(cls) -> DataConfig:
        return cls(
            params={"image_size": 32, "seed": 0},
            splits={"train": {"n": 512}, "test": {"n": 128}, "unseen": {"n": 64}},
        )
