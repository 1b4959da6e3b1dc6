"""Shared foundations: errors, input checks, typed configs, registries, atomic I/O, runtime."""

from contrastkit.core.checks import check_embeddings, check_finite, check_pair, check_scalar_param
from contrastkit.core.config import apply_overrides, from_dict, load_yaml, replace, to_dict
from contrastkit.core.errors import (
    ConfigError,
    ContrastkitError,
    InputError,
    MissingFileError,
    TrainingDivergedError,
    UnknownNameError,
)
from contrastkit.core.io import atomic_path, atomic_write_json, atomic_write_text, read_json
from contrastkit.core.registry import Registry, check_kwargs
from contrastkit.core.runtime import get_rng_state, seed_everything, set_rng_state, set_threads

__all__ = [
    "ConfigError",
    "ContrastkitError",
    "InputError",
    "MissingFileError",
    "Registry",
    "TrainingDivergedError",
    "UnknownNameError",
    "apply_overrides",
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "check_embeddings",
    "check_finite",
    "check_kwargs",
    "check_pair",
    "check_scalar_param",
    "from_dict",
    "get_rng_state",
    "load_yaml",
    "read_json",
    "replace",
    "seed_everything",
    "set_rng_state",
    "set_threads",
    "to_dict",
]
