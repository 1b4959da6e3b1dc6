"""Jigsaw Clustering montages: a seeded, exact re-arrangement of the batch's patches."""

import pytest
import torch

from contrastkit.core.errors import InputError
from contrastkit.data.jigsaw import jigsaw_views, unshuffle
from contrastkit.losses.parts import jigsaw_cells


def _images(b=3, h=8, w=6, seed=0):
    return torch.randint(
        0, 256, (b, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def test_every_cell_holds_the_patch_its_targets_name():
    images = _images()
    v = jigsaw_views(images, 2, seed=4)
    assert v.montages.shape == images.shape and v.montages.dtype == torch.uint8
    for b in range(3):
        for k in range(4):
            r, c = divmod(k, 2)
            src, pos = int(v.labels[b * 4 + k]), int(v.positions[b * 4 + k])
            sr, sc = divmod(pos, 2)
            got = v.montages[b, :, r * 4 : (r + 1) * 4, c * 3 : (c + 1) * 3]
            want = images[src, :, sr * 4 : (sr + 1) * 4, sc * 3 : (sc + 1) * 3]
            assert torch.equal(got, want)
    # a permutation: every (source, position) exactly once
    assert sorted((v.labels * 4 + v.positions).tolist()) == list(range(12))
    assert torch.equal(unshuffle(v), images)


def test_seeded_and_checked():
    images = _images(4, 6, 6, seed=1)
    a, b = jigsaw_views(images, 3, seed=7), jigsaw_views(images, 3, seed=7)
    assert torch.equal(a.montages, b.montages) and torch.equal(a.labels, b.labels)
    assert not torch.equal(jigsaw_views(images, 3, seed=8).labels, a.labels)
    with pytest.raises(InputError, match="not divisible by grid=4"):
        jigsaw_views(images, 4)
    with pytest.raises(InputError, match="uint8"):
        jigsaw_views(images.float(), 2)


def test_cells_of_a_feature_map_follow_the_montage_order():
    fmap = torch.arange(2 * 1 * 4 * 4, dtype=torch.float64).reshape(2, 1, 4, 4)
    cells = jigsaw_cells(fmap, 2)
    assert cells.shape == (8, 1)
    # montage 1, cell 2 (bottom-left): mean of rows 2–3, columns 0–1 of map 1
    assert float(cells[4 + 2, 0]) == float(fmap[1, 0, 2:, :2].mean())
