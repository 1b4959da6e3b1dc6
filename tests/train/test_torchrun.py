"""Multi-node launches simulated on one machine: two ``torchrun --nnodes 2`` agents (one per
"node", c10d rendezvous on 127.0.0.1, gloo) train one run, split WebDataset shards over nodes ×
ranks × loader workers, and survive a SIGKILLed worker with ``--max-restarts`` and
``train.auto_resume``: the restarted run equals an uninterrupted one bit for bit."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from contrastkit.core.config import to_dict
from contrastkit.data import make_shapes
from contrastkit.data.convert import write_shards
from contrastkit.scale.launch import spawn_gloo
from contrastkit.train import RunConfig, latest_checkpoint, read_metrics, train

from ..data.test_shard_stream import SHARD, N
from .test_guard_and_training import _vit_config
from .test_kill_resume_shards import _config as _shard_config
from .test_kill_resume_shards import _step_of

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch_nodes(
    entry: list[str], logs: Path, nproc: int = 1, max_restarts: int = 0
) -> list[subprocess.Popen]:
    """One torchrun agent per simulated node, both rendezvousing at one free local port."""
    port, procs = _free_port(), []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CONTRASTKIT_PROGRESS": "0"}
    # as docs/distributed.md asks of every launch with restarts: without it the agents share one
    # store across attempts and a restarted rank can read the dead attempt's addresses (1 in ~5 runs
    # failed that way, and the other agent then hung), pytorch/pytorch#135712
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    for node in range(2):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node_rank",
            str(node),  # ignored by c10d (it assigns node ranks) but what a static launch passes
            "--nproc_per_node",
            str(nproc),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            "ck-test",
            "--max-restarts",
            str(max_restarts),
            *entry,
        ]
        out = open(logs / f"node{node}.log", "w")  # a file, not a pipe: a full pipe blocks torchrun
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
        out.close()
    return procs


def _parents() -> dict[int, int]:
    """pid → parent pid of every live process."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    return parent


def _descendants(pids: list[int]) -> list[int]:
    """Every live process below ``pids`` (torchrun puts each worker in a session of its own, so
    killing an agent's process group would leave its workers running)."""
    parent = _parents()
    found, frontier = [], set(pids)
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in found]
        found += kids
        frontier = set(kids)
    return found


def _wait_nodes(procs: list[subprocess.Popen], logs: Path, timeout_s: float = 600) -> None:
    """Wait for both agents to exit 0; on failure or timeout kill them and their workers, and fail
    with the tail of each node's log."""
    start = time.monotonic()
    deadline = start + timeout_s
    try:
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.1)
        codes = [p.poll() for p in procs]
        if codes != [0, 0]:
            tails = "\n".join(
                f"--- node {i}:\n{(logs / f'node{i}.log').read_text()[-3000:]}" for i in range(2)
            )
            pytest.fail(
                f"torchrun agents exited with {codes} (None: still running {time.monotonic() - start:.0f} s "
                f"after launch)\n{tails}"
            )
    finally:
        _kill_all(procs)


def _kill_all(procs: list[subprocess.Popen]) -> None:
    alive = [p for p in procs if p.poll() is None]
    if not alive:
        return
    below = _descendants([p.pid for p in alive])
    for p in alive:
        p.send_signal(signal.SIGTERM)  # torchrun stops its workers on SIGTERM
    try:
        for p in alive:
            p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    for pid in [*below, *(p.pid for p in alive)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in alive:
        p.wait()


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    """No GPU here: torch.cuda and the process group are stubbed to check the choice alone."""
    import torch
    import torch.distributed as dist

    from contrastkit.core.errors import ConfigError
    from contrastkit.train.distributed import init_from_env

    picked: list[int] = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", picked.append)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: picked.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = init_from_env(torch.device("cuda"))
    assert picked == [1, "nccl"] and (ctx.rank, ctx.world) == (3, 4)
    picked.clear()
    init_from_env(torch.device("cuda:0"))  # an explicit index is the config's own choice
    assert picked == ["nccl"]
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ConfigError, match="LOCAL_RANK=2 has no GPU of its own: this node shows 2"):
        init_from_env(torch.device("cuda"))


def _write_config(cfg: RunConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


@pytest.mark.parametrize(
    "nproc",
    [1, pytest.param(2, marks=pytest.mark.slow)],  # 2: 30–60 s, 4 workers start
)
def test_two_nodes_split_the_shards_with_nothing_seen_twice(tmp_path, nproc):
    """2 nodes × ``nproc`` ranks × 2 loader workers = 4 or 8 streams over 9 shards: one epoch
    reads every sample key exactly once, and every rank reads some."""
    shards, out = tmp_path / "shards", tmp_path / "keys"
    write_shards(make_shapes("train", n=N, image_size=16, seed=3), shards, shard_size=SHARD)
    out.mkdir()
    script = str(ROOT / "tests" / "train" / "torchrun_keys.py")
    procs = _launch_nodes([script, str(shards), str(out), "2"], tmp_path, nproc=nproc)
    _wait_nodes(procs, tmp_path, timeout_s=600)
    world = 2 * nproc
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    assert [r["rank"] for r in records] == list(range(world)) and {r["world"] for r in records} == {world}
    assert Counter(r["node"] for r in records) == {0: nproc, 1: nproc}  # nproc ranks on each node
    assert all(r["rank"] == nproc * r["node"] + r["local_rank"] for r in records)
    seen = Counter(k for r in records for k in r["keys"])
    assert sorted(seen) == [f"{i:09d}" for i in range(N)]  # the whole shard set …
    assert set(seen.values()) == {1}  # … each sample once
    assert all(r["keys"] for r in records)


@pytest.mark.slow  # 20–50 s: two agents and two workers start (imports)
def test_two_simulated_nodes_train_like_one_process(tmp_path):
    single = [r["loss"] for r in read_metrics(train(_vit_config(tmp_path / "one", "run")).run_dir)]
    cfg_file = _write_config(_vit_config(tmp_path / "two", "run"), tmp_path / "run.yaml")
    procs = _launch_nodes(["-m", "contrastkit", "train", "--config", str(cfg_file)], tmp_path)
    _wait_nodes(procs, tmp_path)
    state = json.loads((latest_checkpoint(tmp_path / "two" / "run") / "state.json").read_text())
    assert state["step"] == 4
    multi = [r["loss"] for r in read_metrics(tmp_path / "two" / "run")]
    assert len(multi) == len(single) == 4
    assert multi == pytest.approx(single, rel=1e-4)  # same global batch, same averaged gradients


def _rank_worker(pid: int) -> bool:
    """Whether ``pid`` is the first attempt's worker of global rank 1 (its environment says)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"RANK=1" in env and b"TORCHELASTIC_RESTART_COUNT=0" in env


def _train_ref(cfg_file: str) -> list[float]:
    from contrastkit.core.config import from_dict, load_yaml

    result = train(from_dict(RunConfig, load_yaml(Path(cfg_file))))
    return [r["loss"] for r in read_metrics(result.run_dir)]


@pytest.mark.slow  # 100–300 s: the 2-rank reference, two agents, the restart
def test_sigkilled_rank_restarts_and_the_run_resumes_bit_for_bit(tmp_path):
    """Rank 1 of a 2-node run on WebDataset shards (2 loader workers per rank) is SIGKILLed at a
    random step; torchrun restarts the group, both ranks resume from rank 0's newest checkpoint
    (train.auto_resume), and the finished run's losses and weights equal an uninterrupted run's."""
    steps = 24
    shards = tmp_path / "shards"
    write_shards(make_shapes("train", n=150, image_size=32, seed=7), shards, shard_size=25)

    def config(out: str) -> Path:
        cfg = _shard_config(shards, tmp_path / out, "run", steps)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, auto_resume=True))
        return _write_config(cfg, tmp_path / f"{out}.yaml")

    ref_file, cfg_file = config("ref"), config("elastic")
    reference = spawn_gloo(_train_ref, 2, str(ref_file), timeout_s=600)[0]
    run = tmp_path / "elastic" / "run"
    target = int(np.random.default_rng().integers(3, steps - 6))
    entry = ["-m", "contrastkit", "train", "--config", str(cfg_file)]
    procs = _launch_nodes(entry, tmp_path, max_restarts=2)
    try:
        deadline = time.monotonic() + 600
        while _step_of(run) < target and time.monotonic() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.02)
        agents = {p.pid for p in procs}  # their children are the workers (theirs: loader workers)
        victims = [pid for pid, pp in _parents().items() if pp in agents and _rank_worker(pid)]
        assert len(victims) == 1, f"rank 1's worker not found (step {_step_of(run)}, target {target})"
        os.kill(victims[0], signal.SIGKILL)  # the worker alone: its agent cleans up the rest
        killed_at = _step_of(run)
    except BaseException:
        _kill_all(procs)
        raise
    _wait_nodes(procs, tmp_path)
    assert target <= killed_at < steps  # killed mid-run, after a checkpoint or more
    logs = "".join((tmp_path / f"node{i}.log").read_text() for i in range(2))
    assert logs.count("failed (exitcode: -9)") == 1  # the agent saw the kill, and restarted once

    got = read_metrics(run)
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    assert [r["loss"] for r in got] == reference  # every logged loss, exactly
    a = load_file(str(latest_checkpoint(tmp_path / "ref" / "run") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["extra"]["data"]["layout"] == {"world": 2, "num_workers": 2}


@pytest.mark.slow  # 25–100 s: the benchmark behind docs/distributed.md at toy size (nothing timed)
def test_multinode_throughput_benchmark_runs(tmp_path):
    out = tmp_path / "rates.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "multinode_throughput.py"), "--steps", "3"]
    cmd += ["--warmup", "1", "--rounds", "1", "--batch", "16", "--out", str(out)]
    cmd += ["--set", "data.splits.train.n=256"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["arm"], r["processes"], r["steps_measured"]) for r in recs] == [("one", 1, 2), ("two", 2, 2)]
    assert all(r["median_samples_per_s"] > 0 for r in recs)
