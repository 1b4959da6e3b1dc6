"""Taking a trained model out of contrastkit: ``contrastkit export RUN --format hf|safetensors``.

* ``hf`` writes a transformers ``CLIPModel`` / ``SiglipModel`` folder — weights, ``config.json``,
  tokenizer and image-processor files — that ``AutoModel.from_pretrained`` loads with the same
  embeddings. It needs a model of exactly that shape: the ``hf_dual_image`` + ``hf_dual_text``
  towers of one checkpoint with ``projection: none`` (models started from a CLIP/SigLIP folder).
  The logit scale (and SigLIP's bias) come from the run's loss.
* ``safetensors`` writes ``model.yaml`` + ``model.safetensors`` + ``assets/`` for any model;
  :func:`contrastkit.models.load` rebuilds it.

A format a model cannot take is a one-line error saying why and what it can take instead.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from contrastkit.core.errors import ConfigError
from contrastkit.models import saved
from contrastkit.models.hf_dual import HFDualImageTower, HFDualTextTower
from contrastkit.train.trainer import load_run

__all__ = ["FORMATS", "export_run"]

FORMATS = ("hf", "safetensors")


def export_run(run_dir: str | Path, fmt: str, out: str | Path) -> Path:
    """Export the newest checkpoint of ``run_dir`` in format ``fmt`` to folder ``out``."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    cfg, model, loss, _ = load_run(run_dir)
    out = Path(out)
    if fmt == "safetensors":
        return saved.save(model, cfg.model, out)
    return _export_hf(cfg.model.projection, model, loss, out)


def _export_hf(projection: str, model, loss, out: Path) -> Path:
    from transformers import AutoConfig, CLIPModel, SiglipModel

    towers = dict(model.towers.items())
    image, text = towers.get("image"), towers.get("text")
    if (
        not (isinstance(image, HFDualImageTower) and isinstance(text, HFDualTextTower))
        or projection != "none"
    ):
        raise ConfigError(
            "--format hf needs a transformers-shaped model: towers image: hf_dual_image and text: "
            "hf_dual_text of one CLIP/SigLIP checkpoint with model.projection: none (start from a "
            "Hugging Face folder, docs/pretrained.md); this model can take --format safetensors"
        )
    kind = image.kind
    hf_cfg = AutoConfig.from_pretrained(str(text.source), local_files_only=True)
    full = (CLIPModel if kind == "clip" else SiglipModel)(hf_cfg).eval()
    state = {f"vision_model.{k}": v for k, v in image.vision.state_dict().items()}
    state.update({f"text_model.{k}": v for k, v in text.encoder.state_dict().items()})
    if kind == "clip":
        state.update({f"visual_projection.{k}": v for k, v in image.proj.state_dict().items()})
        state.update({f"text_projection.{k}": v for k, v in text.proj.state_dict().items()})
    log_scale = getattr(loss, "log_scale", None)
    scale = float(log_scale.detach()) if log_scale is not None else math.log(1 / 0.07)
    shapes = full.state_dict()  # CLIP keeps scalars as [], SigLIP as [1]
    state["logit_scale"] = torch.tensor(scale).reshape(shapes["logit_scale"].shape)
    if kind == "siglip":
        bias = getattr(loss, "bias", None)
        value = torch.tensor(float(bias.detach()) if bias is not None else -10.0)
        state["logit_bias"] = value.reshape(shapes["logit_bias"].shape)
    expected = set(shapes)
    missing = sorted(expected - set(state))
    if missing:
        raise ConfigError(f"--format hf: the model has no weights for {missing[:3]} of the {kind} checkpoint")
    full.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    full.save_pretrained(str(out))
    text.tokenizer.save_pretrained(str(out))
    shutil.copy2(text.source / "preprocessor_config.json", out / "preprocessor_config.json")
    return out
