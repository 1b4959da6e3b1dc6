"""Crash-safe file writing.

Everything contrastkit persists (checkpoints, metrics, reports) is first written to a temporary
file in the destination's folder, flushed and fsynced, then moved into place with ``os.replace``,
which is atomic on POSIX and Windows. A process killed mid-write leaves the previous file intact
and at worst a stray ``*.tmp`` file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contrastkit.core.errors import ConfigError, MissingFileError

__all__ = [
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable_dir",
    "read_json",
    "save_png",
]


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it replaces ``dest`` atomically.

    The caller writes the temporary path with any library (safetensors, matplotlib…).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; results are meant to be shared
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _write_with(dest: str | Path, write: Callable[[Path], None]) -> None:
    with atomic_path(dest) as tmp:
        write(tmp)


def atomic_write_text(dest: str | Path, text: str) -> None:
    _write_with(dest, lambda p: p.write_text(text))


def atomic_write_json(dest: str | Path, obj: Any) -> None:
    _write_with(dest, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def save_png(fig: Any, dest: str | Path, *, dpi: int | None = 110, tight: bool = False) -> Path:
    """Write matplotlib figure ``fig`` to ``dest`` as a PNG through :func:`atomic_path`, then close it.

    Crash-safe like every other file contrastkit writes (a killed run leaves the previous PNG, not a
    truncated one), and the figure is closed even when writing fails, so a long study drawing many
    figures does not leak their memory. Creates ``dest``'s folder. ``dpi=None`` keeps matplotlib's
    ``savefig.dpi`` setting (by default the figure's own dpi); ``tight`` crops to the drawn content
    (``bbox_inches="tight"``). Returns ``dest`` as a :class:`~pathlib.Path`.
    """
    import matplotlib.pyplot as plt  # here, not at module level: core must not load matplotlib

    dest = Path(dest)
    try:
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)
    return dest


def read_json(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"file not found: {p}")
    return json.loads(p.read_text())


def check_writable_dir(path: str | Path, what: str = "out_dir") -> Path:
    """Create folder ``path`` (with its parents) if needed and check that a file can be written in it.

    Raises a one-line :class:`ConfigError` naming ``what`` when a file (or a dangling link) stands
    where a folder must be, or when the folder cannot be created or written (permissions, a
    read-only or pseudo file system), instead of an ``OSError`` traceback mid-run. Returns the path.
    """
    p = Path(path).expanduser()
    try:  # even looking can fail (a name longer than the file system allows)
        for folder in (p, *p.parents):
            if folder.exists() or folder.is_symlink():
                if not folder.is_dir():
                    kind = "a file" if folder.exists() else "a dangling link"
                    where = f"{what} {p} is" if folder == p else f"{what} {p}: {folder} is"
                    raise ConfigError(f"{where} {kind}, not a folder")
                break
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        shown = str(p) if len(str(p)) <= 120 else f"{str(p)[:60]}…({len(str(p))} characters)"
        raise ConfigError(f"{what} {shown} is not a writable folder: {err.strerror or err}") from None
    return p
