"""Noisy pairs on several processes (gloo): the scoring pass is split over the processes and its
losses gathered, so every process fits the same mixture as one process would; per-pair weights
through the cross-process CLIP loss equal the weighted full-batch loss (values and gradients)."""

import dataclasses

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError
from contrastkit.losses.clip import clip_loss
from contrastkit.scale.distributed import GatherLoss
from contrastkit.scale.launch import spawn_gloo
from contrastkit.train import read_metrics, train
from contrastkit.train.config import CurationConfig
from contrastkit.train.noisy import NoisyPairsConfig, check_noisy_pairs

from .test_guard_and_training import _vit_config


def _inputs(n=12, d=5):
    g = torch.Generator().manual_seed(3)
    x, y = (
        torch.randn(n, d, generator=g, dtype=torch.float64),
        torch.randn(n, d, generator=g, dtype=torch.float64),
    )
    w = torch.rand(n, generator=g, dtype=torch.float64)
    return x, y, w


class _Clip(torch.nn.Module):  # a CLIP loss module with a fixed float64 scale
    accepts = frozenset({"pair_weights"})

    def pure(self):
        return clip_loss, {"scale": torch.tensor(7.0, dtype=torch.float64)}

    def forward(self, x, y, pair_weights=None):
        return clip_loss(x, y, 7.0, pair_weights=pair_weights)


def _worker():
    return [_gather_part(), _score_part()]


def _gather_part():
    import torch.distributed as dist

    r, world = dist.get_rank(), dist.get_world_size()
    x, y, w = _inputs()
    b = x.shape[0] // world
    xl, yl = (t[r * b : (r + 1) * b].clone().requires_grad_(True) for t in (x, y))
    loss = GatherLoss(_Clip())
    assert loss.accepts == frozenset({"pair_weights"})
    value = loss(xl, yl, pair_weights=w[r * b : (r + 1) * b])
    value.backward()  # the gather's backward sums every rank's share: Σ_r ∂loss_r/∂x_local
    return [float(value.detach()), torch.cat([xl.grad, yl.grad]) / world]  # DDP's average


@pytest.fixture(scope="module")
def two_ranks():
    """One gloo spawn for both checks (starting processes is the slow part)."""
    return spawn_gloo(_worker, 2, timeout_s=180)


def test_weighted_cross_process_clip_equals_the_dense_weighted_loss(two_ranks):
    x, y, w = _inputs()
    xd, yd = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    dense = clip_loss(xd, yd, 7.0, pair_weights=w)
    dense.backward()
    naive = []  # (1/N) Σ w_i ½(row_i + col_i), written out
    xn, yn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
    logits = 7.0 * xn @ yn.T
    for i in range(len(x)):
        row = torch.logsumexp(logits[i], 0) - logits[i, i]
        col = torch.logsumexp(logits[:, i], 0) - logits[i, i]
        naive.append(w[i] * 0.5 * (row + col))
    assert float(dense.detach()) == pytest.approx(float(torch.stack(naive).mean()), rel=1e-12)
    out = [part[0] for part in two_ranks]
    assert (out[0][0] + out[1][0]) / 2 == pytest.approx(float(dense.detach()), rel=1e-12)  # mean over ranks
    for r in range(2):
        torch.testing.assert_close(out[r][1][:6], xd.grad[r * 6 : (r + 1) * 6], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out[r][1][6:], yd.grad[r * 6 : (r + 1) * 6], rtol=1e-10, atol=1e-12)


def _score_part():
    from contrastkit.data import make_shapes
    from contrastkit.models.dual_encoder import ModelConfig, build_model
    from contrastkit.train.noisy import pair_losses

    torch.manual_seed(0)
    pairs = make_shapes("train", 21)
    model = build_model(ModelConfig.tiny(), texts=[c for caps in pairs.captions for c in caps]).eval()
    import torch.distributed as dist

    return torch.from_numpy(pair_losses(model, pairs, 10.0, 4, seed=1, rank=dist.get_rank(), world=2))


def test_scoring_on_two_processes_equals_one_process_on_every_rank(two_ranks):
    from contrastkit.data import make_shapes
    from contrastkit.models.dual_encoder import ModelConfig, build_model
    from contrastkit.train.noisy import pair_losses

    torch.manual_seed(0)
    pairs = make_shapes("train", 21)
    model = build_model(ModelConfig.tiny(), texts=[c for caps in pairs.captions for c in caps]).eval()
    one = pair_losses(model, pairs, 10.0, 4, seed=1)
    two = [part[1] for part in two_ranks]
    assert np.isfinite(one).all() and one.shape == (42,)
    assert two[0].numpy().tobytes() == two[1].numpy().tobytes() == one.tobytes()


def _noisy_vit(out_dir, name):
    cfg = _vit_config(out_dir, name)
    splits = {**cfg.data.splits, "train": {"n": 64, "noise": 0.3}}
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, splits=splits),
        train=dataclasses.replace(cfg.train, steps=6, ckpt_every=6),
        curation=CurationConfig(NoisyPairsConfig(every=2, start=2)),
    )


def _train_worker(out_dir: str):
    from contrastkit.train.noisy import clean_probabilities

    result = train(_noisy_vit(out_dir, "multi"))
    rows = read_metrics(result.run_dir)
    import torch.distributed as dist

    clean = torch.from_numpy(clean_probabilities(result.run_dir)) if dist.get_rank() == 0 else None
    return [[r["loss"] for r in rows if "loss" in r], [r["noisy_pi"] for r in rows if "noisy_pi" in r], clean]


@pytest.mark.slow
def test_two_process_training_with_pair_weights_follows_one_process(tmp_path):
    from contrastkit.train.noisy import clean_probabilities

    single = train(_noisy_vit(tmp_path / "one", "single"))
    rows = read_metrics(single.run_dir)
    loss = [r["loss"] for r in rows if "loss" in r]
    pi = [r["noisy_pi"] for r in rows if "noisy_pi" in r]
    multi = spawn_gloo(_train_worker, 2, str(tmp_path / "two"), timeout_s=300)
    assert len(pi) == 3 and len(loss) == 6
    assert multi[0][0] == pytest.approx(loss, rel=1e-4)  # weighted loss after the fits included
    assert multi[0][1] == pytest.approx(pi, rel=1e-3)
    np.testing.assert_allclose(multi[0][2].numpy(), clean_probabilities(single.run_dir), atol=1e-3)


def test_what_several_processes_cannot_do_is_refused_by_name(tmp_path):
    cfg = _noisy_vit(tmp_path, "bad")
    check_noisy_pairs(cfg, world=2)  # weight mode, dist_loss local: served
    drop = dataclasses.replace(cfg, curation=CurationConfig(NoisyPairsConfig(mode="drop")))
    with pytest.raises(ConfigError, match="mode=drop changes each process's batch size"):
        check_noisy_pairs(drop, world=2)
    glob = dataclasses.replace(cfg, scale=dataclasses.replace(cfg.scale, dist_loss="global"))
    with pytest.raises(ConfigError, match="needs scale.dist_loss=local"):
        check_noisy_pairs(glob, world=2)
