"""Set pooling: order-free gated attention-MIL over bags, exact under permutation and padding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import build
from contrastkit.data.shapes import HOLDOUT
from contrastkit.models import ModelConfig, TowerConfig, load
from contrastkit.models.set_pool import AttentionPool, pool_instances
from contrastkit.models.towers import TOWERS

TINY_CNN = ModelConfig.tiny().towers["image"]


def _mlp_bags(pooling: str = "gated"):
    torch.manual_seed(0)
    tower = TOWERS.build(
        "set_pool",
        inner={"name": "mlp", "params": {"input_dim": 5, "output_dim": 6}},
        pooling=pooling,
        hidden=7,
    )
    return tower.double().eval()


def _naive(tower, bag: torch.Tensor) -> torch.Tensor:
    """Ilse et al.'s formula, one instance at a time, float64."""
    pool = tower.pool
    hs = [tower.inner(x[None])[0] for x in bag]
    scores = []
    for h in hs:
        if pool.pooling == "mean":
            scores.append(torch.zeros((), dtype=h.dtype))
            continue
        a = torch.tanh(pool.V.weight @ h + pool.V.bias)
        if pool.U is not None:
            a = a * torch.sigmoid(pool.U.weight @ h + pool.U.bias)
        scores.append(pool.w.weight[0] @ a + pool.w.bias[0])
    s = torch.stack(scores)
    weights = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
    return sum(wk * h for wk, h in zip(weights, hs, strict=True))


@pytest.mark.parametrize("pooling", ["gated", "attention", "mean"])
def test_pooling_equals_the_naive_formula_values_and_gradients(pooling):
    tower = _mlp_bags(pooling)
    bags = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = tower(bags)
    ref = torch.stack([_naive(tower, b) for b in bags])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), list(tower.parameters()))
    want = torch.autograd.grad((ref * g).sum(), list(tower.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_permuting_instances_leaves_the_embedding_unchanged():
    tower = _mlp_bags()
    gen = torch.Generator().manual_seed(2)
    bags = torch.randn(5, 6, 5, dtype=torch.float64, generator=gen)
    out = tower(bags)
    for _ in range(5):
        perm = torch.stack([torch.randperm(6, generator=gen) for _ in range(5)])
        shuffled = bags.gather(1, perm[..., None].expand_as(bags))
        # to float64 rounding: BLAS may round an instance's features differently at another row
        torch.testing.assert_close(tower(shuffled), out, rtol=0, atol=1e-14)
        feats = tower.inner(bags.reshape(30, 5)).reshape(5, 6, 6).gather(1, perm[..., None].expand(5, 6, 6))
        assert torch.equal(tower.pool(feats), tower.pool(tower.inner(bags.reshape(30, 5)).reshape(5, 6, 6)))
    # the pooling operator alone, for any features and scores: bit-identical under permutation
    h = torch.randn(4, 9, 3, dtype=torch.float64, generator=gen)
    s = torch.randn(4, 9, dtype=torch.float64, generator=gen)
    mask = torch.ones(4, 9, dtype=torch.bool)
    perm = torch.randperm(9, generator=gen)
    assert torch.equal(
        pool_instances(h[:, perm], s[:, perm], mask, s[:, perm]), pool_instances(h, s, mask, s)
    )


def test_padding_and_masking_do_not_change_the_result():
    tower = _mlp_bags()
    gen = torch.Generator().manual_seed(3)
    sizes = [1, 3, 6, 2]
    bags = [torch.randn(k, 5, dtype=torch.float64, generator=gen) for k in sizes]
    padded = torch.full((4, 6, 5), float("nan"), dtype=torch.float64)  # garbage never read
    mask = torch.zeros(4, 6, dtype=torch.bool)
    for i, b in enumerate(bags):
        padded[i, : len(b)] = b
        mask[i, : len(b)] = True
    out = tower(padded, mask)
    assert torch.isfinite(out).all()
    zeros = torch.where(mask[..., None], padded, torch.zeros((), dtype=torch.float64))
    assert torch.equal(tower(zeros, mask), out)  # the padding's content never matters
    alone = torch.cat([tower(b[None]) for b in bags])  # each bag at its own size, no mask
    torch.testing.assert_close(out, alone, rtol=1e-13, atol=1e-13)
    # pooling alone: trailing padded rows add exact zeros, so equal bit for bit
    h, s = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    hp, sp = (
        torch.cat([h, torch.zeros(2, 2, 4, dtype=h.dtype)], 1),
        torch.cat([s, torch.randn(2, 2, dtype=s.dtype)], 1),
    )
    mp = torch.tensor([[True] * 3 + [False] * 2] * 2)
    assert torch.equal(
        pool_instances(hp, sp, mp, sp), pool_instances(h, s, torch.ones(2, 3, dtype=torch.bool), s)
    )


def test_a_bag_of_one_is_its_instance_and_empty_bags_are_refused():
    tower = _mlp_bags()
    x = torch.randn(4, 5, dtype=torch.float64)
    assert torch.equal(tower(x[:, None]), tower.inner(x))
    with pytest.raises(InputError, match="at least one instance"):
        tower(x[:, None], torch.zeros(4, 1, dtype=torch.bool))
    with pytest.raises(InputError, match="mask must be bool"):
        tower(x[:, None], torch.ones(4, 2, dtype=torch.bool))


def test_image_strips_split_into_instances_and_batch_norm_never_sees_padding():
    torch.manual_seed(0)
    inner = {"name": TINY_CNN.name, "params": TINY_CNN.params}
    strip = TOWERS.build("set_pool", inner=inner, layout="strip")
    stack = TOWERS.build("set_pool", inner=inner, layout="stack")
    stack.load_state_dict(strip.state_dict())
    bags = build("shape_bags", "test", n=3, bag_size=4, seed=0).images  # [3, 3, 32, 128]
    tiles = torch.stack([bags[..., k * 32 : (k + 1) * 32] for k in range(4)], dim=1)
    strip.eval(), stack.eval()
    with torch.no_grad():
        assert torch.equal(strip(bags), stack(tiles))
        assert torch.equal(strip(tiles[:, 0]), strip.inner(tiles[:, 0]))  # one 32 x 32 image: a bag of one
    stack.train()  # batch-norm statistics of the batch: only real instances may enter them
    mask = torch.tensor([[True, True, False, False], [True, True, True, True], [True, False, False, False]])
    noise = torch.randint(0, 256, tiles.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    other = torch.where(mask[:, :, None, None, None], tiles, noise)
    with torch.no_grad():
        assert torch.equal(stack(tiles, mask), stack(other, mask))
    with pytest.raises(InputError, match="not a multiple"):
        strip(bags[..., :100])


def test_bad_configs_are_one_line_errors():
    with pytest.raises(ConfigError, match="inner"):
        TOWERS.build("set_pool")
    with pytest.raises(ConfigError, match="inner must be a mapping"):
        TOWERS.build("set_pool", inner="mlp")
    with pytest.raises(ConfigError, match="name and params"):
        TOWERS.build("set_pool", inner={"name": "mlp", "extra": 1})
    with pytest.raises(ConfigError, match="pooling"):
        TOWERS.build("set_pool", inner={"name": "mlp", "params": {"input_dim": 3}}, pooling="max")
    with pytest.raises(ConfigError, match="cannot be another set_pool"):
        TOWERS.build("set_pool", inner={"name": "set_pool"})
    with pytest.raises(ConfigError):
        AttentionPool(4, pooling="sum")


def test_shape_bags_are_deterministic_bags_of_one_description():
    a = build("shape_bags", "train", n=6, bag_size=3, seed=0)
    b = build("shape_bags", "train", n=6, bag_size=3, seed=0)
    assert a.images.shape == (6, 3, 32, 96) and torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, build("shape_bags", "train", n=6, bag_size=3, seed=1).images)
    tiles = a.images.reshape(6, 3, 32, 3, 32)
    assert all(not torch.equal(tiles[i, :, :, 0], tiles[i, :, :, 1]) for i in range(6))  # instances vary
    assert a.attributes.shape == (6, 45) and set(a.tasks) == {"shape", "color", "shape+color"}
    unseen = build("shape_bags", "unseen", n=20, bag_size=1).tasks["shape+color"]
    combos = {tuple(unseen.classnames[i].split()) for i in unseen.labels if i >= 0}
    assert combos and combos <= set(HOLDOUT)  # the compositional hold-out, as in Shapes


def _bag_run_cfg(tmp_path):
    from contrastkit.train import RunConfig

    base = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    towers = dict(base.model.towers)
    towers["image"] = TowerConfig(
        "set_pool", {"inner": {"name": TINY_CNN.name, "params": TINY_CNN.params}, "layout": "strip"}
    )
    data = dataclasses.replace(
        base.data, name="shape_bags", params={"image_size": 32, "seed": 0, "bag_size": 2}
    )
    return dataclasses.replace(
        base,
        data=data,
        model=dataclasses.replace(base.model, towers=towers),
        train=dataclasses.replace(base.train, steps=4, ckpt_every=4),
    )


def test_trains_on_shape_bags_from_a_config_and_exports_to_safetensors(tmp_path):
    from contrastkit.cli import main
    from contrastkit.train import initial_model, load_run, train

    cfg = _bag_run_cfg(tmp_path)
    run = train(cfg).run_dir
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "st")]) == 0
    _, trained, _, _ = load_run(run)
    rebuilt = load(tmp_path / "st")
    bags = build("shape_bags", "test", n=4, bag_size=2).images
    prompts = ["a red circle", "a small blue square on the left"]
    with torch.no_grad():
        assert torch.equal(rebuilt.encode("image", bags), trained.encode("image", bags))
        assert torch.equal(
            rebuilt.encode("text", rebuilt.tokenize(prompts)),
            trained.encode("text", trained.tokenize(prompts)),
        )
    fresh = initial_model(run).state_dict()
    moved = [
        k
        for k, v in trained.state_dict().items()
        if k.startswith("towers.image.pool.") and not torch.equal(v, fresh[k])
    ]
    assert moved  # the attention pooling was trained
    assert np.isfinite(trained.encode("image", bags).detach().numpy()).all()
