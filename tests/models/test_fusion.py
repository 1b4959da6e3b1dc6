"""Fusion heads over per-modality embeddings: the mean baseline against its formula, and the
missing-aware prompts' spec oracles (per-sample prompt selection, trainable parameter count) plus
the guarantee that a missing row's values never reach the output or the gradients."""

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.models.fusion import MeanFusion, PromptFusion, availability, missing_pattern

MODS = ("attributes", "image", "text")


def emb_batch(g, n=6, d=8):
    return {m: torch.randn(n, d, generator=g) for m in MODS}


def test_pattern_ids_follow_the_spec_order_for_two_modalities():
    avail = torch.tensor([[True, True], [False, True], [True, False]])  # (image, text)
    assert missing_pattern(avail).tolist() == [0, 1, 2]  # complete, missing image, missing text
    with pytest.raises(InputError, match="no modality present"):
        missing_pattern(torch.tensor([[False, False]]))


def test_availability_combines_present_and_finite_rows(rng):
    emb = emb_batch(rng, n=3)
    emb["image"][1, 2] = float("nan")
    avail = availability(emb, {"text": torch.tensor([True, True, False])}, MODS)
    assert avail.tolist() == [[True, True, True], [True, False, True], [True, True, False]]
    with pytest.raises(InputError, match=r"present names \['txt'\]"):
        availability(emb, {"txt": torch.ones(3, dtype=torch.bool)}, MODS)


def test_mean_fusion_is_the_mean_of_present_normalised_embeddings(rng):
    head = MeanFusion(MODS, 8, 3).double()
    emb = {m: v.double() for m, v in emb_batch(rng).items()}
    present = {
        "image": torch.tensor([True, False, True, False, True, True]),
        "text": torch.tensor([True] * 5 + [False]),
    }
    got = head(emb, present)
    for i in range(6):
        have = [m for m in MODS if m not in present or present[m][i]]
        mean = sum(F.normalize(emb[m][i], dim=0) for m in have) / len(have)
        torch.testing.assert_close(got[i], head.head(mean), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("missing_token", ["placeholder", "drop"])
def test_prompt_selection_is_per_sample(missing_token, rng):
    torch.manual_seed(0)
    head = (
        PromptFusion(MODS, 8, 3, width=16, heads=2, prompt_length=3, missing_token=missing_token)
        .double()
        .eval()
    )
    emb = {m: v.double() for m, v in emb_batch(rng, n=7).items()}
    present = {
        "attributes": torch.tensor([1, 0, 1, 1, 1, 0, 1], dtype=torch.bool),
        "image": torch.tensor([1, 1, 0, 1, 0, 1, 1], dtype=torch.bool),
        "text": torch.tensor([1, 1, 1, 0, 0, 1, 1], dtype=torch.bool),
    }
    pattern = missing_pattern(availability(emb, present, MODS))
    assert pattern.tolist() == [0, 1, 2, 4, 6, 1, 0]
    out = head(emb, present)
    for i in range(7):  # the same row alone gives the same logits: nothing leaks across samples
        alone = head({m: v[i : i + 1] for m, v in emb.items()}, {m: p[i : i + 1] for m, p in present.items()})
        torch.testing.assert_close(alone[0], out[i], rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        head.prompts[1] += torch.randn(head.prompts[1].shape, generator=rng, dtype=torch.float64)  # set 1 …
    moved = (head(emb, present) - out).abs().amax(1) > 1e-9
    assert moved.tolist() == [p == 1 for p in pattern.tolist()]  # … changes exactly those rows


def test_prompt_init_marker_and_trainable_count_with_a_frozen_backbone():
    head = PromptFusion(
        ("image", "text"),
        8,
        5,
        width=16,
        heads=2,
        depth=3,
        prompt_length=4,
        prompt_layers=(0, 2),
        freeze_backbone=True,
    )
    assert head.prompts.shape == (3, 2, 4, 16)  # 2^2 − 1 sets: complete, missing image, missing text
    for b in range(3):
        want = torch.zeros(2, 4, 16)
        want[:, b] = 1.0
        assert torch.equal(head.prompts[b].detach(), want)
    trainable = sum(p.numel() for p in head.parameters() if p.requires_grad)
    assert trainable == 3 * 2 * 4 * 16 + (16 * 16 + 16) + (16 * 5 + 5)  # prompts + pooler + head
    frozen = PromptFusion(("image", "text"), 8, 5, width=16, heads=2, learn_prompts=False)
    assert not frozen.prompts.requires_grad


@pytest.mark.parametrize("cls", ["mean", "prompts_placeholder", "prompts_drop"])
def test_missing_rows_values_never_matter(cls, rng):
    torch.manual_seed(0)
    head = {
        "mean": lambda: MeanFusion(MODS, 8, 3),
        "prompts_placeholder": lambda: PromptFusion(MODS, 8, 3, width=16, heads=2),
        "prompts_drop": lambda: PromptFusion(MODS, 8, 3, width=16, heads=2, missing_token="drop"),
    }[cls]()
    emb = emb_batch(rng)
    present = {"image": torch.tensor([True, False, True, False, True, True])}
    other = {m: v.clone() for m, v in emb.items()}
    other["image"][~present["image"]] = float("nan")  # NaN in missing rows
    zero = {m: v.clone() for m, v in emb.items()}
    zero["image"][~present["image"]] = 0.0
    base = head(zero, present)
    torch.testing.assert_close(head(other, present), base, rtol=0, atol=0)
    torch.testing.assert_close(head(emb, present), base, rtol=0, atol=0)
    other["image"].requires_grad_(True)
    head.loss(other, present, torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    assert torch.isfinite(other["image"].grad).all()
    assert torch.equal(other["image"].grad[~present["image"]], torch.zeros(2, 8))


def test_prompt_config_errors():
    with pytest.raises(ConfigError, match="prompt_layers"):
        PromptFusion(MODS, 8, 3, depth=2, prompt_layers=(0, 2))
    with pytest.raises(ConfigError, match="missing_token"):
        PromptFusion(MODS, 8, 3, missing_token="zero")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"needs embeddings \['text'\]"):
        MeanFusion(MODS, 8, 3)({"attributes": torch.randn(2, 8), "image": torch.randn(2, 8)})
