"""Tiny random-init CLIP / SigLIP checkpoints saved with transformers, for offline tests."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from contrastkit.models.tokenizer import train_word_tokenizer

TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=16,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=3,  # the word tokenizer's [SEP]: CLIP pools the first EOS
)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8)


def save_clip(folder: Path, texts: list[str]) -> Path:
    """A CLIPModel folder: logit scale 20, a word tokenizer over ``texts``, and an image processor
    that resizes the shorter side to 40 then centre-crops 32×32 (resize, aspect ratio and crop)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    tok = train_word_tokenizer(texts, 200)
    cfg = CLIPConfig(
        text_config={**TEXT, "vocab_size": len(tok)},
        vision_config={**VISION, "image_size": 32},
        projection_dim=16,
    )
    model = CLIPModel(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return folder


def save_siglip(folder: Path, texts: list[str]) -> Path:
    """A SiglipModel folder: logit scale 10, bias −2.5, 24×24 bilinear resize."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(1)
    tok = train_word_tokenizer(texts, 200)
    cfg = SiglipConfig(
        text_config={**TEXT, "vocab_size": len(tok), "projection_size": 32},
        vision_config={**VISION, "image_size": 24},
    )
    model = SiglipModel(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-2.5)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 24, "width": 24}, resample=2).save_pretrained(folder)
    return folder


OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def save_open_clip(folder: Path, bias: float | None = None) -> Path:
    """An open_clip folder (``open_clip_config.json`` + ``open_clip_model.safetensors``), what
    ``open_clip.create_model("local-dir:…")`` loads: a 32-pixel ViT, open_clip's BPE tokenizer with a
    16-token context, logit scale 20 and (if given) a SigLIP-style logit bias."""
    import json

    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(2)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = dict(OPEN_CLIP, init_logit_scale=math.log(20.0))
    if bias is not None:
        model_cfg["init_logit_bias"] = bias
    pre = {
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pre}))
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    return folder
