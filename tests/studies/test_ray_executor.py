"""Studies on Ray (``--executor ray``) on a real local Ray cluster: the same files and report numbers
as the process pool, bit for bit (CPU, one thread per run); finished runs submit no task; a worker
killed after the run's first checkpoint is rerun by Ray and the run resumes from that checkpoint,
ending equal to an uninterrupted run. Bad resource options are clear errors; Ray is imported only
when this executor runs.

One 2-CPU cluster (``ray.init``) serves the module; the slow CLI test starts its own head node and
a second node with ``ray start --block`` and stops both by their process groups. Everything stays on
the loopback range: Ray rewrites a node address of 127.0.0.1 to the machine's network address, so
that test's nodes use 127.0.0.2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from contrastkit.core import to_dict
from contrastkit.core.errors import ConfigError
from contrastkit.studies.config import RayConfig, load_study
from contrastkit.studies.ray_executor import run_all_ray, run_resources
from contrastkit.studies.runner import execute_run, plan_runs
from contrastkit.studies.study import run_study, with_executor
from contrastkit.train import RunConfig

ray = pytest.importorskip("ray")
RUNS = ["clip-s0", "clip-s1", "siglip-s0", "siglip-s1"]


def write_study(folder: Path, **changes) -> Path:
    """2 settings x 2 seeds of the tiny config; 6 steps with a checkpoint at step 3."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(to_dict(RunConfig.tiny())))
    study = {
        "name": "tiny",
        "base": "base.yaml",
        "overrides": {"train.steps": 6, "train.ckpt_every": 3, "train.log_every": 1},
        "grid": {"loss.name": ["clip", "siglip"]},
        "seeds": [0, 1],
        "metric": "zeroshot/color/top1",
        "comparisons": [{"baseline": {"loss.name": "clip"}, "intervention": {"loss.name": "siglip"}}],
        "nboot": 200,
        "out_dir": str(folder / "studies"),
        **changes,
    }
    (folder / "study.yaml").write_text(yaml.safe_dump(study))
    return folder / "study.yaml"


def scores(root: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(root / "runs" / name / "examples.npz") as z:
        return {k: z[k] for k in z.files}


def assert_same_runs(root: Path, ref: Path, names=RUNS) -> None:
    for name in names:
        got, want = scores(root, name), scores(ref, name)
        assert sorted(got) == sorted(want), name
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name} {key}")
        got_m = json.loads((root / "runs" / name / "eval_metrics.json").read_text())
        assert got_m == json.loads((ref / "runs" / name / "eval_metrics.json").read_text()), name


def report_numbers(root: Path) -> list[str]:
    """report.md without its wall-time line (the only line that may differ)."""
    return [line for line in (root / "report.md").read_text().splitlines() if "Wall time" not in line]


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster with 2 CPUs for the module (starting Ray takes seconds)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tasks need no tests package
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool_study(tmp_path_factory) -> Path:
    """The reference: the tiny study run by the process pool (one process, one thread)."""
    path = write_study(tmp_path_factory.mktemp("pool"))
    run_study(path)
    return path.parent / "studies" / "tiny"


def logged_run(spec, study, threads):
    """Trains like execute_run and records that a task ran it (tasks.log in the study folder)."""
    with open(spec.run_dir.parents[1] / "tasks.log", "a") as fh:
        fh.write(f"{spec.name}\n")
    return execute_run(spec, study, threads)


def kill_after_first_checkpoint(spec, study, threads):
    """Like execute_run, but the first attempt at clip-s0 SIGKILLs its own worker process right
    after the step-3 checkpoint. Each attempt records the step it starts from."""
    import contrastkit.train.trainer as trainer
    from contrastkit.train import latest_checkpoint

    root = spec.run_dir.parents[1]
    root.mkdir(parents=True, exist_ok=True)
    ckpt = spec.run_dir / "checkpoints"
    start = int(latest_checkpoint(spec.run_dir).name[5:]) if ckpt.is_dir() and any(ckpt.iterdir()) else 0
    with open(root / "attempts.log", "a") as fh:
        fh.write(f"{spec.name} {start} {os.getpid()}\n")
    marker = root / "killed-once"
    if spec.name != "clip-s0" or marker.exists():
        return execute_run(spec, study, threads)
    real = trainer._checkpoint

    def checkpoint_then_die(s, step):
        real(s, step)
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)

    trainer._checkpoint = checkpoint_then_die  # this worker dies in it: nothing to restore
    return execute_run(spec, study, threads)


def test_ray_study_equals_pool_and_skips_finished_runs(cluster, pool_study, tmp_path, capsys):
    path = write_study(tmp_path)
    root = tmp_path / "studies" / "tiny"
    study, base = load_study(path)
    specs = plan_runs(study, base, root)
    full = r"no node of the Ray cluster can hold .*'num_cpus': 3, .*'CPU': 2\.0"
    with pytest.raises(ConfigError, match=full):
        run_all_ray(specs, study, RayConfig(cpus_per_run=3))  # the cluster has 2 CPUs
    run_study(path, executor="ray")
    assert_same_runs(root, pool_study)
    assert report_numbers(root) == report_numbers(pool_study)
    import pyarrow.parquet as pq

    assert (
        pq.read_table(root / "results.parquet").to_pydict()
        == pq.read_table(pool_study / "results.parquet").to_pydict()
    )

    # one run lost its scores: only that run is submitted (and resumes its finished training)
    (root / "runs" / "siglip-s1" / "examples.npz").unlink()
    before = {n: (root / "runs" / n / "examples.npz").stat().st_mtime_ns for n in RUNS if n != "siglip-s1"}
    capsys.readouterr()
    assert run_all_ray(specs, study, RayConfig(), run=logged_run) == []
    assert "3 already finished, 1 to run" in capsys.readouterr().out
    assert (root / "tasks.log").read_text().split() == ["siglip-s1"]
    assert_same_runs(root, pool_study)
    assert before == {n: (root / "runs" / n / "examples.npz").stat().st_mtime_ns for n in before}
    assert run_all_ray(specs, study, RayConfig(), run=logged_run) == []  # all finished: no task
    assert "4 already finished, 0 to run" in capsys.readouterr().out
    assert (root / "tasks.log").read_text().split() == ["siglip-s1"]


@pytest.mark.slow
def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(cluster, pool_study, tmp_path):
    path = write_study(tmp_path)
    root = tmp_path / "studies" / "tiny"
    study, base = load_study(path)
    specs = plan_runs(study, base, root)
    assert run_all_ray(specs, study, RayConfig(max_retries=1), run=kill_after_first_checkpoint) == []
    attempts = [line.split() for line in (root / "attempts.log").read_text().splitlines()]
    clip0 = [(int(step), pid) for name, step, pid in attempts if name == "clip-s0"]
    assert [step for step, _ in clip0] == [0, 3]  # the retry started from the step-3 checkpoint
    assert clip0[0][1] != clip0[1][1]  # in a new worker process
    assert sorted(name for name, *_ in attempts) == sorted([*RUNS, "clip-s0"])
    assert_same_runs(root, pool_study)  # equal to the uninterrupted runs, bit for bit
    log = [
        json.loads(line) for line in (root / "runs" / "clip-s0" / "metrics.jsonl").read_text().splitlines()
    ]
    ref = [
        json.loads(line)
        for line in (pool_study / "runs" / "clip-s0" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["loss"] for r in log if "loss" in r] == [r["loss"] for r in ref if "loss" in r]


@pytest.mark.slow
def test_dying_worker_past_max_retries_fails_the_run_only(cluster, tmp_path, capsys):
    path = write_study(tmp_path, seeds=[0])
    root = tmp_path / "studies" / "tiny"
    study, base = load_study(path)
    specs = plan_runs(study, base, root)
    failed = run_all_ray(specs, study, RayConfig(max_retries=0), run=kill_after_first_checkpoint)
    assert failed == ["clip-s0"]
    assert "run clip-s0 failed:\nWorkerCrashedError" in capsys.readouterr().out
    assert (root / "runs" / "siglip-s0" / "examples.npz").is_file()
    assert run_all_ray(specs, study, RayConfig(max_retries=0)) == []  # a rerun finishes it


HOST = "127.0.0.2"  # loopback, but not the 127.0.0.1 that Ray replaces by the network address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _ray_start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    ray_bin = Path(sys.executable).parent / "ray"
    return subprocess.Popen(
        [str(ray_bin), "start", "--block", "--disable-usage-stats", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group: the teardown ends what it started
    )


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to ``ray start --block`` stops the Ray processes it started; what survives it (a
    dashboard agent may) is in its process group and is killed with the group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _nodes_up(address: str, env: dict[str, str]) -> int:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "status", f"--address={address}"],
        capture_output=True,
        text=True,
        env=env,
    )
    return out.stdout.count(" node_") if out.returncode == 0 else 0


@pytest.mark.slow
def test_cli_on_a_two_node_cluster_at_an_address(pool_study, tmp_path):
    port, client_port = _free_port(), _free_port()
    address = f"{HOST}:{port}"
    temp = tempfile.mkdtemp(prefix="ckray", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    head_args = [f"--port={port}", f"--ray-client-server-port={client_port}", f"--temp-dir={temp}"]
    head = _ray_start(["--head", f"--node-ip-address={HOST}", "--num-cpus=1", *head_args], env)
    worker = None
    try:
        deadline = time.time() + 90
        while _nodes_up(address, env) < 1:
            assert time.time() < deadline and head.poll() is None, "the Ray head node did not start"
            time.sleep(1)
        worker = _ray_start([f"--address={address}", f"--node-ip-address={HOST}", "--num-cpus=1"], env)
        while _nodes_up(address, env) < 2:
            assert time.time() < deadline and worker.poll() is None, "the second Ray node did not join"
            time.sleep(1)
        path = write_study(tmp_path)
        cmd = [sys.executable, "-m", "contrastkit", "study", str(path), "--executor", "ray"]
        out = subprocess.run(
            [*cmd, "--address", address, "--no-progress"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"0 already finished, 4 to run (Ray tasks on {address})" in out.stdout
        root = tmp_path / "studies" / "tiny"
        assert_same_runs(root, pool_study)
        assert report_numbers(root) == report_numbers(pool_study)
    finally:
        for proc in (worker, head):
            if proc is not None:
                _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


def test_cli_unreachable_address_and_bad_options_are_clear_errors(tmp_path, capsys, monkeypatch):
    from contrastkit.cli import main

    path = write_study(tmp_path)
    port = _free_port()  # nothing listens there
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # the module's cluster may be up: ignore it
    assert (
        main(["study", str(path), "--executor", "ray", "--address", f"{HOST}:{port}", "--no-progress"]) == 2
    )
    err = capsys.readouterr().err
    assert f"error: cannot reach a Ray head node at {HOST}:{port} (" in err
    assert f"start one there with `ray start --head --port={port}`" in err
    assert main(["study", str(path), "--executor", "ray", "--ray-cpus-per-run", "-2"]) == 2
    assert "error: ray.cpus_per_run must be a number >= 0, got -2.0" in capsys.readouterr().err
    assert main(["study", str(path), "--ray-gpus-per-run", "1"]) == 2  # the pool would ignore it
    assert "error: ray option(s) ['gpus_per_run'] apply only with --executor ray" in capsys.readouterr().err
    assert not list((tmp_path / "studies").rglob("config.yaml"))  # no run started


@pytest.mark.parametrize(
    "changes,msg",
    [
        ({"cpus_per_run": -1}, r"ray.cpus_per_run must be a number >= 0"),
        ({"cpus_per_run": float("nan")}, r"ray.cpus_per_run must be a number >= 0"),
        ({"gpus_per_run": 1.5}, r"ray.gpus_per_run=1.5: Ray takes a fraction below 1"),
        ({"cpus_per_run": 0.00001}, r"to 4 decimals"),
        ({"memory_per_run": "lots"}, r"ray.memory_per_run: cannot read a memory size from 'lots'"),
        ({"memory_per_run": -5}, r"ray.memory_per_run must be a size >= 0"),
        ({"max_retries": -1}, r"ray.max_retries must be an integer >= 0"),
        ({"address": " "}, r"ray.address must be HOST:PORT"),
    ],
)
def test_bad_ray_options(tmp_path, changes, msg):
    study, _ = load_study(write_study(tmp_path))
    with pytest.raises(ConfigError, match=msg):
        with_executor(study, "ray", changes)
    with pytest.raises(ConfigError, match=msg):  # the same from the study file
        load_study(write_study(tmp_path, executor="ray", ray=changes))


def test_executor_choice_and_resource_requests(tmp_path):
    study, base = load_study(write_study(tmp_path, ray={"memory_per_run": "2GiB"}))
    assert study.executor == "pool"
    spec = plan_runs(study, base, tmp_path)[0]
    with pytest.raises(ConfigError, match=r"ray option\(s\) \['address'\] apply only with --executor ray"):
        with_executor(study, None, {"address": "127.0.0.1:6379"})
    with pytest.raises(ConfigError, match=r"--jobs 2 sizes the local process pool"):
        with_executor(study, "ray", {}, jobs=2)
    ray_study = with_executor(study, "ray", {"cpus_per_run": None, "gpus_per_run": 0.25})
    # cpus default to the run's train.threads (1 in the tiny config); memory from the study file
    assert run_resources(spec, ray_study.ray) == {"num_cpus": 1, "num_gpus": 0.25, "memory": 2 * 2**30}
    assert run_resources(spec, RayConfig(cpus_per_run=3)) == {"num_cpus": 3, "num_gpus": 0}


def test_importing_contrastkit_and_the_pool_path_do_not_import_ray():
    code = (
        "import sys, contrastkit.cli, contrastkit.studies.study, contrastkit.studies.ray_executor\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
