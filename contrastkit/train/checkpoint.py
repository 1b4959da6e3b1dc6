"""Checkpoints: safetensors + JSON, written atomically, restoring training exactly.

Layout of ``RUN/checkpoints/step_00000500/``:

* ``model.safetensors`` — model weights (``model.*``) and the loss's learnable scalars (``loss.*``);
* ``optimizer.safetensors`` — optimizer tensors (``state/<param>/<name>``) and RNG tensors;
* ``state.json`` — step, optimizer param groups, scheduler, step guard, Python/NumPy RNG states,
  data position, and any caller-supplied extras.

A checkpoint is written into a hidden temporary folder, every file fsynced, then renamed into
place (atomic on POSIX); only then is ``latest.json`` replaced (atomically) to point at it. A process
killed at any moment leaves the previous checkpoint and pointer intact. No pickle anywhere.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from contrastkit.core.errors import InputError, MissingFileError
from contrastkit.core.io import atomic_write_json, read_json
from contrastkit.core.runtime import get_rng_state, set_rng_state

__all__ = [
    "CheckpointState",
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
]


@dataclass
class CheckpointState:
    """The non-weight state returned by :func:`load_checkpoint`."""

    step: int
    extra: dict[str, Any]


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


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
    """Write checkpoint ``step`` atomically under ``ckpt_dir``; keep the newest ``keep``."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:08d}"
    tmp = ckpt_dir / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    opt_tensors, opt_meta = _optimizer_split(optimizer)
    rng = get_rng_state()
    opt_tensors["rng/torch"] = rng.pop("torch")
    for i, s in enumerate(rng.pop("cuda", [])):
        opt_tensors[f"rng/cuda/{i}"] = s
    save_file(_weights(model, loss), str(tmp / "model.safetensors"))
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    state = {
        "step": step,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict(),
        "rng": rng,
        "extra": extra,
    }
    atomic_write_json(tmp / "state.json", state)
    for f in tmp.iterdir():
        _fsync(f)
    if final.exists():  # re-saving a step (e.g. after resume): move the old one aside first
        old = ckpt_dir / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    atomic_write_json(ckpt_dir / "latest.json", {"step": step, "path": final.name})
    for stale in sorted(ckpt_dir.glob("step_*"))[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The folder of the newest complete checkpoint of a run."""
    pointer = Path(run_dir) / "checkpoints" / "latest.json"
    if not pointer.is_file():
        raise MissingFileError(f"no checkpoint found in {run_dir} (missing {pointer})")
    path = pointer.parent / read_json(pointer)["path"]
    if not (path / "model.safetensors").is_file():
        raise MissingFileError(f"checkpoint {path} is missing model.safetensors")
    return path


def load_weights(path: str | Path, model: nn.Module, loss: nn.Module | None = None) -> None:
    """Load ``model.safetensors`` of a checkpoint folder into ``model`` (and ``loss``)."""
    file = Path(path) / "model.safetensors"
    if not file.is_file():
        raise MissingFileError(f"checkpoint weights not found: {file}")
    tensors = load_file(str(file))
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


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    loss: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> CheckpointState:
    """Restore weights, optimizer, scheduler and every RNG; return the step and extras."""
    path = Path(path)
    load_weights(path, model, loss)
    opt_file = path / "optimizer.safetensors"
    if not opt_file.is_file():
        raise MissingFileError(f"checkpoint optimizer state not found: {opt_file}")
    tensors = load_file(str(opt_file))
    state = read_json(path / "state.json")
    optimizer.load_state_dict(_optimizer_join(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    rng = dict(state["rng"])
    rng["torch"] = tensors["rng/torch"]
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda:
        rng["cuda"] = cuda
    set_rng_state(rng)
    return CheckpointState(step=int(state["step"]), extra=state["extra"])
