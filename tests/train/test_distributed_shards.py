"""Training on WebDataset shards with 2 gloo ranks × 2 loader workers: every stream's place is
gathered into the checkpoint, and resuming continues exactly."""

from __future__ import annotations

import dataclasses
import json
import shutil

from contrastkit.data import ImageConfig, make_shapes
from contrastkit.data.convert import write_shards
from contrastkit.scale.launch import spawn_gloo
from contrastkit.train import RunConfig, latest_checkpoint, read_metrics, resume, train


def _config(shards: str, out: str, steps: int) -> RunConfig:
    base = RunConfig.tiny(name="dist", out_dir=out)
    data = dataclasses.replace(
        base.data,
        name="webdataset",
        params={"urls": f"{shards}/shard-{{000000..000007}}.tar", "shuffle_buffer": 8},
        splits={"train": {}},
        eval_splits=(),
        num_workers=2,
        image=ImageConfig(size=32),
    )
    train_cfg = dataclasses.replace(base.train, steps=steps, ckpt_every=3, log_every=1, batch_size=16)
    return dataclasses.replace(base, data=data, train=train_cfg)


def _train(shards: str, out: str, steps: int) -> list[float]:
    result = train(_config(shards, out, steps))
    return [r["loss"] for r in read_metrics(result.run_dir)]


def _resume(run: str) -> list[float]:
    return [r["loss"] for r in read_metrics(resume(run).run_dir)]


def test_two_ranks_two_workers_on_shards_resume_exactly(tmp_path):
    shards = tmp_path / "shards"
    write_shards(make_shapes("train", n=160, image_size=32, seed=2), shards, shard_size=20)
    full = spawn_gloo(_train, 2, str(shards), str(tmp_path / "full"), 9, timeout_s=300)[0]
    # the same run as if it had stopped after its step-6 checkpoint
    run = tmp_path / "split"
    shutil.copytree(tmp_path / "full" / "dist", run)
    shutil.rmtree(run / "checkpoints" / "step_00000009")
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 6, "path": "step_00000006"}))
    log = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(r for r in log if json.loads(r)["step"] <= 6) + "\n")
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert sorted(state["extra"]["data"]["stream"]) == ["0", "1", "2", "3"]  # 2 ranks × 2 workers
    assert state["extra"]["data"]["layout"] == {"world": 2, "num_workers": 2}
    resumed = spawn_gloo(_resume, 2, str(run), timeout_s=300)[0]
    assert len(full) == 9 and resumed == full  # steps 7–9 again, bit for bit
