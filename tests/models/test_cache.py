"""Cached locked-tower embeddings: equal to recomputed ones, memory-mapped, reused, keyed safely."""

import numpy as np
import pytest
import torch

from contrastkit.models import TOWERS, cached_features
from contrastkit.models.cache import CachedTextTower, fingerprint, hash_inputs
from contrastkit.models.towers import TowerContext

TEXTS = ["a red circle", "a blue square", "a green star on the left", "a red circle"]


def _tiny_text():
    return {
        "name": "hf_text",
        "params": {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64},
    }


def test_cached_features_equal_recomputed_and_are_reused(tmp_path):
    torch.manual_seed(0)
    tower = TOWERS.build(
        "timm", arch="resnet18", kwargs={"layers": [1, 1, 1, 1], "channels": [8, 8, 8, 8]}
    ).eval()
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    calls = []

    def compute(a, b):
        calls.append((a, b))
        return tower(images[a:b])

    key = fingerprint(kind="image", data=hash_inputs(images))
    feats = cached_features(key, 10, compute, tmp_path, batch_size=4)
    assert isinstance(feats, np.memmap) and not feats.flags.writeable
    assert calls == [(0, 4), (4, 8), (8, 10)]
    with torch.no_grad():
        fresh = tower(images).numpy()
    np.testing.assert_allclose(feats, fresh, rtol=1e-5, atol=1e-6)
    again = cached_features(key, 10, compute, tmp_path, batch_size=4)
    assert len(calls) == 3 and np.array_equal(again, feats)  # read from disk, not recomputed
    assert fingerprint(kind="image", data=hash_inputs(images[:9])) != key  # other inputs, other key


def test_cached_text_tower_matches_its_inner_tower(tmp_path):
    torch.manual_seed(0)
    tower = TOWERS.build(
        "cached_text", tower=_tiny_text(), cache_dir=str(tmp_path), context=TowerContext(texts=TEXTS)
    )
    assert isinstance(tower, CachedTextTower) and len(tower.texts) == 3  # unique captions
    assert len(list(tmp_path.glob("*.npy"))) == 1
    ids = tower.tokenize(["a blue square", "an unseen prompt", "a red circle"])
    assert ids.tolist() == [[1], [3], [0]]  # known rows, then the new text appended
    with torch.no_grad():
        ref = tower.inner(tower.inner.tokenize(["a blue square", "an unseen prompt", "a red circle"]))
    torch.testing.assert_close(tower(ids), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="LongTensor"):
        tower(torch.zeros(2, 3, dtype=torch.long))
