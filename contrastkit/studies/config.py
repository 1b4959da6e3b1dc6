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
    extra_metrics: [zeroshot/color/top1]  # also reported per setting and per comparison
    axes: [train.batch_size]           # plot the metric against these grid keys (axes.png)
    executor: pool                     # or ray: every run a Ray task (studies.ray_executor)
    ray: {address: null, cpus_per_run: 0, gpus_per_run: 0, memory_per_run: 0, max_retries: 3}
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from contrastkit.core.config import apply_overrides, from_dict, load_yaml
from contrastkit.core.errors import ConfigError

__all__ = [
    "Comparison",
    "RayConfig",
    "Setting",
    "StudyConfig",
    "load_study",
    "run_config_dict",
    "setting_slug",
]

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
class RayConfig:
    """Where ``executor: ray`` runs a study and what each run asks the cluster for
    (:mod:`contrastkit.studies.ray_executor`).

    ``address``: ``HOST:PORT`` of a running cluster's head node (``null``: start a local one);
    ``cpus_per_run``: CPUs per run, also its torch thread count (0: the run's ``train.threads``,
    1 when that is 0); ``gpus_per_run``: GPUs per run (fractions below 1 share a GPU);
    ``memory_per_run``: bytes or a size such as ``4GiB`` (0: no memory request); ``max_retries``:
    how often Ray reruns a run whose worker process or node died (it resumes from its checkpoint).
    """

    address: str | None = None
    cpus_per_run: float = 0
    gpus_per_run: float = 0
    memory_per_run: int | str = 0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.address is not None and not self.address.strip():
            raise ConfigError("ray.address must be HOST:PORT of a Ray head node, or null for a local cluster")
        for key in ("cpus_per_run", "gpus_per_run"):
            value = getattr(self, key)
            # Ray counts resources in units of 1/10,000 and refuses fractions of more than one GPU
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(f"ray.{key} must be a number >= 0, got {value!r}")
            if value != round(value, 4) or (key == "gpus_per_run" and value > 1 and value % 1):
                raise ConfigError(
                    f"ray.{key}={value}: Ray takes a fraction below 1 (to 4 decimals) or a whole number"
                )
        self.memory_bytes  # noqa: B018 -- validates memory_per_run
        if isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise ConfigError(f"ray.max_retries must be an integer >= 0, got {self.max_retries!r}")

    @property
    def memory_bytes(self) -> int:
        """``memory_per_run`` in bytes (0: no request)."""
        value = self.memory_per_run
        if isinstance(value, str):
            from contrastkit.core.errors import InputError
            from contrastkit.scale.planner import parse_bytes  # lazily: it imports torch

            try:
                value = parse_bytes(value)
            except (InputError, ValueError, OverflowError) as err:  # "1.2.3GiB", "1e999"
                raise ConfigError(f"ray.memory_per_run: {err}") from None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(
                f"ray.memory_per_run must be a size >= 0 (e.g. 4GiB), got {self.memory_per_run!r}"
            )
        return value


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
    executor: Literal["pool", "ray"] = "pool"
    ray: RayConfig = field(default_factory=RayConfig)
    extra_metrics: tuple[str, ...] = ()
    axes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bad_axes = [k for k in self.axes if k not in self.grid]
        if bad_axes:
            raise ConfigError(f"study axes {bad_axes} are not grid keys {sorted(self.grid)}")
        if self.metric in self.extra_metrics or len(set(self.extra_metrics)) != len(self.extra_metrics):
            raise ConfigError(f"study extra_metrics repeat a metric: {[self.metric, *self.extra_metrics]}")
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

    @property
    def metrics(self) -> tuple[str, ...]:
        """The study's metric, then its ``extra_metrics``."""
        return (self.metric, *self.extra_metrics)

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
