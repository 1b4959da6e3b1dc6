"""Run folders: safe names, an ownership marker, and one process at a time.

* A run name is **one safe path component** (letters, digits, ``._+-=``, not starting with ``.``,
  at most 128 characters): ``--name ../x``, an absolute path or an empty name never write
  outside ``out_dir`` nor make ``out_dir`` itself the run folder.
* Every run folder contrastkit creates holds a marker file, :data:`MARKER`. ``overwrite`` deletes
  only a folder that carries it, so a folder that merely holds a ``config.yaml`` survives, and so
  do ``out_dir`` and everything above it (a safe name keeps the run folder strictly inside).
* Training, resuming and overwriting take an exclusive lock (``fcntl.flock``) on
  ``out_dir/.<name>.lock``, beside the run folder so that it outlives an overwrite. The kernel
  drops the lock when the process exits, even on SIGKILL, so a crash never leaves a stale lock.
  A second process gets a one-line error naming the holder's pid.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from contrastkit.core.errors import ConfigError
from contrastkit.core.io import atomic_write_text

__all__ = [
    "MARKER",
    "RunLock",
    "check_run_name",
    "clear_for_overwrite",
    "exists_message",
    "has_checkpoint",
    "run_folder",
    "start_folder",
    "write_marker",
]

MARKER = ".contrastkit-run"
_NAME = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9._+=-]{0,127}")


def check_run_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is one safe path component."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"run name {name!r} must be one folder name: letters, digits and . _ + = - (not starting "
            "with '.', at most 128 characters; no '/', no '..', not empty)"
        )


def run_folder(out_dir: str | Path, name: str) -> Path:
    """``out_dir/name`` for a safe ``name``; ``out_dir`` must not be a file."""
    check_run_name(name)
    parent = Path(out_dir)
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"out_dir {parent} is a file, not a folder")
    return parent / name


def write_marker(run_dir: Path) -> None:
    """Mark ``run_dir`` as a contrastkit run folder (what ``overwrite`` may delete)."""
    atomic_write_text(run_dir / MARKER, json.dumps({"created": time.time(), "pid": os.getpid()}))


def clear_for_overwrite(run_dir: Path) -> None:
    """Delete the run folder ``run_dir`` for a fresh start, if it is one contrastkit made."""
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run folder (a link or a file); remove it yourself")
    if not (run_dir / MARKER).is_file():
        raise ConfigError(
            f"{run_dir} has no contrastkit run marker ({MARKER}): it was not created by contrastkit "
            "(or by a version before markers), so overwrite will not delete it; remove it yourself "
            "or pick another name"
        )
    shutil.rmtree(run_dir)


def start_folder(
    run_dir: Path, config_yaml: str, ctx: Any, exists: bool, overwrite: bool, message: str
) -> None:
    """Claim ``run_dir`` for a fresh start, on every rank under the lock: an existing folder is an
    error (``message``) unless ``overwrite``; rank 0 clears it, writes the marker and the config.
    ``ctx`` is the run's :class:`~contrastkit.train.distributed.DistContext` (barriers on both sides,
    so every rank has looked before rank 0 clears, and none goes on before the config is there)."""
    if exists and not overwrite:
        raise ConfigError(message)
    ctx.barrier()
    if ctx.main:
        if exists:
            clear_for_overwrite(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_marker(run_dir)
        atomic_write_text(run_dir / "config.yaml", config_yaml)
    ctx.barrier()


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run folder holds any checkpoint (intact or not)."""
    ckpts = run_dir / "checkpoints"
    return (ckpts / "latest.json").is_file() or any(ckpts.glob("step_*"))


def exists_message(run_dir: Path) -> str:
    """What to run when a fresh start finds ``run_dir`` already there."""
    if has_checkpoint(run_dir):
        return (
            f"run folder {run_dir} already exists; resume it (contrastkit train --resume {run_dir}), "
            "pick another name (--name), or start it again with --overwrite"
        )
    return (
        f"run folder {run_dir} already exists but has no checkpoint yet (it stopped before its first "
        f"one); contrastkit train --resume {run_dir} starts it again from step 0 with its config, "
        "or pick another name (--name), or pass --overwrite"
    )


class RunLock:
    """Exclusive lock on a run folder for the duration of a ``with`` block (module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self.run_dir = run_dir
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"run folder {self.run_dir} is in use by another contrastkit process (pid {holder}); "
                "wait for it to finish or pick another name"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
