"""class_prompts (CoOp's objective): value and gradients equal a direct float64 loop over the rows
with a class; rows of no class are left out; bad inputs and configs are refused."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit import losses
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses.class_prompts import CLASSES_KEY, class_prompt_loss


def _naive(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, s: float) -> torch.Tensor:
    """-log softmax over the K classes of s·cos, one row at a time, averaged over rows of a class."""
    terms = []
    for i in range(x.shape[0]):
        if not 0 <= int(y[i]) < w.shape[0]:
            continue
        cos = torch.stack([x[i] @ w[k] / (x[i].norm() * w[k].norm()) for k in range(w.shape[0])])
        logits = s * cos
        terms.append(-(logits[int(y[i])] - torch.logsumexp(logits, 0)))
    return torch.stack(terms).mean()


def test_value_and_gradients_equal_the_direct_formula_in_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, 1, -1, 2, 4, 3, 0, 9])  # -1, 4 and 9 are no class: left out
    got = class_prompt_loss(x, w, y, 17.5)
    want = _naive(x, w, y, 17.5)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    gx, gw = torch.autograd.grad(got, (x, w))
    wx, ww = torch.autograd.grad(want, (x, w))
    torch.testing.assert_close(gx, wx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, ww, rtol=1e-12, atol=1e-12)
    assert gx[[3, 5, 8]].abs().max() == 0  # rows of no class get no gradient


def test_module_reads_image_classes_and_labels_with_its_scale():
    g = torch.Generator().manual_seed(1)
    emb = {"image": torch.randn(5, 3, generator=g), CLASSES_KEY: torch.randn(3, 3, generator=g)}
    y = torch.tensor([2, 0, 1, 1, 0])
    loss = losses.build("class_prompts", init_temperature=0.05, learnable=False)
    assert not loss.log_scale.requires_grad and math.isclose(
        loss.log_values()["logit_scale"], 20.0, rel_tol=1e-6
    )
    torch.testing.assert_close(loss(emb, labels=y), _naive(emb["image"], emb[CLASSES_KEY], y, 20.0))
    assert loss.prompts(["red circle", "blue star"]) == ["red circle.", "blue star."]
    learn = losses.build("class_prompts", init_temperature=0.001, max_scale=50.0)
    learn.after_optimizer_step()  # clamped like CLIP's scale
    assert math.isclose(learn.log_values()["logit_scale"], 50.0, rel_tol=1e-6)


def test_bad_inputs_are_refused():
    x, w = torch.randn(4, 3), torch.randn(2, 3)
    with pytest.raises(InputError, match="no row of the batch has a label among the 2 classes"):
        class_prompt_loss(x, w, torch.tensor([-1, 2, 5, -1]), 10.0)
    with pytest.raises(InputError, match="labels must be integers of shape"):
        class_prompt_loss(x, w, torch.tensor([0.0, 1.0, 0.0, 1.0]), 10.0)
    with pytest.raises(InputError, match="labels must be integers of shape"):
        class_prompt_loss(x, w, torch.tensor([0, 1]), 10.0)
    with pytest.raises(InputError, match="3 dimensions, classes 4"):
        class_prompt_loss(x, torch.randn(2, 4), torch.tensor([0, 1, 0, 1]), 10.0)
    with pytest.raises(InputError, match="finite|NaN"):
        class_prompt_loss(x, torch.full((2, 3), float("nan")), torch.tensor([0, 1, 0, 1]), 10.0)
    loss = losses.build("class_prompts")
    with pytest.raises(InputError, match=r"needs embeddings \['classes'\]"):
        loss({"image": x, "text": x}, labels=torch.tensor([0, 1, 0, 1]))
    with pytest.raises(InputError, match="needs the batch labels"):
        loss({"image": x, CLASSES_KEY: w})
    for bad in ("a photo", "{} and {}"):
        with pytest.raises(ConfigError, match="one '\\{\\}'"):
            losses.build("class_prompts", template=bad)
