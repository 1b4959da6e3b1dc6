"""SIGKILL a training run on WebDataset shards (2 loader workers) at random moments, resume each
time: the final weights and every logged loss equal an uninterrupted run's, bit for bit."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from contrastkit.core.config import to_dict
from contrastkit.data import ImageConfig, make_shapes
from contrastkit.data.convert import write_shards
from contrastkit.train import RunConfig, latest_checkpoint, read_metrics, train

STEPS, CKPT_EVERY, KILLS = 36, 3, 5  # the slow campaign: 15 kills over 90 steps


def _config(shards: Path, out: Path, name: str, steps: int = STEPS) -> RunConfig:
    base = RunConfig.tiny(name=name, out_dir=str(out))
    data = dataclasses.replace(
        base.data,
        name="webdataset",
        params={"urls": str(shards / "shard-{000000..000005}.tar"), "shuffle_buffer": 16},
        splits={"train": {}},
        eval_splits=(),
        num_workers=2,
        image=ImageConfig(size=32, crop_scale=(0.6, 1.0), flip=0.5),
    )
    train_cfg = dataclasses.replace(
        base.train, steps=steps, ckpt_every=CKPT_EVERY, log_every=1, batch_size=16
    )
    return dataclasses.replace(base, data=data, train=train_cfg)


def _step_of(run: Path) -> int:
    try:
        return int(json.loads((run / "checkpoints" / "latest.json").read_text())["step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def _launch(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "contrastkit", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill takes the loader workers too
        env=env,
    )


def test_sigkill_at_random_moments_then_resume_is_bit_exact(tmp_path):
    _campaign(tmp_path, KILLS, STEPS, seed=0)


@pytest.mark.slow
def test_sigkill_campaign(tmp_path):
    _campaign(tmp_path, 15, 90, seed=1)


def _campaign(tmp_path: Path, n_kills: int, steps: int, seed: int) -> None:
    shards = tmp_path / "shards"
    write_shards(make_shapes("train", n=150, image_size=32, seed=7), shards, shard_size=25)
    reference = train(_config(shards, tmp_path / "ref", "ref", steps))

    cfg = _config(shards, tmp_path / "runs", "killed", steps)
    cfg_file = tmp_path / "killed.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    run = tmp_path / "runs" / "killed"
    rng = np.random.default_rng(seed)
    kills = []
    for i in range(n_kills):
        target = _step_of(run) + int(rng.integers(1, 5))  # a few checkpoints further each time
        args = ["train", "--config", str(cfg_file)] if i == 0 else ["train", "--resume", str(run)]
        proc = _launch(args)
        deadline = time.monotonic() + 120
        while _step_of(run) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0, 0.1)))  # land anywhere: mid-step, mid-batch, mid-write
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(_step_of(run))
    final = _launch(["train", "--resume", str(run)])
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()[-3000:]
    assert len(set(kills)) == n_kills and kills[-1] < steps  # killed at distinct points, before the end

    ref_metrics, got = read_metrics(reference.run_dir), read_metrics(run)
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    assert [r["loss"] for r in got] == [r["loss"] for r in ref_metrics]  # every logged loss, exactly
    a = load_file(str(latest_checkpoint(reference.run_dir) / "model.safetensors"))
    b = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["extra"]["data"]["layout"] == {"world": 1, "num_workers": 2}
    assert set(state["extra"]["data"]["stream"]) == {"0", "1"}  # both streams' places saved
