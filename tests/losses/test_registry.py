"""The loss registry: every registered loss builds from its name and trains on (x, y) [+ aux]."""

import pytest
import torch

from contrastkit import losses
from contrastkit.core.errors import ConfigError, UnknownNameError
from contrastkit.losses.base import MultiLoss

N, D = 6, 8
# constructor parameters a loss cannot default (explicit by the spec's wish)
PARAMS = {
    "mochi": {"dim": D, "n_hard": 4, "n_mix": 4, "n_mix_query": 2, "warmup_steps": 0, "queue_size": 16},
    "moco2": {"dim": D, "queue_size": 16},
    "tcl": {"dim": D, "queue_size": 16, "local": False},
    "mlcd": {"num_positives": 2, "prototypes": torch.randn(5, D, generator=torch.Generator().manual_seed(1))},
    "captioning": {"vocab_size": 11, "width": 16, "heads": 2, "layers": 1},
    "coca": {"vocab_size": 11, "width": 16, "heads": 2, "layers": 1},
    "mmp": {"modalities": ("attributes", "image", "text"), "dim": D},
    "collossl_mmd": {"devices": [[0, 1], [2, 3], [4, 5]]},
    "rcml": {"dim": D},
    "hydra": {"num_classes": 4, "dim": D},
}
# batch fields a loss needs beyond (x, y)
g = torch.Generator().manual_seed(0)
AUX = {
    "medclip": {"labels": torch.tensor([0, 1, 1, 2, 0, 3])},
    "sycon": {"past_x": torch.randn(N, D, generator=g), "past_y": torch.randn(N, D, generator=g)},
    "xmc_decoupled": {"weights": torch.eye(N)},
    "catlip": {"targets": (torch.rand(N, 4, generator=g) > 0.5).double()},
    "tagalign": {"targets": (torch.rand(N, 4, generator=g) > 0.5).double()},
    "captioning": {"text_ids": torch.randint(1, 11, (N, 5), generator=g)},
    "coca": {"text_ids": torch.randint(1, 11, (N, 5), generator=g)},
    "split_caption": {"text_ids": torch.randint(1, 11, (N, 5), generator=g)},
    "collossl_mmd": {"series": torch.randn(N, 6, 10, generator=g)},
    "multi_focal": {"targets": torch.randint(-1, 2, (N, 4), generator=g).double()},
    "hydra": {"labels": torch.tensor([0, 1, 1, 2, 0, 3])},
    "distill": {"teacher_x": torch.randn(N, 5, generator=g), "teacher_y": torch.randn(N, 5, generator=g)},
    "supcon_text_views": {"labels": torch.tensor([0, 1, 1, 2, 0, 3])},
    "class_prompts": {"labels": torch.tensor([0, 1, 1, 2, 0, 3])},
}
# embeddings of another shape than [N, D] (the split text tower's caption logits [N, L - 1, V])
SHAPES = {"caption_logits": (N, 4, 11), "series": (N, 3, D)}  # series: 3 devices (collossl_mmd)
# pair losses over token sets [N, T, d] (aligned parts of one example)
PAIR_SHAPES = {"intra_sample": (N, 3, D)}
# the keys a MultiLoss reads when its ``inputs`` are "all present" (GRAM, pairwise CLIP)
ALL_KEYS = ("image", "text", "attributes")
# MultiLosses whose keys are not fixed (``inputs`` None) and not ALL_KEYS: text views of data.text_views
KEYS = {"supcon_text_views": ("image", "text", "text@0", "text@1")}


@pytest.mark.parametrize("name", losses.names())
def test_every_registered_loss_builds_and_trains(name):
    loss = losses.build(name, **PARAMS.get(name, {}))
    if isinstance(loss, MultiLoss):  # a dict of embeddings keyed by modality / view / ":ema"
        keys = KEYS.get(name) or (loss.inputs if loss.inputs is not None else ALL_KEYS)
        emb = {
            k: torch.randn(*SHAPES.get(k, (N, D)), generator=g, requires_grad=not k.endswith(":ema"))
            for k in keys
        }
        value = loss(emb, **AUX.get(name, {}))
        x = next(v for k, v in emb.items() if not k.endswith(":ema"))
    else:
        x = torch.randn(*PAIR_SHAPES.get(name, (N, D)), generator=g, requires_grad=True)
        y = torch.randn(*PAIR_SHAPES.get(name, (N, D)), generator=g, requires_grad=True)
        value = loss(x, y, **AUX.get(name, {}))
    assert value.ndim == 0 and torch.isfinite(value), name
    value.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, name
    assert name in losses.names() and len(losses.names()) >= 50


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UnknownNameError, match=r"unknown loss 'clipp'; available: .*clip, .*siglip"):
        losses.build("clipp")


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['temprature'\].*init_temperature"):
        losses.build("clip", temprature=0.1)
