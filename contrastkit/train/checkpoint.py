"""Checkpoints: safetensors + JSON, written atomically, verified before loading, restoring training exactly.

Layout of ``RUN/checkpoints/step_00000500/``:

* ``model.safetensors`` — model weights (``model.*``) and the loss's learnable scalars (``loss.*``);
* ``optimizer.safetensors`` — optimizer tensors (``state/<param>/<name>``) and RNG tensors;
* ``state.json`` — step, optimizer param groups, scheduler, step guard, Python/NumPy RNG states, data
  position, caller-supplied extras, and the integrity record: ``files`` (``sha256`` and ``bytes`` of
  both safetensors files) and ``sha256``, the hash of state.json's own parsed content without that key.

A checkpoint is written into a hidden temporary folder, every file fsynced, then renamed into
place (atomic on POSIX); only then is ``latest.json`` replaced (atomically) to point at it. A process
killed at any moment leaves the previous checkpoint and pointer intact. No pickle anywhere.
A crash cannot tear a checkpoint, but a disk, a copy or a person can, and safetensors loads flipped
bytes as wrong weights without a word: hence the checksums, checked before anything is loaded, and
the fallback to the newest intact folder. Checkpoints older than the record load with headers checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from contrastkit.core.errors import ContrastkitError, InputError, MissingFileError
from contrastkit.core.io import atomic_write_json
from contrastkit.core.runtime import get_rng_state, set_rng_state

__all__ = [
    "CheckpointError",
    "CheckpointState",
    "CheckpointWriteError",
    "MissingCheckpointError",
    "latest_checkpoint",
    "load_checkpoint",
    "load_tower_weights",
    "load_weights",
    "save_checkpoint",
    "verify_checkpoint",
]

TENSOR_FILES = ("model.safetensors", "optimizer.safetensors")
_STATE_KEYS = ("step", "optimizer", "scheduler", "rng", "extra")
_STEP_DIR = re.compile(r"step_(\d+)")


class CheckpointError(ContrastkitError, RuntimeError):
    """A checkpoint is damaged (truncated, corrupt, unreadable) or could not be written."""


class MissingCheckpointError(CheckpointError, MissingFileError):
    """A checkpoint, or one of its files, does not exist (also a ``FileNotFoundError``)."""


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (disk full, I/O error); the previous checkpoint is untouched."""


@dataclass
class CheckpointState:
    """The non-weight state returned by :func:`load_checkpoint`."""

    step: int
    extra: dict[str, Any]


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _state_hash(state: dict[str, Any]) -> str:
    """Hash of the parsed content (not the bytes): the same before writing and after reading."""
    body = {k: v for k, v in state.items() if k != "sha256"}
    text = json.dumps(json.loads(json.dumps(body, sort_keys=True)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in sd["state"].items():
        for key, val in pstate.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state/{pid}/{key}"] = val.detach().cpu().contiguous()
            else:
                scalars[f"{pid}/{key}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("state/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = val
    for key, val in meta["scalars"].items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = val
    return {"state": state, "param_groups": meta["param_groups"]}


def _weights(model: nn.Module, loss: nn.Module) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out.update({f"loss.{k}": v.detach().cpu().contiguous() for k, v in loss.state_dict().items()})
    return out


def _step_folders(ckpt_dir: Path) -> list[Path]:
    """``step_*`` folders sorted by step as a number (names stop sorting once steps pass 10⁸)."""
    found = [p for p in ckpt_dir.glob("step_*") if _STEP_DIR.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _clean_stale(ckpt_dir: Path) -> None:
    """Remove what an earlier crashed save left: half-written ``.tmp-*`` folders and pointer temps;
    a ``.old-*`` folder is the only copy of its step if the swap died halfway, so it goes back."""
    for p in ckpt_dir.glob(".tmp-step_*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_dir.glob(".latest.json.*.tmp"):
        p.unlink(missing_ok=True)
    for p in ckpt_dir.glob(".old-step_*"):
        final = ckpt_dir / p.name[len(".old-") :].rsplit("-", 1)[0]
        if final.exists():
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.replace(p, final)


def _swap_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.parent / f".old-{final.name}-{os.getpid()}"  # re-saving a step (e.g. after resume)
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old)


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    model: nn.Module,
    loss: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically under ``ckpt_dir``; keep the newest ``keep``. An ``OSError``
    while writing (disk full…) removes the temporary folder and raises :class:`CheckpointWriteError`
    with the bytes needed and free; the previous checkpoint and ``latest.json`` stay resumable."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale(ckpt_dir)
    final = ckpt_dir / f"step_{step:08d}"
    tmp = ckpt_dir / f".tmp-{final.name}-{os.getpid()}"
    opt_tensors, opt_meta = _optimizer_split(optimizer)
    rng = get_rng_state()
    opt_tensors["rng/torch"] = rng.pop("torch")
    for i, s in enumerate(rng.pop("cuda", [])):
        opt_tensors[f"rng/cuda/{i}"] = s
    weights = _weights(model, loss)
    state: dict[str, Any] = {
        "step": step,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict(),
        "rng": rng,
    }
    state.update(extra=extra, files={})
    try:
        tmp.mkdir()
        for name, tensors in zip(TENSOR_FILES, (weights, opt_tensors)):
            save_file(tensors, str(tmp / name))
            state["files"][name] = {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        state["sha256"] = _state_hash(state)
        atomic_write_json(tmp / "state.json", state)
        for f in tmp.iterdir():
            _fsync(f)
        _swap_into_place(tmp, final)
        atomic_write_json(ckpt_dir / "latest.json", {"step": step, "path": final.name})
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        need = sum(t.numel() * t.element_size() for t in (*weights.values(), *opt_tensors.values()))
        free = shutil.disk_usage(ckpt_dir).free
        raise CheckpointWriteError(
            f"could not write checkpoint {final}: {err.strerror or err} (it needs about {need:,} bytes; "
            f"{free:,} bytes are free in {ckpt_dir}); latest.json still points to the previous checkpoint"
        ) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in _step_folders(ckpt_dir)[:-keep]:
        if stale != final:  # a resumed run re-saving an older step keeps what it just wrote
            shutil.rmtree(stale, ignore_errors=True)
    return final


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Raise :class:`CheckpointError` naming the first damaged file of checkpoint folder ``path``
    (missing, size or sha256 mismatch, unreadable JSON/safetensors); else return its state.json."""
    path = Path(path)
    if not path.is_dir():
        raise MissingCheckpointError(f"checkpoint {path} does not exist")
    file = path / "state.json"
    if not file.is_file():
        raise MissingCheckpointError(f"checkpoint {path} is missing state.json")
    try:
        state = json.loads(file.read_text())
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"checkpoint {path}: state.json is unreadable or not JSON ({err})") from err
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path}: state.json lacks {', '.join(missing)}")
    if "sha256" in state and state["sha256"] != _state_hash(state):
        raise CheckpointError(f"checkpoint {path}: state.json checksum mismatch (its content was altered)")
    match = _STEP_DIR.fullmatch(path.name)
    if match and int(match.group(1)) != state["step"]:
        raise CheckpointError(f"checkpoint {path}: state.json is for step {state['step']}")
    records = state.get("files")
    for name in TENSOR_FILES:
        file = path / name
        if not file.is_file():
            raise MissingCheckpointError(f"checkpoint {path} is missing {name}")
        if records is None:  # written before checksums existed: only the header can be checked
            _read_safetensors(file, header_only=True)
            continue
        rec = records.get(name) if isinstance(records, dict) else None
        rec = rec if isinstance(rec, dict) else {}
        if (size := file.stat().st_size) != rec.get("bytes"):
            raise CheckpointError(
                f"checkpoint {path}: {name} is {size} bytes, not {rec.get('bytes')} (truncated?)"
            )
        if _sha256(file) != rec.get("sha256"):
            raise CheckpointError(f"checkpoint {path}: {name} checksum mismatch (the file is corrupt)")
    return state


def _pointer_target(pointer: Path) -> Path:
    """The folder ``latest.json`` names; it has no checksum, so it is checked by shape."""
    if not pointer.is_file():
        raise MissingCheckpointError(f"no checkpoint found in {pointer.parent.parent} (missing {pointer})")
    try:
        data = json.loads(pointer.read_text())
        name, step = data["path"], data["step"]
        ok = isinstance(name, str) and _STEP_DIR.fullmatch(name) and int(name[5:]) == step
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{pointer} is unreadable or not valid JSON ({err!r})") from err
    if not ok:
        raise CheckpointError(f"{pointer} is corrupt: {data!r} does not name a step_* folder")
    return pointer.parent / name


def latest_checkpoint(run_dir: str | Path, fallback: bool = True) -> Path:
    """The folder of the newest intact checkpoint of a run: the one ``latest.json`` names if it verifies,
    else (``fallback``, for resume: lose a few steps, not the run) the newest ``step_*`` folder that does,
    with a warning; without ``fallback`` (evaluation: never other weights than asked for) raise
    :class:`CheckpointError` naming the damaged file. If none is intact, the error lists each problem."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    target: Path | None = None
    try:
        target = _pointer_target(ckpt_dir / "latest.json")
        verify_checkpoint(target)
        return target
    except CheckpointError as err:
        if not fallback:
            raise
        problems = [err]
    for cand in reversed(_step_folders(ckpt_dir) if ckpt_dir.is_dir() else []):
        if cand == target:
            continue
        try:
            verify_checkpoint(cand)
        except CheckpointError as err:
            problems.append(err)
            continue
        warnings.warn(
            f"{problems[0]}; falling back to {cand.name}, the newest intact checkpoint", stacklevel=2
        )
        return cand
    if len(problems) == 1:
        raise problems[0]
    absent = all(isinstance(e, MissingFileError) for e in problems)
    lines = "; ".join(str(e) for e in problems)
    raise (MissingCheckpointError if absent else CheckpointError)(
        f"no checkpoint found in {run_dir} that is intact: {lines}"
    )


def _read_safetensors(file: Path, header_only: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of ``file``; a :class:`CheckpointError` instead of safetensors' raw one."""
    try:
        if not header_only:
            return load_file(str(file))
        with safe_open(str(file), framework="pt") as fh:
            fh.keys()
        return {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"checkpoint {file.parent}: {file.name} is unreadable ({err})") from err


def _load_weights(path: Path, model: nn.Module, loss: nn.Module | None) -> None:
    tensors = _read_safetensors(path / "model.safetensors")
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "loss": {}}
    for key, val in tensors.items():
        head, _, rest = key.partition(".")
        parts.setdefault(head, {})[rest] = val
    try:
        model.load_state_dict(parts["model"], strict=True)
        if loss is not None:
            loss.load_state_dict(parts["loss"], strict=True)
    except RuntimeError as err:
        raise InputError(f"checkpoint {path} does not match the model built from its config: {err}") from err


def load_weights(path: str | Path, model: nn.Module, loss: nn.Module | None = None) -> None:
    """Verify checkpoint folder ``path``, then load its ``model.safetensors`` into ``model``
    (and ``loss``). The whole folder is verified: a checkpoint is intact or not, as one unit."""
    path = Path(path)
    verify_checkpoint(path)
    _load_weights(path, model, loss)


def load_tower_weights(path: str | Path, model: nn.Module, modalities: tuple[str, ...]) -> list[str]:
    """Verify checkpoint folder ``path``, then load only the weights of the towers and projections
    of ``modalities`` (``model.towers.<m>.*``, ``model.projections.<m>.*``) into ``model``; every
    other weight of ``model`` stays as it is, except that a momentum copy (``model.momentum``) of a
    loaded tower restarts as a copy of it. Returns the loaded names. A tower the checkpoint lacks,
    or whose names or shapes differ from ``model``'s, is an :class:`InputError` (nothing loaded)."""
    path = Path(path)
    verify_checkpoint(path)
    tensors = _read_safetensors(path / "model.safetensors")
    own = model.state_dict()
    picked: dict[str, torch.Tensor] = {}
    for m in modalities:
        prefixes = (f"towers.{m}.", f"projections.{m}.")
        src = {k[6:]: v for k, v in tensors.items() if k.startswith("model.") and k[6:].startswith(prefixes)}
        want = {k for k in own if k.startswith(prefixes)}
        if not any(k.startswith(prefixes[0]) for k in src):
            have = sorted({k.split(".")[2] for k in tensors if k.startswith("model.towers.")})
            raise InputError(f"checkpoint {path} has no {m!r} tower to load; its towers: {have}")
        bad = sorted(set(src) ^ want) or sorted(k for k in src if src[k].shape != own[k].shape)
        if bad:
            raise InputError(
                f"checkpoint {path}: tower {m!r} does not match this model's (first differing "
                f"weight {bad[0]!r}); the two runs must configure that tower the same"
            )
        picked.update(src)
    with torch.no_grad():
        for k, v in picked.items():
            own[k].copy_(v)  # state_dict tensors share storage with the parameters and buffers
    momentum = getattr(model, "momentum", None)  # an EMA copy of a loaded tower restarts as a copy
    for m in modalities if momentum is not None else ():  # of it, as in a freshly built model
        if m in momentum.encoders:
            momentum.encoders[m].load_state_dict(model._online([m])[m].state_dict())
    return sorted(picked)


def _match_param_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded state tensor (saved contiguous) its parameter's strides, e.g. channels-last
    (``train.channels_last``): the fused AdamW kernel pairs elements by memory position, so a
    contiguous moment next to a channels-last weight would update the wrong elements after a resume."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in list(state.items()):
                if not isinstance(value, torch.Tensor) or value.shape != p.shape:
                    continue  # scalars (step) and anything not shaped like the weight
                if value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    loss: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> CheckpointState:
    """Verify, then restore weights, optimizer, scheduler and every RNG; return the step and extras."""
    path = Path(path)
    state = verify_checkpoint(path)
    _load_weights(path, model, loss)
    tensors = _read_safetensors(path / "optimizer.safetensors")
    optimizer.load_state_dict(_optimizer_join(tensors, state["optimizer"]))
    _match_param_layouts(optimizer)
    scheduler.load_state_dict(state["scheduler"])
    rng = dict(state["rng"])
    rng["torch"] = tensors["rng/torch"]
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda:
        rng["cuda"] = cuda
    set_rng_state(rng)
    return CheckpointState(step=int(state["step"]), extra=state["extra"])
