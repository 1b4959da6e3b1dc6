"""GatherAllLoss: any pair loss or MultiLoss across gloo ranks equals the single-process loss on
the whole batch (value and every gradient after DDP's average), with batch fields gathered."""

import pytest
import torch
import torch.distributed as dist

from contrastkit import losses
from contrastkit.core.errors import ConfigError
from contrastkit.scale.distributed import rank, world_size
from contrastkit.scale.gather_all import GatherAllLoss, _gather_field
from contrastkit.scale.launch import spawn_gloo

B_LOCAL, D_IN, DIM = 4, 6, 5
MODALITIES = ("attributes", "image", "text")


def _inputs(n):
    g = torch.Generator().manual_seed(1)
    data = {m: torch.randn(n, D_IN, generator=g, dtype=torch.float64) for m in MODALITIES}
    labels = torch.tensor([0, 1, 1, 2, 0, 3, 2, 1, 3, 0, 1, 2])[:n]
    return data, labels


def _towers():
    g = torch.Generator().manual_seed(2)
    return {m: torch.randn(D_IN, DIM, generator=g, dtype=torch.float64).requires_grad_() for m in MODALITIES}


CASES = {  # name → (registry name, params, batch fields)
    "pairwise_clip": ("pairwise_clip", {}, ()),
    "supcon+labels": ("supcon", {}, ("labels",)),
    "dcl": ("dcl", {}, ()),
    # the class prompts (K rows, the same on every rank) are not gathered: shared_inputs
    "class_prompts+labels": ("class_prompts", {}, ("labels",)),
}
K_CLASSES = 4


def _run(name, rows, n):
    reg, params, fields = CASES[name]
    loss = losses.build(reg, **params).double()
    data, labels = _inputs(n)
    towers = _towers()
    emb = {m: data[m][rows] @ towers[m] for m in MODALITIES}
    if reg == "class_prompts":  # every rank encodes every class's prompt with the text tower
        emb["classes"] = data["text"][:K_CLASSES] @ towers["text"]
    aux = {"labels": labels[rows]} if "labels" in fields else {}
    wrapped = GatherAllLoss(loss)
    value = wrapped(emb, **aux) if wrapped.multi else wrapped(emb["image"], emb["text"], **aux)
    value.backward()
    grads = {
        m: towers[m].grad if towers[m].grad is not None else torch.zeros_like(towers[m]) for m in MODALITIES
    }
    grads.update({f"loss.{k}": p.grad for k, p in loss.named_parameters() if p.grad is not None})
    return {"loss": value.detach(), **{k: v.detach().clone() for k, v in grads.items()}}


def _worker():
    d, r = world_size(), rank()
    rows = slice(r * B_LOCAL, (r + 1) * B_LOCAL)
    out = {}
    for name in CASES:
        res = _run(name, rows, B_LOCAL * d)
        for v in res.values():
            dist.all_reduce(v)
            v /= d
        out[name] = res
    ids = torch.full((2, 3 + r), 7, dtype=torch.long)  # rank r's token ids are 3 + r long
    out["ids"] = _gather_field("text_ids", ids, None, 0)
    return out


@pytest.fixture(scope="module")
def spawned():
    return spawn_gloo(_worker, 2, timeout_s=180.0)


@pytest.mark.parametrize("name", list(CASES))
def test_gather_all_equals_the_single_process_full_batch(spawned, name):
    want = _run(name, slice(0, 2 * B_LOCAL), 2 * B_LOCAL)  # no process group here: the plain loss
    for got in spawned:
        assert got[name].keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[name][k], want[k], rtol=1e-10, atol=1e-12, msg=f"{name}: {k}")


def test_token_ids_of_different_lengths_are_padded_then_gathered(spawned):
    for got in spawned:
        ids = got["ids"]
        assert ids.shape == (4, 4)
        assert (ids[:2, :3] == 7).all() and (ids[:2, 3] == 0).all() and (ids[2:] == 7).all()


def test_pairwise_fields_are_refused():
    with pytest.raises(ConfigError, match="pairwise matrix"):
        _gather_field("weights", torch.eye(3), None, 0)
