"""The mim tower: X-Former-style masked image modelling as a tower auxiliary loss."""

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models.aux import model_chunking_refusal, pop_aux_losses
from contrastkit.models.mim import masked_patch_loss, patchify, random_patch_mask, unpatchify
from contrastkit.models.towers import TOWERS

MLP = {
    "name": "timm",
    "params": {"arch": "resnet18", "kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 8, 8, 8]}},
}


def naive_loss(pred, target, mask, norm_pix):
    total, count = 0.0, 0
    for i in range(pred.shape[0]):
        for p in range(pred.shape[1]):
            if not mask[i, p]:
                continue
            t = target[i, p]
            if norm_pix:
                mu = t.sum() / len(t)
                var = ((t - mu) ** 2).sum() / (len(t) - 1)
                t = (t - mu) / (var + 1e-6) ** 0.5
            total = total + ((pred[i, p] - t) ** 2).sum() / len(t)
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [True, False])
def test_masked_patch_loss_matches_naive_loop(norm_pix):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(3, 4, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    got = masked_patch_loss(pred, target, mask, norm_pix)
    want = naive_loss(pred, target, mask, norm_pix)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, pred)[0], torch.autograd.grad(want, pred)[0])
    (gp,) = torch.autograd.grad(masked_patch_loss(pred, target, mask, norm_pix), pred)
    assert gp[0, 1].abs().sum() == 0  # an unmasked patch gets no gradient
    with pytest.raises(InputError, match="at least one masked patch"):
        masked_patch_loss(pred, target, torch.zeros(3, 4, dtype=torch.bool))


def test_patchify_roundtrip_and_mask_counts():
    images = torch.randint(0, 256, (2, 3, 8, 12), dtype=torch.uint8)
    p = patchify(images, 4)
    assert p.shape == (2, 6, 48)
    assert torch.equal(p[1, 4].reshape(4, 4, 3).permute(2, 0, 1), images[1, :, 4:8, 4:8])  # row 1, column 1
    assert torch.equal(unpatchify(p, 4, 8, 12), images)
    mask = random_patch_mask(5, 6, 0.5)
    assert mask.sum(1).tolist() == [3] * 5


def test_tower_records_the_term_in_training_only_and_keeps_the_embedding():
    tower = TOWERS.build("mim", inner=MLP, image_size=16, patch=4, mask_ratio=0.5, weight=2.0)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    tower.eval()
    with torch.no_grad():
        plain = tower.inner(images)
        assert torch.equal(tower(images), plain)  # the contrastive path sees the unmasked image
    assert pop_aux_losses(tower) == {}
    tower.train()
    torch.manual_seed(0)
    emb = tower(images)
    aux = pop_aux_losses(tower)
    assert set(aux) == {"mim/reconstruction"} and aux["mim/reconstruction"].ndim == 0
    (emb.sum() * 0 + aux["mim/reconstruction"]).backward()
    assert tower.decoder.weight.grad.abs().sum() > 0
    # the recorded term is weight · MAE loss of the masked image's decoding (same seed ⇒ same mask;
    # the unmasked forward draws no random numbers)
    torch.manual_seed(0)
    again = tower.reconstruction(images)
    torch.testing.assert_close(aux["mim/reconstruction"].detach(), 2.0 * again.detach())
    assert model_chunking_refusal(tower) is not None


def test_config_errors():
    with pytest.raises(ConfigError, match="multiple of patch=5"):
        TOWERS.build("mim", inner=MLP, image_size=16, patch=5)
    with pytest.raises(ConfigError, match="params.inner"):
        TOWERS.build("mim", inner={"params": {}}, image_size=16)
    with pytest.raises(ConfigError, match="mask_ratio"):
        TOWERS.build("mim", inner=MLP, image_size=16, mask_ratio=0.0)
