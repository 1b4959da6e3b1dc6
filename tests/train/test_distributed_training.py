"""Training on several processes (gloo) follows the single-process run on the global batch."""

import dataclasses

import pytest

from contrastkit.core.errors import ConfigError
from contrastkit.scale.launch import spawn_gloo
from contrastkit.train import read_metrics, train

from .test_guard_and_training import _vit_config


def _train_worker(out_dir: str, dist_loss: str, loss_name: str) -> list[float]:
    from contrastkit.losses import LossConfig
    from contrastkit.scale import ScaleConfig

    cfg = _vit_config(out_dir, "multi")
    cfg = dataclasses.replace(cfg, loss=LossConfig(loss_name), scale=ScaleConfig(dist_loss=dist_loss))
    result = train(cfg)
    return [r["loss"] for r in read_metrics(result.run_dir)]


@pytest.mark.parametrize(
    "dist_loss,loss_name",
    [("local", "clip"), pytest.param("global", "clip", marks=pytest.mark.slow), ("ring", "siglip")],
)
def test_two_ranks_match_one_process(tmp_path, dist_loss, loss_name):
    from contrastkit.losses import LossConfig

    single_cfg = dataclasses.replace(_vit_config(tmp_path / "one", "single"), loss=LossConfig(loss_name))
    single = [r["loss"] for r in read_metrics(train(single_cfg).run_dir)]
    multi = spawn_gloo(_train_worker, 2, str(tmp_path / "two"), dist_loss, loss_name, timeout_s=300)
    assert multi[0] == multi[1]  # every rank logs... only rank 0 writes; both read the same file
    assert len(multi[0]) == len(single) == 4
    assert multi[0] == pytest.approx(single, rel=1e-4)  # same global batch, same averaged gradients
    assert (tmp_path / "two" / "multi" / "checkpoints" / "latest.json").is_file()


def _tiled_worker(out_dir: str, dist_loss: str) -> str | list[float]:
    from contrastkit.scale import ScaleConfig

    scale = ScaleConfig(tile_size=5, chunk_size=8, dist_loss=dist_loss)
    cfg = dataclasses.replace(_vit_config(out_dir, "multi"), scale=scale)
    try:
        result = train(cfg)
    except ConfigError as err:
        return str(err)
    return [r["loss"] for r in read_metrics(result.run_dir)]


def test_tiles_and_chunks_across_ranks_match_one_process(tmp_path):
    single = [r["loss"] for r in read_metrics(train(_vit_config(tmp_path / "one", "single")).run_dir)]
    multi = spawn_gloo(_tiled_worker, 2, str(tmp_path / "two"), "local", timeout_s=300)
    assert multi[0] == pytest.approx(single, rel=1e-4)


def test_tiles_with_a_global_cross_rank_loss_are_refused_clearly(tmp_path):
    msgs = spawn_gloo(_tiled_worker, 2, str(tmp_path), "global", timeout_s=120)
    assert all("needs scale.dist_loss=local" in m for m in msgs)


def _any_loss_config(out_dir, name: str, variant: str):
    """A non-CLIP pair loss with labels, or a MultiLoss over three modalities (GatherAllLoss)."""
    from contrastkit.losses import LossConfig
    from contrastkit.models import TowerConfig

    cfg = _vit_config(out_dir, name)
    if variant == "supcon":
        data = dataclasses.replace(cfg.data, label_task="shape")
        return dataclasses.replace(cfg, data=data, loss=LossConfig("supcon"))
    towers = {**cfg.model.towers, "attributes": TowerConfig("mlp", {"input_dim": 45, "hidden_dim": 16})}
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, modalities=("image", "text", "attributes")),
        model=dataclasses.replace(cfg.model, towers=towers),
        loss=LossConfig("pairwise_clip"),
    )


def _any_loss_worker(out_dir: str, variant: str) -> list[float]:
    result = train(_any_loss_config(out_dir, "multi", variant))
    return [r["loss"] for r in read_metrics(result.run_dir)]


@pytest.mark.parametrize("variant", ["supcon", "pairwise_clip"])
def test_any_loss_on_two_ranks_matches_one_process(tmp_path, variant):
    """Losses without a memory-efficient cross-rank form run as GatherAllLoss: the same losses."""
    single = [
        r["loss"] for r in read_metrics(train(_any_loss_config(tmp_path / "one", "single", variant)).run_dir)
    ]
    multi = spawn_gloo(_any_loss_worker, 2, str(tmp_path / "two"), variant, timeout_s=300)
    assert len(multi[0]) == len(single) == 4
    assert multi[0] == pytest.approx(single, rel=1e-4)


@pytest.mark.parametrize(
    ("shared", "restarts", "warns"),
    [("True", "2", True), ("False", "2", False), ("True", "0", False), (None, None, False)],
)
def test_restarts_on_the_shared_store_warn_at_start(monkeypatch, shared, restarts, warns):
    # what torchrun exports to its workers: USE_AGENT_STORE is False when the agent was started
    # with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, MAX_RESTARTS is --max-restarts
    import warnings

    from contrastkit.train import distributed

    for key, value in (("TORCHELASTIC_USE_AGENT_STORE", shared), ("TORCHELASTIC_MAX_RESTARTS", restarts)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        distributed._warn_shared_store_restarts()
    got = [str(w.message) for w in seen]
    assert got == ([distributed.SHARED_STORE_RESTARTS] if warns else [])
    if warns:
        assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in got[0]
