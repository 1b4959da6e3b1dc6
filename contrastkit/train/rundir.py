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
* ``train.auto_resume`` (:func:`auto_resume`): a start that finds its folder holding the same
  config (``config.yaml`` read as a run config, defaults filled in, equal) resumes it instead of
  refusing; a folder of another
  config, or checkpoints without ``config.yaml``, stay an error, and ``overwrite`` is refused with
  it (a restarted launch would delete the run it should continue).
* Under several processes, what is read from a (shared) run folder to decide — resume or not, which
  checkpoint (:func:`agreed_checkpoint`) — is rank 0's reading, broadcast: ranks never act on
  different views of it.
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

from contrastkit.core.config import from_dict, load_yaml, to_dict
from contrastkit.core.errors import ConfigError, ContrastkitError
from contrastkit.core.io import atomic_write_text
from contrastkit.train.checkpoint import CheckpointError, latest_checkpoint
from contrastkit.train.distributed import DistContext, from_main

__all__ = [
    "MARKER",
    "RunLock",
    "agreed_checkpoint",
    "auto_resume",
    "check_run_name",
    "clear_for_overwrite",
    "exists_message",
    "has_checkpoint",
    "reanchor_stage",
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


def auto_resume(run_dir: Path, cfg: Any, ctx: DistContext, overwrite: bool) -> bool:
    """For a start of run config ``cfg`` with ``train.auto_resume``: whether to resume ``run_dir``
    (it holds the run of ``cfg``) rather than start it (no run there yet); a :class:`ConfigError`
    on every rank for a folder it may not take (module docstring). Collective: every rank calls it."""
    resume_it, error = from_main(_verdict(run_dir, cfg, overwrite) if ctx.main else (False, ""), ctx)
    if error:
        raise ConfigError(error)
    return resume_it


def agreed_checkpoint(run_dir: Path, ctx: DistContext) -> Path | None:
    """The checkpoint every rank resumes: rank 0's newest intact one (``latest_checkpoint``, with
    its fallback), or ``None`` before the first checkpoint. Collective: every rank calls it."""
    found, failure = None, None
    if ctx.main:
        try:
            found = latest_checkpoint(run_dir) if has_checkpoint(run_dir) else None
        except CheckpointError as err:
            failure = err
    name, message = from_main((found and found.name, failure and str(failure)), ctx)
    if failure is not None:
        raise failure
    if message is not None:  # the other ranks raise too, instead of waiting in a collective
        raise CheckpointError(message)
    return None if name is None else run_dir / "checkpoints" / name


def _verdict(run_dir: Path, cfg: Any, overwrite: bool) -> tuple[bool, str]:
    """Rank 0's reading for :func:`auto_resume`: ``(resume, error message or "")``."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        if not (run_dir / "checkpoints").exists():
            return False, ""  # nothing to resume: a fresh start (a folder left empty is reused)
        return False, f"run folder {run_dir} has checkpoints but no config.yaml: it cannot be resumed"
    if overwrite:
        return False, (
            f"train.auto_resume resumes run folder {run_dir}, and --overwrite would delete it: pass one "
            "(to start it again: --overwrite --set train.auto_resume=false)"
        )
    try:  # read as the run config, as resume reads it: a key added since with its default is the same
        old = to_dict(from_dict(type(cfg), load_yaml(saved)))
    except (OSError, ContrastkitError) as err:
        return False, f"train.auto_resume: {saved} is not a readable run config ({err})"
    new = to_dict(cfg)
    if old != new:
        diff = _first_difference(old, new)
        return False, (
            f"run folder {run_dir} holds a run of another config ({diff}); train.auto_resume resumes "
            "only the same config: pick another name (--name) or start it again with --overwrite "
            "and train.auto_resume=false"
        )
    return True, ""


def _first_difference(old: Any, new: Any, where: str = "") -> str:
    """The first key whose value differs between two configs (as dicts): ``key: A there, B now``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
    return f"{where or 'config'}: {old!r} there, {new!r} now"


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


def reanchor_stage(folder: Path, want: Any, ctx: DistContext) -> None:
    """Rewrite stage run ``folder``'s saved config so its sampler and ``train.init_from`` are
    ``want``'s (a :class:`~contrastkit.train.config.RunConfig` of the stage as it would be built
    now). A staged run (multistage MCL, continual) saves the paths of its group or memory file and
    of the previous stage as absolute paths; after the run folder moves they must point at the new
    place, or a resume would read the old files, or none. Main process writes, all wait."""
    from dataclasses import replace

    import yaml

    from contrastkit.train.setup import load_run_config

    if ctx.main:
        saved = load_run_config(folder)
        if (saved.data.sampler, saved.train.init_from) != (want.data.sampler, want.train.init_from):
            fixed = replace(
                saved,
                data=replace(saved.data, sampler=want.data.sampler),
                train=replace(saved.train, init_from=want.train.init_from),
            )
            atomic_write_text(folder / "config.yaml", yaml.safe_dump(to_dict(fixed), sort_keys=False))
    ctx.barrier()
