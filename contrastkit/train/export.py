"""Taking a trained model out of contrastkit: ``contrastkit export RUN --format hf|open_clip|safetensors``.

* ``hf`` writes a transformers ``CLIPModel`` / ``SiglipModel`` folder — weights, ``config.json``,
  tokenizer and image-processor files — that ``AutoModel.from_pretrained`` loads with the same
  embeddings. It needs a model of exactly that shape: the ``hf_dual_image`` + ``hf_dual_text``
  towers of one checkpoint with ``projection: none`` (models started from a CLIP/SigLIP folder).
  The logit scale (and SigLIP's bias) come from the run's loss.
* ``open_clip`` writes an open_clip folder — ``open_clip_config.json`` (model + preprocess config),
  ``open_clip_model.safetensors`` and any tokenizer files — that
  ``open_clip.create_model("local-dir:OUT")`` loads with the same embeddings. It needs the
  ``open_clip_image`` + ``open_clip_text`` towers of one open_clip model with ``projection: none``
  (models started from ``model.from: open_clip:...``).
* ``safetensors`` writes ``model.yaml`` + ``model.safetensors`` + ``assets/`` for any model;
  :func:`contrastkit.models.load` rebuilds it.

A format a model cannot take is a one-line error saying why and what it can take instead.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from contrastkit.core.errors import ConfigError
from contrastkit.models import openclip_dual, saved
from contrastkit.models.hf_dual import HFDualImageTower, HFDualTextTower
from contrastkit.models.openclip_dual import OpenCLIPImageTower, OpenCLIPTextTower
from contrastkit.train.trainer import load_run

__all__ = ["FORMATS", "export_run"]

FORMATS = ("hf", "open_clip", "safetensors")


def export_run(run_dir: str | Path, fmt: str, out: str | Path) -> Path:
    """Export the newest checkpoint of ``run_dir`` in format ``fmt`` to folder ``out``."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    cfg, model, loss, _ = load_run(run_dir)
    out = Path(out)
    if fmt == "safetensors":
        return saved.save(model, cfg.model, out)
    if len(model.prompts):  # transformers / open_clip have no place for a learned prompt context
        raise ConfigError(
            f"{run_dir} learned a prompt context (model.towers.*.prompt) that --format {fmt} cannot carry; "
            "use --format safetensors"
        )
    if fmt == "open_clip":
        return _export_open_clip(cfg.model.projection, model, loss, out)
    return _export_hf(cfg.model.projection, model, loss, out)


def _export_hf(projection: str, model, loss, out: Path) -> Path:
    from transformers import CLIPModel, SiglipModel

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
    full = (CLIPModel if kind == "clip" else SiglipModel)(text.hf_config).eval()
    state = {f"vision_model.{k}": v for k, v in image.vision.state_dict().items()}
    state.update({f"text_model.{k}": v for k, v in text.encoder.state_dict().items()})
    if kind == "clip":
        state.update({f"visual_projection.{k}": v for k, v in image.proj.state_dict().items()})
        state.update({f"text_projection.{k}": v for k, v in text.proj.state_dict().items()})
    scale, bias = _scale_bias(loss)
    shapes = full.state_dict()  # CLIP keeps scalars as [], SigLIP as [1]
    state["logit_scale"] = torch.tensor(scale).reshape(shapes["logit_scale"].shape)
    if kind == "siglip":
        value = torch.tensor(bias if bias is not None else -10.0)
        state["logit_bias"] = value.reshape(shapes["logit_bias"].shape)
    expected = set(shapes)
    missing = sorted(expected - set(state))
    if missing:
        raise ConfigError(f"--format hf: the model has no weights for {missing[:3]} of the {kind} checkpoint")
    full.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    full.save_pretrained(str(out))
    text.tokenizer.save_pretrained(str(out))
    image.processor.save_pretrained(str(out))
    return out


def _scale_bias(loss) -> tuple[float, float | None]:
    """The loss's learned log logit scale (CLIP's 1/0.07 if it has none) and bias (if any)."""
    log_scale = getattr(loss, "log_scale", None)
    scale = float(log_scale.detach()) if log_scale is not None else math.log(1 / 0.07)
    bias = getattr(loss, "bias", None)
    return scale, None if bias is None else float(bias.detach())


def _export_open_clip(projection: str, model, loss, out: Path) -> Path:
    from safetensors.torch import save_file

    towers = dict(model.towers.items())
    image, text = towers.get("image"), towers.get("text")
    if (
        not (isinstance(image, OpenCLIPImageTower) and isinstance(text, OpenCLIPTextTower))
        or projection != "none"
    ):
        raise ConfigError(
            "--format open_clip needs an open_clip-shaped model: towers image: open_clip_image and "
            "text: open_clip_text of one open_clip model with model.projection: none (start from "
            "model.from: open_clip:..., docs/pretrained.md); this model can take --format safetensors"
        )
    full = openclip_dual.create_model(text.cfg)
    state = {f"visual.{k}": v for k, v in image.visual.state_dict().items()}
    state.update(text.clip.state_dict())
    scale, bias = _scale_bias(loss)
    shapes = full.state_dict()
    state["logit_scale"] = torch.tensor(scale).reshape(shapes["logit_scale"].shape)
    if "logit_bias" in shapes:  # a loss without a bias keeps the architecture's initial one
        value = torch.tensor(bias) if bias is not None else shapes["logit_bias"]
        state["logit_bias"] = value.reshape(shapes["logit_bias"].shape)
    try:
        full.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"--format open_clip: the towers do not form one open_clip model: {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    text.save_assets(out)
    (out / "source.json").unlink(missing_ok=True)  # run bookkeeping, not part of the format
    tensors = {k: v.detach().cpu().contiguous() for k, v in full.state_dict().items()}
    save_file(tensors, str(out / "open_clip_model.safetensors"))
    return out
