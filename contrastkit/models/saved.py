"""A model saved on its own: ``model.yaml`` (its :class:`ModelConfig`), ``model.safetensors`` and the
towers' ``assets/`` (tokenizers, processor files). ``contrastkit export RUN --format safetensors``
writes one; :func:`load` rebuilds it anywhere contrastkit is installed, without the run or its data.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

from contrastkit.core.config import from_dict, load_yaml, to_dict
from contrastkit.core.errors import InputError, MissingFileError
from contrastkit.models.dual_encoder import DualEncoder, ModelConfig, build_model

__all__ = ["load", "save"]


def save(model: DualEncoder, cfg: ModelConfig, folder: str | Path) -> Path:
    """Write ``model`` (built from ``cfg``) to ``folder``; returns the folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"))
    model.save_assets(out / "assets")
    return out


def load(folder: str | Path) -> DualEncoder:
    """The model saved in ``folder`` (by :func:`save`), in eval mode."""
    src = Path(folder)
    for name in ("model.yaml", "model.safetensors"):
        if not (src / name).is_file():
            raise MissingFileError(f"{src} is not a saved contrastkit model (no {name})")
    cfg = from_dict(ModelConfig, load_yaml(src / "model.yaml"))
    model = build_model(cfg, assets_dir=src / "assets")
    try:
        model.load_state_dict(load_file(str(src / "model.safetensors")), strict=True)
    except RuntimeError as err:
        raise InputError(f"{src}/model.safetensors does not match model.yaml: {err}") from None
    return model.eval()
