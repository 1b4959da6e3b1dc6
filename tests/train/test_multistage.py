"""D-MCL stage loop: config, stage configs, clustering, cross-stage concatenation, a tiny 2-stage run."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from contrastkit.core.config import from_dict
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import make_shapes
from contrastkit.data.pairs import PairSet
from contrastkit.evaluation.encoders import model_encoders
from contrastkit.evaluation.multistage import concat_embeddings, multistage_encoders, run_encoders
from contrastkit.models.dual_encoder import ModelConfig, build_model
from contrastkit.train import RunConfig, resume, train
from contrastkit.train.checkpoint import latest_checkpoint
from contrastkit.train.config import CurationConfig
from contrastkit.train.multistage import (
    MCLConfig,
    cluster_labels,
    embed_images,
    groups_path,
    is_multistage,
    stage_config,
    stage_dirs,
)


def mcl_cfg(tmp_path, **mcl) -> RunConfig:
    cfg = RunConfig.tiny(out_dir=str(tmp_path))
    return dataclasses.replace(cfg, curation=CurationConfig(mcl=MCLConfig(**{"clusters": 3, **mcl})))


def test_config_from_yaml_dict_and_errors():
    cfg = from_dict(RunConfig, {"curation": {"mcl": {"stages": 3, "clusters": 5, "combine": "current_only"}}})
    assert cfg.curation.mcl == MCLConfig(stages=3, clusters=5, combine="current_only")
    with pytest.raises(ConfigError, match="unknown|Unknown|not a field|clusterz"):
        from_dict(RunConfig, {"curation": {"mcl": {"clusterz": 5}}})
    with pytest.raises(ConfigError, match="stages must be >= 1"):
        MCLConfig(stages=0)
    with pytest.raises(ConfigError, match="combine must be one of"):
        MCLConfig(combine="all")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="do not fit in int64"):
        MCLConfig(stages=40, clusters=10)


def test_stage_configs_split_steps_and_point_at_groups(tmp_path):
    cfg = dataclasses.replace(
        mcl_cfg(tmp_path, stages=3), train=dataclasses.replace(RunConfig.tiny().train, steps=31)
    )
    root = tmp_path / "tiny"
    s0, s1, s2 = (stage_config(cfg, root, t) for t in range(3))
    assert [s.train.steps for s in (s0, s1, s2)] == [10, 10, 11]  # the total budget, split
    assert all(s.curation.mcl is None and s.out_dir == str(root) for s in (s0, s1, s2))
    assert s0.data == cfg.data and s0.name == "stage-0"
    assert s2.data.sampler.name == "mcl"
    assert s2.data.sampler.params == {"groups": str(groups_path(root, 2).resolve())}
    assert s1.train.init_from is None  # init "base": the same fresh init as stage 0
    prev = stage_config(
        dataclasses.replace(cfg, curation=CurationConfig(mcl=MCLConfig(stages=3, init="previous"))), root, 2
    )
    assert prev.train.init_from == str((root / "stage-1").resolve())
    assert stage_dirs(root, MCLConfig(stages=2, stage0="/x/y")) == [Path("/x/y"), root / "stage-1"]


def test_cluster_labels_recover_blobs_and_mark_unreadable_rows():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 10
    truth = rng.integers(0, 3, 90)
    emb = centres[truth] + rng.normal(0, 0.1, (90, 8))
    emb[5] = np.nan
    labels = cluster_labels(emb, 3, seed=0)
    assert labels[5] == -1
    ok = np.arange(90) != 5
    pairs = set(zip(truth[ok].tolist(), labels[ok].tolist()))
    assert len(pairs) == 3  # the same partition up to renaming
    with pytest.raises(InputError, match="at least 4 items"):
        cluster_labels(emb[:3], 4)


def _tiny_model(seed: int):
    torch.manual_seed(seed)
    pairs = make_shapes(n=40, image_size=32, seed=0)
    return build_model(ModelConfig.tiny(), texts=[c for cs in pairs.captions for c in cs]), pairs


def test_concatenation_formulas():
    g = torch.Generator().manual_seed(0)
    f = [torch.randn(5, 4, generator=g, dtype=torch.float64) * s for s in (1.0, 3.0)]
    h = [torch.randn(5, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    assert torch.allclose(concat_embeddings(f[:1]), F.normalize(f[0].float(), dim=-1))  # T = 0
    cos = concat_embeddings(f) @ concat_embeddings([h[0][:, :4], h[1][:, :4]]).T
    want = torch.zeros(5, 5, dtype=torch.float64)
    for i in range(5):
        for j in range(5):
            dot = sum(float(f[t][i] @ h[t][j, :4]) for t in range(2))
            nf = sum(float(f[t][i] @ f[t][i]) for t in range(2)) ** 0.5
            nh = sum(float(h[t][j, :4] @ h[t][j, :4]) for t in range(2)) ** 0.5
            want[i, j] = dot / (nf * nh)
    assert torch.allclose(cos.double(), want, atol=1e-6)
    hh = [h[0][:, :4], h[1][:, :4]]
    per = concat_embeddings(f, True) @ concat_embeddings(hh, True).T
    mean_cos = sum(F.normalize(f[t], dim=-1) @ F.normalize(hh[t], dim=-1).T for t in range(2)) / 2
    assert torch.allclose(per.double(), mean_cos, atol=1e-6)
    with pytest.raises(InputError, match="at least one"):
        concat_embeddings([])


def test_encoders_of_one_stage_equal_the_model_and_two_stages_concatenate():
    (m0, pairs), (m1, _) = _tiny_model(0), _tiny_model(1)
    texts = [c[0] for c in pairs.captions[:7]]
    one, ref = multistage_encoders([m0], batch_size=3), model_encoders(m0, batch_size=3)
    assert torch.allclose(one.images(pairs.images[:7]), ref.images(pairs.images[:7]), atol=1e-6)
    assert torch.allclose(one.texts(texts), ref.texts(texts), atol=1e-6)
    two = multistage_encoders([m0, m1], batch_size=4)
    with torch.no_grad():
        raw = [m.eval().encode("image", pairs.images[:7]) for m in (m0, m1)]
    assert torch.allclose(two.images(pairs.images[:7]), F.normalize(torch.cat(raw, -1), dim=-1), atol=1e-6)
    emb = embed_images(m0, pairs, batch_size=16)
    assert np.allclose(emb[:7], ref.images(pairs.images[:7]).numpy(), atol=1e-6)


@pytest.mark.slow  # two tiny trainings, a re-clustering and a third training: ~30 s
def test_two_stage_run_end_to_end_resume_and_eval(tmp_path):
    cfg = mcl_cfg(tmp_path)  # 20 steps in all: 10 per stage, checkpoints every 10
    result = train(cfg)
    root = tmp_path / "tiny"
    assert result.step == 20 and is_multistage(root) and not is_multistage(root / "stage-0")
    groups = np.load(groups_path(root, 1))
    kmeans = np.load(root / "clusters" / "kmeans-0.npy")
    assert np.array_equal(groups, kmeans) and set(groups.tolist()) == {0, 1, 2}  # one stage: p = c^(0)
    s1 = json.loads((latest_checkpoint(root / "stage-1") / "state.json").read_text())["step"]
    assert s1 == 10
    weights = {k: v.clone() for k, v in run_encoders(root)[1].state_dict().items()}
    with pytest.raises(ConfigError, match="already exists"):
        train(cfg)
    assert resume(root).already_finished
    # lose stage 1 and its groups: resume re-clusters stage 0 and retrains stage 1 identically
    shutil.rmtree(root / "stage-1")
    (root / "clusters" / "groups-1.npy").unlink()
    (root / "clusters" / "kmeans-0.npy").unlink()
    again = resume(root)
    assert not again.already_finished and np.array_equal(np.load(groups_path(root, 1)), groups)
    _, model, _, enc, record = run_encoders(root)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert [s["path"] for s in record["stages"]] == [str((root / f"stage-{t}").resolve()) for t in range(2)]
    pairs: PairSet = make_shapes(n=8, image_size=32, seed=3)
    assert enc.images(pairs.images).shape == (8, 2 * cfg.model.embed_dim)


def _small_mcl(out: str) -> RunConfig:
    """2 stages × 4 steps of a BatchNorm-free tiny run (ViT + BERT: one process computes what two
    do; batch norm would normalise per process), batch 32, 3 clusters; a checkpoint per stage."""
    from tests.train.test_guard_and_training import _vit_config

    cfg = _vit_config(Path(out), "tiny")
    cfg = dataclasses.replace(cfg, curation=CurationConfig(mcl=MCLConfig(clusters=3)))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=8, ckpt_every=4, log_every=1))


def _record_mcl_batches() -> list[tuple[int, list[int]]]:
    """Patch this process's MCL sampler to record ``(step, items)`` of every batch it hands out."""
    from contrastkit.data import mcl

    seen: list[tuple[int, list[int]]] = []
    plain = mcl.MCLBatchSampler.__iter__

    def recording(self):
        for batch in plain(self):
            seen.append((batch.step, [i for i, _ in batch]))
            yield batch

    mcl.MCLBatchSampler.__iter__ = recording  # type: ignore[method-assign]
    return seen


def _mcl_worker(out: str) -> dict:
    from contrastkit.train import read_metrics

    seen = _record_mcl_batches()
    result = train(_small_mcl(out))
    losses = [r["loss"] for r in read_metrics(Path(out) / "tiny" / "stage-1") if "loss" in r]
    return {"step": result.step, "seen": seen, "losses": losses}


@pytest.mark.slow  # two 2-stage runs (one on 2 gloo processes): ~40 s on a busy 2-core machine
def test_two_processes_train_group_pure_batches_like_one_process(tmp_path):
    from contrastkit.scale.launch import spawn_gloo
    from contrastkit.train import read_metrics

    ranks = spawn_gloo(_mcl_worker, 2, str(tmp_path / "two"), timeout_s=400)
    assert [r["step"] for r in ranks] == [8, 8]
    groups = np.load(groups_path(tmp_path / "two" / "tiny", 1))
    per_rank = [dict(r["seen"]) for r in ranks]
    steps = sorted(set(per_rank[0]) & set(per_rank[1]))
    assert steps[:4] == [0, 1, 2, 3]  # stage 1's 4 steps (and any prefetched ones)
    for k in steps:
        rows = per_rank[0][k] + per_rank[1][k]  # the global batch: rank 0's rows, then rank 1's
        assert len(rows) == 32 and len(set(rows)) == 32 and len(set(groups[rows].tolist())) == 1
    one = _mcl_worker(str(tmp_path / "one"))  # the same run on one process
    # rank 0 clustered stage 0 of the 2-process run: the same groups as the 1-process run's
    assert np.array_equal(np.load(groups_path(tmp_path / "one" / "tiny", 1)), groups)
    assert [k for k, _ in one["seen"]][:4] == [0, 1, 2, 3]
    for k, items in one["seen"]:  # the same global batches (rows in another order: item j -> rank j mod D)
        assert k not in per_rank[0] or sorted(items) == sorted(per_rank[0][k] + per_rank[1][k])
    assert ranks[0]["losses"] == pytest.approx(one["losses"], rel=1e-4)
    assert len(one["losses"]) == 4
    stage0 = [r["loss"] for r in read_metrics(tmp_path / "two" / "tiny" / "stage-0") if "loss" in r]
    assert len(stage0) == 4
    # a moved run folder resumes: stage 1 (its checkpoint lost) reads the moved group file
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "one" / "tiny", moved)
    shutil.rmtree(moved / "stage-1" / "checkpoints")
    with pytest.warns(UserWarning, match="no checkpoint yet"):
        assert resume(moved).step == 8
    params = yaml.safe_load((moved / "stage-1" / "config.yaml").read_text())["data"]["sampler"]["params"]
    assert params == {"groups": str(groups_path(moved, 1).resolve())}
    again = [r["loss"] for r in read_metrics(moved / "stage-1") if "loss" in r]
    assert again == one["losses"]  # the same stage 1 again, bit for bit
