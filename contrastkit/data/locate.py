"""Where installed real-data packages live: a setting (environment variable) with a default.

Real data sets are installed by the project's set-up (``make setup``), never downloaded at run
time. Each source names an environment variable overriding its location and the command that
installs it, so a missing data set is a one-line error that says how to get it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from contrastkit.core.errors import MissingFileError

__all__ = ["locate_data", "repo_root"]


def repo_root() -> Path:
    """The source checkout holding this package (editable installs), used for ``.cache/``."""
    return Path(__file__).resolve().parents[2]


def locate_data(env: str, defaults: Sequence[Path], marker: str, what: str, install: str) -> Path:
    """The folder of a data set: ``$env`` if set, else the first of ``defaults`` that holds
    ``marker`` (a file or folder inside it). Raises :class:`MissingFileError` naming the places
    looked at and the ``install`` command otherwise."""
    override = os.environ.get(env)
    candidates = [Path(override).expanduser()] if override else [Path(p) for p in defaults]
    for folder in candidates:
        if (folder / marker).exists():
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise MissingFileError(
        f"{what} not found (looked for {marker} in {looked}); install it with `{install}` "
        f"(or `make setup`), or point ${env} at its folder"
    )
