"""Text tokenizers: a WordPiece vocabulary trained on the captions, or one from a local folder.

Both are Hugging Face fast tokenizers, saved and loaded with ``save_pretrained`` /
``from_pretrained(local_files_only=True)``, so a run folder carries the exact tokenizer its model
was trained with. Training uses the ``tokenizers`` library (Rust, milliseconds for 10⁵ captions).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from contrastkit.core.errors import InputError, MissingFileError

__all__ = ["encode", "load_tokenizer", "train_wordpiece"]

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def train_wordpiece(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A lower-casing BERT-style WordPiece tokenizer trained on ``texts`` ([CLS] x [SEP])."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=_SPECIALS, show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    if tok.get_vocab_size() <= len(_SPECIALS):
        raise InputError("cannot train a tokenizer on an empty corpus")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer saved in a local folder; never touches the network."""
    p = Path(path)
    if not p.is_dir():
        raise MissingFileError(f"tokenizer folder not found: {p}")
    return AutoTokenizer.from_pretrained(str(p), local_files_only=True)


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> torch.Tensor:
    """Token ids ``[B, L]`` padded to the longest text (≤ ``max_length``) with the pad id."""
    if isinstance(texts, str):
        raise InputError("encode expects a list of strings, got a single string")
    if len(texts) == 0:
        raise InputError("cannot tokenize an empty list of texts")
    out = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return out["input_ids"]
