"""MLCD prototypes from a config: a saved centres file named by the loss parameter prototypes_file."""

import numpy as np
import pytest
import torch

from contrastkit import losses
from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.losses.mlcd import fit_prototypes, load_prototypes, mlcd_loss, save_prototypes


def test_saved_centres_select_the_same_loss_from_a_config(tmp_path):
    emb = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "sub" / "protos.pt"
    centres = save_prototypes(emb, path, k=5, iters=10, seed=3)
    torch.testing.assert_close(centres, fit_prototypes(emb, 5, 10, 3).float())
    torch.testing.assert_close(load_prototypes(path), centres)
    np.save(tmp_path / "protos.npy", centres.numpy())
    torch.testing.assert_close(load_prototypes(tmp_path / "protos.npy"), centres)
    from_file = losses.build("mlcd", num_positives=2, prototypes_file=str(path))
    from_tensor = losses.build("mlcd", num_positives=2, prototypes=centres)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(from_file(x), from_tensor(x))
    pos = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 2]])
    torch.testing.assert_close(from_file(x, positives=pos), mlcd_loss(x, centres, pos))


def test_prototype_file_errors(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        losses.build("mlcd", prototypes_file=str(tmp_path / "none.pt"))
    torch.save({"w": torch.ones(2)}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match=r"must hold a float \[K, d\] tensor"):
        load_prototypes(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_text("not a tensor")
    with pytest.raises(InputError, match="is not a saved tensor"):
        load_prototypes(tmp_path / "junk.pt")
    torch.save(torch.ones(3, 2), tmp_path / "ok.pt")
    with pytest.raises(ConfigError, match="prototypes or prototypes_file, not both"):
        losses.build("mlcd", prototypes=torch.ones(3, 2), prototypes_file=str(tmp_path / "ok.pt"))
