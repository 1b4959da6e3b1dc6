"""``data.jigsaw`` + ``loss: jigsaw``: montages seeded by (seed, step, offset), cell embeddings of the
image tower's feature map, the loss on B·G cells; resume is exact; config checks."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

import contrastkit.train.forward as forward_module
from contrastkit.core.config import from_dict, to_dict
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import open_split, train_loader
from contrastkit.data.jigsaw import JigsawConfig, jigsaw_batch, jigsaw_seed, jigsaw_views
from contrastkit.losses.base import LossConfig
from contrastkit.losses.parts import JigsawLoss, jigsaw_loss
from contrastkit.models.dual_encoder import build_model
from contrastkit.train import RunConfig, load_run, read_metrics, resume, train
from contrastkit.train.jigsaw import cell_embeddings, check_world
from contrastkit.train.setup import check_config

GRID = 2


def _jigsaw(tmp_path, name: str = "jig", **train_changes) -> RunConfig:
    """The tiny config as an image-only Jigsaw Clustering run, built from a YAML-shaped dict."""
    raw = to_dict(RunConfig.tiny(name, out_dir=str(tmp_path)))
    raw["data"]["modalities"] = ["image"]
    raw["data"]["jigsaw"] = {"grid": GRID}
    image = raw["model"]["towers"]["image"]
    image["params"]["kwargs"]["output_stride"] = 8  # a 4×4 feature map on 32-pixel Shapes
    raw["model"]["towers"] = {"image": image}
    raw["loss"] = {"name": "jigsaw", "params": {"grid": GRID}, "terms": {}}
    raw["train"].update({"steps": 3, "log_every": 1, **train_changes})
    return from_dict(RunConfig, raw)


def test_cell_embeddings_are_the_projected_cell_means_of_the_feature_map() -> None:
    cfg = _jigsaw("/unused")
    model = build_model(cfg.model, texts=["x"]).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        got = cell_embeddings(model, images, GRID)
        fmap = model.towers["image"].patch_tokens(images).double()  # [B, 4, 4, C]
        h = fmap.shape[1] // GRID
        blocks = [(b, r, c) for b in range(3) for r in range(GRID) for c in range(GRID)]
        cells = [fmap[b, r * h : (r + 1) * h, c * h : (c + 1) * h].mean((0, 1)) for b, r, c in blocks]
        want = torch.stack(cells) @ model.projections["image"].weight.double().T
    assert got.shape == (3 * GRID * GRID, cfg.model.embed_dim)
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=1e-5)
    # linear projection, equal cells: the mean of a montage's cells is its ordinary embedding
    with torch.no_grad():
        pooled = model.encode("image", images)
    assert torch.allclose(got.view(3, GRID * GRID, -1).mean(1), pooled, atol=1e-5)


def test_jigsaw_batch_labels_are_global_rows_and_match_jigsaw_views() -> None:
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    got = jigsaw_batch(images, 2, seed=7, step=5, offset=12)
    ref = jigsaw_views(images, 2, seed=jigsaw_seed(7, 5, 12))
    assert torch.equal(got["image"], ref.montages)
    assert torch.equal(got["labels"], ref.labels + 12) and torch.equal(got["positions"], ref.positions)
    assert sorted(got["labels"].tolist()) == [12 + i for i in range(4) for _ in range(4)]
    assert jigsaw_seed(7, 5, 12) != jigsaw_seed(7, 6, 12) != jigsaw_seed(7, 5, 0)


def test_a_jigsaw_config_trains_and_the_loss_sees_the_cells_and_targets(tmp_path, monkeypatch) -> None:
    cfg = _jigsaw(tmp_path)
    seen, montages = [], []
    forward = JigsawLoss.forward

    def spy_loss(self, x, y=None, **aux):
        out = forward(self, x, y, **aux)  # sizes the lazy head first: its weights are the step's
        head = (self.head.weight.detach().clone(), self.head.bias.detach().clone())
        seen.append((x.detach().clone(), y, {k: v.clone() for k, v in aux.items()}, head))
        return out

    def spy_cells(model, images, grid):
        montages.append(images.clone())
        return cell_embeddings(model, images, grid)

    monkeypatch.setattr(JigsawLoss, "forward", spy_loss)
    monkeypatch.setattr(forward_module, "cell_embeddings", spy_cells)
    result = train(cfg)
    losses = [r["loss"] for r in read_metrics(result.run_dir) if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and result.skipped == 0
    # the same stream without montages: the original images of each step
    plain = dataclasses.replace(cfg.data, jigsaw=None)
    loader = train_loader(open_split(plain, "train"), plain, None, cfg.train.batch_size, cfg.train.seed)
    b, g = cfg.train.batch_size, GRID * GRID
    for step, (batch, (x, y, aux, (w, bias)), shown) in enumerate(zip(loader, seen, montages, strict=False)):
        ref = jigsaw_views(batch["image"], GRID, seed=jigsaw_seed(cfg.train.seed, step, 0))
        assert x.shape == (b * g, cfg.model.embed_dim) and y is None  # M = B·G cells, one view
        assert set(aux) == {"labels", "positions"}
        assert torch.equal(aux["labels"], ref.labels) and torch.equal(aux["positions"], ref.positions)
        assert torch.equal(shown, ref.montages)
        # the logged loss is the jigsaw formula on those cells and targets (float64 recomputation)
        want = jigsaw_loss(x.double(), None, w.double(), bias.double(), **aux, temperature=0.2)
        assert losses[step] == pytest.approx(float(want), rel=1e-5)
    assert len(seen) == 3


def test_resuming_a_jigsaw_run_is_bit_identical(tmp_path) -> None:
    full = train(_jigsaw(tmp_path / "full", steps=6, ckpt_every=100))
    cut = train(_jigsaw(tmp_path / "cut", steps=6, ckpt_every=3))
    (cut.run_dir / "checkpoints" / "latest.json").write_text(json.dumps({"step": 3, "path": "step_00000003"}))
    assert resume(cut.run_dir).step == 6

    def by_step(run):
        return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}

    a, b = by_step(full.run_dir), by_step(cut.run_dir)
    assert [b[k] for k in range(4, 7)] == [a[k] for k in range(4, 7)]
    _, m1, l1, _ = load_run(full.run_dir)
    _, m2, l2, _ = load_run(cut.run_dir)
    first = {**m1.state_dict(), **{f"loss.{k}": v for k, v in l1.state_dict().items()}}
    second = {**m2.state_dict(), **{f"loss.{k}": v for k, v in l2.state_dict().items()}}
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)  # weights and the loss's head


def test_config_checks_name_the_problem(tmp_path) -> None:
    cfg = _jigsaw(tmp_path)
    check_config(cfg)
    with pytest.raises(ConfigError, match="set data.jigsaw"):
        check_config(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, jigsaw=None)))
    with pytest.raises(ConfigError, match="for the jigsaw loss alone"):
        check_config(dataclasses.replace(cfg, loss=LossConfig("ntxent")))
    with pytest.raises(ConfigError, match="must equal data.jigsaw.grid"):
        check_config(dataclasses.replace(cfg, loss=LossConfig("jigsaw", {"grid": 3})))
    odd = dataclasses.replace(cfg.data, params={"image_size": 30, "seed": 0}, jigsaw=JigsawConfig(4))
    with pytest.raises(ConfigError, match="must divide the image side 30"):
        check_config(dataclasses.replace(cfg, data=odd, loss=LossConfig("jigsaw", {"grid": 4})))
    with pytest.raises(ConfigError, match=r"unset \['scale.chunk_size'\]"):
        check_config(dataclasses.replace(cfg, scale=dataclasses.replace(cfg.scale, chunk_size=8)))
    with pytest.raises(ConfigError, match="cannot be combined with"):
        dataclasses.replace(cfg.data, label_task="shape")
    with pytest.raises(ConfigError, match="cannot be combined with"):
        dataclasses.replace(cfg.data, views=2)
    with pytest.raises(ConfigError, match="needs 'image'"):
        dataclasses.replace(cfg.data, modalities=("text",))
    for bad in (0, True, 2.0):
        with pytest.raises(ConfigError, match="data.jigsaw.grid"):
            JigsawConfig(bad)  # type: ignore[arg-type]


def test_several_processes_are_refused(tmp_path) -> None:
    check_world(_jigsaw(tmp_path), 1)
    with pytest.raises(ConfigError, match="one process"):
        check_world(_jigsaw(tmp_path), 2)


def test_a_feature_map_smaller_than_the_grid_names_the_fix(tmp_path) -> None:
    cfg = _jigsaw(tmp_path)
    image = cfg.model.towers["image"]
    kwargs = {k: v for k, v in image.params["kwargs"].items() if k != "output_stride"}  # 1×1 map
    towers = {"image": dataclasses.replace(image, params={**image.params, "kwargs": kwargs})}
    with pytest.raises(InputError, match="output_stride: 8"):
        train(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, towers=towers)))


def test_montages_keep_every_patch(tmp_path) -> None:
    """What the loader yields is a re-arrangement of the plain batch's patches (no pixel changed)."""
    cfg = _jigsaw(tmp_path)
    plain = dataclasses.replace(cfg.data, jigsaw=None)
    a = next(iter(train_loader(open_split(cfg.data, "train"), cfg.data, None, 8, 0)))
    b = next(iter(train_loader(open_split(plain, "train"), plain, None, 8, 0)))
    assert torch.equal(torch.sort(a["image"].flatten())[0], torch.sort(b["image"].flatten())[0])
    assert F.one_hot(a["labels"], 8).sum(0).tolist() == [GRID * GRID] * 8
