"""Models: towers from timm and transformers, combined into a multi-modality dual encoder."""

from contrastkit.models.dual_encoder import DualEncoder, ModelConfig, TowerConfig, build_model
from contrastkit.models.tokenizer import encode, load_tokenizer, train_word_tokenizer
from contrastkit.models.towers import TOWERS, ImageTower, TextTower, Tower, TowerContext

__all__ = [
    "TOWERS",
    "DualEncoder",
    "ImageTower",
    "ModelConfig",
    "TextTower",
    "Tower",
    "TowerConfig",
    "TowerContext",
    "build_model",
    "encode",
    "load_tokenizer",
    "train_word_tokenizer",
]
