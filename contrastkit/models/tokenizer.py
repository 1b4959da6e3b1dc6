"""Text tokenizers: a word vocabulary built from the captions, or one from a local folder.

Both are Hugging Face fast tokenizers, saved and loaded with ``save_pretrained`` /
``from_pretrained(local_files_only=True)``, so a run folder carries the exact tokenizer its model
was trained with.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from contrastkit.core.errors import InputError, MissingFileError

__all__ = ["encode", "load_tokenizer", "train_word_tokenizer"]

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def train_word_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A lower-casing, BERT-pre-tokenised word-level tokenizer over ``texts`` ([CLS] x [SEP]).

    Why not the ``tokenizers`` WordPiece/BPE trainers: they break frequency ties by hash-map
    order, so the same corpus gives different vocabularies in different processes, hence a
    differently initialised model for the same seed. Here the vocabulary is the
    ``vocab_size − 4`` most frequent words, ties broken alphabetically: fully deterministic.
    Captions of small corpora have a closed vocabulary, so word level loses nothing; unseen words
    map to [UNK].
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    if vocab_size <= len(_SPECIALS):
        raise InputError(f"vocab_size must be > {len(_SPECIALS)}, got {vocab_size}")
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    if not counts:
        raise InputError("cannot train a tokenizer on an empty corpus")
    words = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - len(_SPECIALS)]
    vocab = {t: i for i, t in enumerate(_SPECIALS + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
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
    out = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return out["input_ids"]
