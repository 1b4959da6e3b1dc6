"""Exception types shared by every layer.

All user-facing failures raise a subclass of :class:`ContrastkitError`, so callers (and the CLI) can
tell "your input is wrong" from a bug. Each also derives from the matching builtin, so code that
catches ``ValueError``/``KeyError``/``FileNotFoundError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ContrastkitError",
    "DataError",
    "InputError",
    "MissingFileError",
    "TrainingDivergedError",
    "UnknownNameError",
]


class ContrastkitError(Exception):
    """Base class of every error contrastkit raises on purpose."""


class InputError(ContrastkitError, ValueError):
    """A tensor or value handed to contrastkit is malformed (shape, dtype, NaN, empty)."""


class ConfigError(ContrastkitError, ValueError):
    """A configuration is invalid: unknown key, wrong type, value out of range."""


class UnknownNameError(ContrastkitError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class MissingFileError(ContrastkitError, FileNotFoundError):
    """A file contrastkit needs (checkpoint, config, data) does not exist."""


class TrainingDivergedError(ContrastkitError, RuntimeError):
    """Training produced too many non-finite or spiking steps and was stopped."""


class DataError(ContrastkitError, RuntimeError):
    """The data cannot feed the run: too many unusable samples, or a source that is empty."""
