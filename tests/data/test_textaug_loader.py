"""data.text_augment: captions of training batches are augmented in the loader, seeded by the
batch (so resume and worker count do not change them), and tokenised afterwards."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import torch

from contrastkit.data import DataConfig, open_split, train_loader
from contrastkit.data.textaug import TextAugConfig, TextAugmenter


class _Recorder:
    """A picklable tokenize that encodes each caption as its word count (and keeps nothing)."""

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[len(t.split())] for t in texts])


def _loader(cfg: DataConfig, start: int = 0, workers: int = 0):
    cfg = dataclasses.replace(cfg, num_workers=workers)
    return train_loader(open_split(cfg, "train"), cfg, _Recorder(), batch_size=16, seed=3, start=start)


def test_captions_are_augmented_per_batch_seed_and_resume_exactly():
    aug = TextAugConfig(remove_stopwords_prob=0.0, op_weights=(0.0, 0.0, 0.0, 1.0), deletion_p=0.5)
    plain = DataConfig.tiny()
    cfg = dataclasses.replace(plain, text_augment=aug)
    got = [b["text"] for b in itertools.islice(_loader(cfg), 6)]
    ref = [b["text"] for b in itertools.islice(_loader(plain), 6)]
    assert all((g <= r).all() for g, r in zip(got, ref))  # deletion only removes words
    assert sum(int((g < r).sum()) for g, r in zip(got, ref)) > 30  # and p = 0.5 removes many
    resumed = [b["text"] for b in itertools.islice(_loader(cfg, start=3, workers=2), 3)]
    assert all(torch.equal(a, b) for a, b in zip(got[3:], resumed))


def test_the_loader_applies_exactly_the_augmenter_with_the_batch_seed():
    aug = TextAugConfig(remove_stopwords_prob=0.5)
    cfg = dataclasses.replace(DataConfig.tiny(), text_augment=aug)
    pairs = open_split(cfg, "train")
    loader = _loader(cfg)
    sampler = loader.batch_sampler
    keys = next(iter(sampler))
    captions = [pairs.captions[i][j] for i, j in keys]
    expected = TextAugmenter(aug)(captions, (3, 0, 0))  # (seed, step, first row)
    batch = next(iter(loader))
    assert batch["text"][:, 0].tolist() == [len(t.split()) for t in expected]
    assert np.mean([len(e.split()) for e in expected]) < np.mean([len(c.split()) for c in captions])
