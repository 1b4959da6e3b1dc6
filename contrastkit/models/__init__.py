"""Models: towers from timm and transformers, combined into a multi-modality dual encoder."""

from contrastkit.models.audio import AudioCNNTower, AudioTransformerTower
from contrastkit.models.cache import CachedTextTower, cached_features
from contrastkit.models.clippo import RenderedTextTower, TextRenderer, render_text
from contrastkit.models.dual_encoder import (
    DualEncoder,
    ModelConfig,
    TowerConfig,
    build_model,
    lock_parameters,
    pretrained_logit_scale,
)
from contrastkit.models.fuselip import FuseLIPTextTower, FuseLIPTower
from contrastkit.models.hf_dual import HFDualImageTower, HFDualTextTower, hf_dual_logit_scale
from contrastkit.models.late_interaction import TokenImageTower, TokenTextTower
from contrastkit.models.limoe import LIMoEImageTower, LIMoETextTower
from contrastkit.models.llm_embed import DecoderTextTower, Template
from contrastkit.models.mim import MIMTower
from contrastkit.models.openclip_dual import OpenCLIPImageTower, OpenCLIPTextTower
from contrastkit.models.pretrained import load_weights, map_state_dict, resolve_path
from contrastkit.models.qformer import QFormerImageTower, QFormerTextTower
from contrastkit.models.saved import load
from contrastkit.models.series import DeviceSeriesTower, SeriesCNNTower, SeriesTransformerTower
from contrastkit.models.set_pool import AttentionPool, SetPoolTower
from contrastkit.models.split_text import SplitTextEncoder, SplitTextTower
from contrastkit.models.tokenizer import encode, load_tokenizer, train_word_tokenizer
from contrastkit.models.towers import TOWERS, ImageTower, TextTower, Tower, TowerContext

__all__ = [
    "TOWERS",
    "AttentionPool",
    "AudioCNNTower",
    "AudioTransformerTower",
    "CachedTextTower",
    "DecoderTextTower",
    "DeviceSeriesTower",
    "DualEncoder",
    "FuseLIPTextTower",
    "FuseLIPTower",
    "HFDualImageTower",
    "HFDualTextTower",
    "ImageTower",
    "LIMoEImageTower",
    "LIMoETextTower",
    "MIMTower",
    "ModelConfig",
    "OpenCLIPImageTower",
    "OpenCLIPTextTower",
    "QFormerImageTower",
    "QFormerTextTower",
    "RenderedTextTower",
    "SeriesCNNTower",
    "SeriesTransformerTower",
    "SetPoolTower",
    "SplitTextEncoder",
    "SplitTextTower",
    "Template",
    "TextRenderer",
    "TextTower",
    "TokenImageTower",
    "TokenTextTower",
    "Tower",
    "TowerConfig",
    "TowerContext",
    "build_model",
    "cached_features",
    "encode",
    "hf_dual_logit_scale",
    "load",
    "load_tokenizer",
    "load_weights",
    "lock_parameters",
    "map_state_dict",
    "pretrained_logit_scale",
    "render_text",
    "resolve_path",
    "train_word_tokenizer",
]
