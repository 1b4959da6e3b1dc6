"""Typed study files: a base run config, a grid of settings, seeds, and the comparisons to make.

.. code-block:: yaml

    name: shapes-clip-vs-siglip
    base: shapes-clip.yaml            # a run config, relative to this file
    overrides: {train.steps: 300}     # applied to every run
    grid:                              # settings = the cartesian product
      loss.name: [clip, siglip]
      train.batch_size: [32, 256]
    seeds: [0, 1, 2]                   # train.seed of each run (same seed ⇒ same init and data order)
    metric: zeroshot/shape+color/top1  # a per-example metric (see evaluation.evaluate_examples)
    split: test
    comparisons:
      - {baseline: {loss.name: clip}, intervention: {loss.name: siglip}, where: {train.batch_size: 32}}
    dynamics_every: 50                 # log the metric during training every 50 steps
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contrastkit.core.config import apply_overrides, from_dict, load_yaml
from contrastkit.core.errors import ConfigError

__all__ = ["Comparison", "Setting", "StudyConfig", "load_study", "run_config_dict", "setting_slug"]

Setting = tuple[tuple[str, Any], ...]  # ((key, value), ...) in grid order


@dataclass(frozen=True)
class Comparison:
    """Intervention vs baseline: two partial settings, optionally restricted by ``where``.
    ``paired``: resample seeds jointly (the default: runs of equal seed share init and data)."""

    baseline: dict[str, Any]
    intervention: dict[str, Any]
    where: dict[str, Any] = field(default_factory=dict)
    paired: bool = True
    expect_negative_effect: bool = False


@dataclass(frozen=True)
class StudyConfig:
    name: str
    base: str
    grid: dict[str, list[Any]]
    seeds: tuple[int, ...]
    comparisons: tuple[Comparison, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str = "zeroshot/shape+color/top1"
    split: str = "test"
    dynamics_every: int = 0
    nboot: int = 1000
    level: float = 0.95
    out_dir: str = "studies"

    def __post_init__(self) -> None:
        if not self.grid or any(not isinstance(v, list) or not v for v in self.grid.values()):
            raise ConfigError("study grid must map each key to a non-empty list of values")
        if not self.seeds:
            raise ConfigError("study needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"study seeds repeat: {list(self.seeds)}")
        for c in self.comparisons:
            for part in (c.baseline, c.intervention, c.where):
                unknown = sorted(set(part) - set(self.grid))
                if unknown:
                    raise ConfigError(
                        f"comparison names setting key(s) {unknown} not in the grid {sorted(self.grid)}"
                    )

    def settings(self) -> list[Setting]:
        keys = list(self.grid)
        return [tuple(zip(keys, vals)) for vals in itertools.product(*(self.grid[k] for k in keys))]

    def matching(self, partial: dict[str, Any]) -> list[Setting]:
        return [s for s in self.settings() if all(dict(s)[k] == v for k, v in partial.items())]


def setting_slug(setting: Setting) -> str:
    """A folder-safe name: ``loss.name=clip,train.batch_size=32`` → ``clip-bs32``-like string."""
    parts = []
    for k, v in setting:
        short = k.split(".")[-1].replace("batch_size", "bs").replace("name", "")
        if isinstance(v, (dict, list, tuple)):  # e.g. data.sampler: {name: class_mix, params: {...}}
            parts.append(f"{short}{_nested_slug(v)}")
        else:
            parts.append(f"{short}{v}".replace("/", "_").replace(" ", ""))
    return "-".join(parts)


def _nested_slug(v: Any) -> str:
    """A dict or list value as run-name characters (``class_mix+per_class=4``); long ones are cut
    and get a hash of the whole value, so different values keep different names."""

    def flat(x: Any) -> str:
        if isinstance(x, dict):
            return "+".join(flat(b) if a in ("name", "params") else f"{a}={flat(b)}" for a, b in x.items())
        if isinstance(x, (list, tuple)):
            return "+".join(flat(b) for b in x)
        return str(x)

    text = re.sub(r"[^A-Za-z0-9._+=-]", "", flat(v).replace("/", "_"))
    if len(text) > 56:
        text = f"{text[:48]}-{hashlib.sha1(repr(v).encode()).hexdigest()[:6]}"
    return text


def load_study(path: str | Path) -> tuple[StudyConfig, dict[str, Any]]:
    """The study and its base run config (as a dict with the study's overrides applied)."""
    path = Path(path)
    study = from_dict(StudyConfig, load_yaml(path))
    base_path = (path.parent / study.base).resolve()
    base = load_yaml(base_path)
    base = apply_overrides(base, [f"{k}={_yaml_value(v)}" for k, v in study.overrides.items()])
    return study, base


def run_config_dict(
    base: dict[str, Any], setting: Setting, seed: int, name: str, out_dir: str
) -> dict[str, Any]:
    """The run config of one (setting, seed) as a plain dict (validated later by RunConfig)."""
    cfg = apply_overrides(base, [f"{k}={_yaml_value(v)}" for k, v in setting])
    cfg = apply_overrides(cfg, [f"train.seed={seed}", f"name={name}", f"out_dir={out_dir}"])
    return cfg


def _yaml_value(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
