"""E-EXTERNAL — :class:`Encoders` from existing checkpoints, loaded offline.

Spec: evaluation of "the models it evaluates" (docs/evaluation.md: every evaluator talks
to a pair of encoders). Sources:

* ``hf_clip_encoders(path)`` / ``hf_siglip_encoders(path)`` / ``hf_encoders(path)`` (dispatch on
  ``config.json``'s ``model_type``): a Hugging Face ``CLIPModel`` / ``SiglipModel`` folder with its
  tokenizer and ``preprocessor_config.json``. Images: the model's own image-processor settings
  applied with torch ops — resize (``shortest_edge`` keeping the aspect ratio, or exact
  ``height×width``; the processor's resample mode, antialiased, on uint8 as transformers' torchvision
  backend does: torchvision v2 ``resize``, native uint8 kernels on CPU), centre crop,
  ``(x − mean/rescale) / (std/rescale)`` (the processor's fused rescale+normalise) — so
  ``pixel_values`` equal the processor's. Texts: CLIP pads to the longest prompt and passes the
  attention mask (``CLIPProcessor``); SigLIP pads to ``max_length`` (the text model's
  ``max_position_embeddings``) and passes *no* mask — the reference (big_vision, open_clip)
  pools the last position of a ``max_length`` sequence without masking.
  Logits of the reference: ``exp(logit_scale) · cos`` (CLIP), ``+ logit_bias`` (SigLIP); both scalars
  are recorded on the returned :class:`HFEncoders`.
* ``hf_text_encoder(path)``: a sentence-transformers / Hugging Face text folder (e.g.
  all-MiniLM-L6-v2) as a text tower: masked mean pooling (or CLS when ``1_Pooling/config.json`` says
  so), ``max_seq_length`` from ``sentence_bert_config.json``; pair it with any image callable.
* any two callables: :class:`Encoders` itself; ``checked_encoders`` validates what they return.

Everything loads with ``local_files_only=True``: never a download. Missing files, an unknown model
type or an unsupported preprocessing option raise a one-line error naming the problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.core.progress import progress_bar
from contrastkit.evaluation.encoders import Encoders
from contrastkit.models.preprocess import ImagePreprocess

__all__ = [
    "HFEncoders",
    "ImagePreprocess",
    "checked_encoders",
    "file_sha256",
    "hf_clip_encoders",
    "hf_encoders",
    "hf_model_type",
    "hf_siglip_encoders",
    "hf_text_encoder",
    "open_clip_encoders",
]

_KINDS = {"clip": "clip", "siglip": "siglip"}


@dataclass(frozen=True)
class HFEncoders(Encoders):
    """Encoders of a loaded checkpoint, with its logit scale/bias and a JSON-able description."""

    logit_scale: float = 1.0
    logit_bias: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    """SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def _folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise MissingFileError(f"no Hugging Face model (config.json) in {folder}")
    return folder


def hf_model_type(path: str | Path) -> str:
    """``model_type`` of a local Hugging Face folder's ``config.json``."""
    cfg = json.loads((_folder(path) / "config.json").read_text())
    return str(cfg.get("model_type", ""))


def _weights_record(folder: Path) -> dict[str, str]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return {f.name: file_sha256(f) for f in files}


def _batched(fn: Callable[[Any], torch.Tensor], items: Any, batch_size: int) -> torch.Tensor:
    if len(items) == 0:
        raise InputError("nothing to encode (empty input)")
    starts = progress_bar(range(0, len(items), batch_size), "embed", unit="batch", leave=False)
    outs = [fn(items[i : i + batch_size]) for i in starts]
    return F.normalize(torch.cat(outs).float(), dim=-1).cpu()


def _pooled(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _load_dual(path: str | Path, kind: str, batch_size: int, device: str | None) -> HFEncoders:
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

    folder = _folder(path)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if not (folder / "preprocessor_config.json").is_file():
        raise MissingFileError(f"no preprocessor_config.json in {folder}: the image preprocessing is unknown")
    cls = CLIPModel if kind == "clip" else SiglipModel
    model = cls.from_pretrained(str(folder), local_files_only=True).eval()
    dev = torch.device(device) if device else torch.device("cpu")
    model.to(dev)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    proc_cfg = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True).to_dict()
    prep = ImagePreprocess.from_processor(proc_cfg)
    n_pos = int(model.config.text_config.max_position_embeddings)
    max_len = n_pos if kind == "siglip" else min(n_pos, int(tokenizer.model_max_length))
    padding = "max_length" if kind == "siglip" else True

    @torch.no_grad()
    def images(x: torch.Tensor) -> torch.Tensor:
        return _batched(
            lambda b: _pooled(model.get_image_features(pixel_values=prep(b).to(dev))), x, batch_size
        )

    @torch.no_grad()
    def encode_texts(batch: list[str]) -> torch.Tensor:
        enc = tokenizer(
            list(batch), padding=padding, truncation=True, max_length=max_len, return_tensors="pt"
        )
        inputs = {"input_ids": enc["input_ids"].to(dev)}
        if kind == "clip" and "attention_mask" in enc:
            inputs["attention_mask"] = enc["attention_mask"].to(dev)
        return _pooled(model.get_text_features(**inputs))

    def texts(t: list[str]) -> torch.Tensor:
        if isinstance(t, str):
            raise InputError("texts must be a list of strings, got a single string")
        return _batched(encode_texts, list(t), batch_size)

    scale = float(model.logit_scale.detach().exp())
    bias = float(model.logit_bias.detach()) if kind == "siglip" else 0.0
    info = {
        "kind": f"hf-{kind}",
        "path": str(folder.resolve()),
        "weights_sha256": _weights_record(folder),
        "image_preprocessing": prep.describe(),
        "text": {"padding": str(padding), "max_length": max_len, "attention_mask": kind == "clip"},
        "logit_scale": scale,
        "logit_bias": bias,
    }
    return HFEncoders(images, texts, scale, bias, info)


def open_clip_encoders(path: str | Path, batch_size: int = 64, device: str | None = None) -> HFEncoders:
    """Encoders of a local open_clip folder (``open_clip_config.json`` + weights, what
    ``contrastkit export --format open_clip`` writes): contrastkit's ``open_clip_*`` towers, whose
    embeddings equal open_clip's ``encode_image`` / ``encode_text`` (models/openclip_dual.py)."""
    from contrastkit.models import ModelConfig, build_model, pretrained_logit_scale

    folder = Path(path).expanduser()
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    model = build_model(ModelConfig(from_=f"open_clip:{folder}")).eval()
    dev = torch.device(device) if device else torch.device("cpu")
    model.to(dev)

    @torch.no_grad()
    def images(x: torch.Tensor) -> torch.Tensor:
        return _batched(lambda b: model.encode("image", b), x, batch_size)

    @torch.no_grad()
    def encode_texts(batch: list[str]) -> torch.Tensor:
        return model.encode("text", model.tokenize(list(batch)).to(dev))

    def texts(t: list[str]) -> torch.Tensor:
        if isinstance(t, str):
            raise InputError("texts must be a list of strings, got a single string")
        return _batched(encode_texts, list(t), batch_size)

    scale, bias = pretrained_logit_scale(f"open_clip:{folder}")
    info = {
        "kind": "open_clip",
        "path": str(folder.resolve()),
        "weights_sha256": _weights_record(folder),
        "image_preprocessing": model.towers["image"].prep.describe(),
        "text": {"context_length": int(model.towers["text"].max_length)},
        "logit_scale": scale,
        "logit_bias": bias or 0.0,
    }
    return HFEncoders(images, texts, scale, bias or 0.0, info)


def hf_clip_encoders(path: str | Path, batch_size: int = 64, device: str | None = None) -> HFEncoders:
    """Encoders of a local Hugging Face ``CLIPModel`` folder (model, tokenizer, image processor)."""
    return _load_dual(path, "clip", batch_size, device)


def hf_siglip_encoders(path: str | Path, batch_size: int = 64, device: str | None = None) -> HFEncoders:
    """Encoders of a local Hugging Face ``SiglipModel`` folder (``padding="max_length"``, no mask)."""
    return _load_dual(path, "siglip", batch_size, device)


def hf_encoders(path: str | Path, batch_size: int = 64, device: str | None = None) -> HFEncoders:
    """CLIP or SigLIP encoders, chosen by ``model_type`` in the folder's ``config.json``."""
    mtype = hf_model_type(path)
    if mtype not in _KINDS:
        raise ConfigError(
            f"model_type {mtype!r} in {path} is not an image-text model contrastkit loads; "
            f"supported: {sorted(_KINDS)} (a text-only model: use hf_text_encoder with an image encoder)"
        )
    return _load_dual(path, _KINDS[mtype], batch_size, device)


def hf_text_encoder(
    path: str | Path, batch_size: int = 64, max_length: int | None = None, device: str | None = None
) -> Callable[[list[str]], torch.Tensor]:
    """A sentence-transformers / Hugging Face text model as ``texts -> [B, d]`` (normalised)."""
    from contrastkit.models.towers import hf_pretrained_tower

    folder = _folder(path)
    pooling, st_len = "mean", None
    pool_cfg = folder / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        p = json.loads(pool_cfg.read_text())
        if p.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif not p.get("pooling_mode_mean_tokens", True):
            raise ConfigError(f"{pool_cfg}: only mean or CLS pooling is supported")
    if (folder / "sentence_bert_config.json").is_file():
        st_len = json.loads((folder / "sentence_bert_config.json").read_text()).get("max_seq_length")
    length = int(max_length or st_len or 128)
    tower = hf_pretrained_tower(str(folder), max_length=length, pooling=pooling).eval()  # type: ignore[arg-type]
    dev = torch.device(device) if device else torch.device("cpu")
    tower.to(dev)

    @torch.no_grad()
    def texts(t: list[str]) -> torch.Tensor:
        if isinstance(t, str):
            raise InputError("texts must be a list of strings, got a single string")
        return _batched(lambda b: tower(tower.tokenize(list(b)).to(dev)), list(t), batch_size)

    return texts


def checked_encoders(enc: Encoders) -> Encoders:
    """Wrap any two callables so that a wrong output fails clearly: each must return a finite
    floating ``[n, d]`` (or a token set ``[n, T, d]``, late interaction) for ``n`` inputs (returned
    unchanged). :class:`HFEncoders` fields are kept."""

    def check(name: str, out: Any, n: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.ndim not in (2, 3) or not out.is_floating_point():
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"{name} encoder must return a floating tensor [n, d] (or [n, T, d]), got {got}")
        if out.shape[0] != n:
            raise InputError(f"{name} encoder returned {out.shape[0]} embeddings for {n} inputs")
        if not torch.isfinite(out).all():
            raise InputError(f"{name} encoder returned non-finite values (NaN or inf)")
        return out

    def images(x: torch.Tensor) -> torch.Tensor:
        return check("image", enc.images(x), int(x.shape[0]))

    def texts(t: list[str]) -> torch.Tensor:
        return check("text", enc.texts(t), len(t))

    return dataclasses.replace(enc, images=images, texts=texts)  # other fields (HF's, patches…) kept
