"""The batch stream is a pure function of (seed, batch index): resuming reproduces it exactly."""

import itertools

import pytest
import torch

from contrastkit.core.errors import InputError
from contrastkit.data import PairBatchSampler, make_loader, make_shapes


def take(it, n):
    return list(itertools.islice(iter(it), n))


def test_resumed_stream_equals_uninterrupted_stream_across_epochs():
    caps = [2] * 50
    full = take(PairBatchSampler(caps, 8, seed=1), 20)  # 6 batches per epoch: crosses 3 epochs
    resumed = take(PairBatchSampler(caps, 8, seed=1, start=7), 13)
    assert resumed == full[7:]
    assert take(PairBatchSampler(caps, 8, seed=2), 20) != full


def test_each_epoch_is_a_permutation_without_the_remainder():
    s = PairBatchSampler([1] * 50, 8, seed=0)
    epoch = [i for b in take(s, 6) for i, _ in b]
    assert len(epoch) == 48 and len(set(epoch)) == 48


def test_caption_choice_covers_all_captions():
    s = PairBatchSampler([3] * 40, 10, seed=0)
    seen = {c for b in take(s, 40) for _, c in b}
    assert seen == {0, 1, 2}


def test_loader_yields_modality_keyed_batches():
    pairs = make_shapes("train", 40)
    loader = make_loader(pairs, lambda t: torch.tensor([[len(s)] for s in t]), batch_size=8, seed=0)
    batch = next(iter(loader))
    assert set(batch) == {"image", "text"}
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.uint8
    assert batch["text"].shape == (8, 1)


def test_bad_sampler_arguments():
    with pytest.raises(InputError, match="fewer than one batch"):
        PairBatchSampler([1] * 5, 8, seed=0)
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        PairBatchSampler([1] * 5, 0, seed=0)


def test_concepts_put_the_sampled_captions_words_in_batches():
    pairs = make_shapes("train", 40)
    texts: list[list[str]] = []

    def tokenize(t):
        texts.append(list(t))
        return torch.zeros(len(t), 1, dtype=torch.long)

    loader = make_loader(pairs, tokenize, batch_size=8, seed=0, concepts=True)
    batch = next(iter(loader))
    vocab = loader.dataset.vocabulary
    assert "a" not in vocab and "the" not in vocab and {"red", "circle"} <= set(vocab)
    assert batch["targets"].shape == (8, len(vocab)) and batch["targets"].dtype == torch.float32
    for caption, row in zip(texts[0], batch["targets"]):  # each row: exactly the caption's content words
        words = {w for w in caption.lower().replace(",", " ").split() if w in vocab}
        assert {vocab[int(c)] for c in row.nonzero()} == words
