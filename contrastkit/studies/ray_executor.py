"""Run a study's (setting, seed) runs as Ray tasks: ``contrastkit study FILE --executor ray``.

What: every unfinished run of :func:`contrastkit.studies.runner.plan_runs` becomes one Ray task
that calls :func:`contrastkit.studies.runner.execute_run` (train or resume, then write
``examples.npz``) with the run's resource request — ``num_cpus`` (default: the run's
``train.threads``, 1 when that is 0), ``num_gpus``, ``memory``
(:class:`~contrastkit.studies.config.RayConfig`).
The run uses as many torch threads as the CPUs it asked for (capped by ``train.threads`` and by the
node's cores). Ray starts a task when a node has those resources free, so the cluster's size, not
``--jobs``, sets how many runs train at once.

Protocol: the driver skips finished runs (``examples.npz`` exists) before submitting anything, and a
task finding its run finished returns at once. A worker process or node that dies is a system
failure: Ray reruns the task up to ``max_retries`` times (Ray's own retry, ``max_retries``), and
the rerun resumes the run from its newest checkpoint. A Python exception inside a run is not
retried (``retry_exceptions=False``): the same config and seed fail the same way again; it is
reported with its traceback, as the process pool reports it, and the other runs go on.

Exactness: a run's files do not depend on the executor — on CPU with the same thread count the
``examples.npz`` and the report's numbers equal the pool's bit for bit, and a run killed after a
checkpoint and resumed equals an uninterrupted one (tests/studies/test_ray_executor.py).

Requirements on a real cluster: every node has contrastkit (and this Python environment)
installed, and the study folder (``out_dir``) and the data are on a filesystem all nodes and the
driver share, at the same path. Ray is imported only here and only when this executor runs.

Related: :func:`contrastkit.studies.runner.run_all` (the local process pool, the default),
:func:`contrastkit.studies.study.run_study`.
"""

from __future__ import annotations

import math
import os
import socket
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from contrastkit.core.errors import ConfigError
from contrastkit.core.progress import progress_bar, progress_default
from contrastkit.studies.config import RayConfig, StudyConfig
from contrastkit.studies.runner import RunSpec, execute_run

__all__ = ["run_all_ray", "run_resources"]

RunFn = Callable[[RunSpec, StudyConfig, int], Any]


def run_resources(spec: RunSpec, options: RayConfig) -> dict[str, float | int]:
    """The Ray resource request of one run: ``num_cpus``, ``num_gpus`` and (when set) ``memory``."""
    cpus = options.cpus_per_run or spec.cfg.get("train", {}).get("threads") or 1
    request: dict[str, float | int] = {"num_cpus": cpus, "num_gpus": options.gpus_per_run}
    if options.memory_bytes:
        request["memory"] = options.memory_bytes
    return request


def _task(spec: RunSpec, study: StudyConfig, cpus: float, run: RunFn) -> tuple[str, str | None]:
    """The body of one Ray task (in a worker process, on any node): ``(name, traceback or None)``."""
    if spec.done:  # a rerun after the run finished but before its result reached the driver
        return spec.name, None
    threads = max(1, min(math.ceil(cpus), os.cpu_count() or 1))  # as many threads as CPUs reserved
    try:
        with progress_default(False):  # only the driver's study bar shows
            run(spec, study, threads)
        return spec.name, None
    except Exception:  # reported by the driver; the other runs go on
        return spec.name, traceback.format_exc()


def _check_reachable(address: str) -> None:
    """Fail at once on a ``HOST:PORT`` nothing listens on (``ray.init`` retries it for minutes)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():  # auto, ray://…: Ray resolves those itself
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise ConfigError(
            f"cannot reach a Ray head node at {address} ({err}); start one there with "
            f"`ray start --head --port={port}`, or fix --address (ray.address)"
        ) from None


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to ``address`` or start a local cluster; ``True`` when this call did either (and so
    must shut it down). An already initialised Ray (e.g. a test's or a notebook's) is used as is."""
    if ray.is_initialized():
        return False
    if address is None:  # a cluster of this machine alone: keep its traffic on the loopback address
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
    else:
        _check_reachable(address)
        ray.init(address=address)
    return True


def _check_fits(ray: Any, request: dict[str, float | int]) -> None:
    """Refuse a request no live node can hold: Ray would leave such a task pending forever."""
    names = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(node.get(names[k], 0) >= v for k, v in request.items() if v) for node in nodes):
        return
    have = [{names[k]: node.get(names[k], 0) for k in request} for node in nodes]
    raise ConfigError(
        f"no node of the Ray cluster can hold one run's request {request}; nodes have {have}. "
        "Lower --ray-cpus-per-run/--ray-gpus-per-run/--ray-memory-per-run or add a larger node"
    )


def run_all_ray(
    specs: Sequence[RunSpec], study: StudyConfig, options: RayConfig, run: RunFn = execute_run
) -> list[str]:
    """Run the unfinished specs as Ray tasks (module docstring); returns the names that failed.

    ``run(spec, study, threads)`` trains one run (default :func:`~contrastkit.studies.runner.execute_run`;
    another function, e.g. one that wraps it, must be picklable by Ray)."""
    todo = [s for s in specs if not s.done]
    where = options.address or "a local cluster"
    print(
        f"study {study.name}: {len(specs)} runs, {len(specs) - len(todo)} already finished, "
        f"{len(todo)} to run (Ray tasks on {where})"
    )
    if not todo:  # nothing to submit: do not even start Ray
        return []
    requests = {s.name: run_resources(s, options) for s in todo}
    import ray  # lazily: only this executor needs Ray

    started = _connect(ray, options.address)
    try:
        for request in {tuple(sorted(r.items())) for r in requests.values()}:
            _check_fits(ray, dict(request))
        remote = ray.remote(max_retries=options.max_retries, retry_exceptions=False)(_task)
        names = {}
        for spec in todo:
            request = requests[spec.name]
            ref = remote.options(name=f"{study.name}/{spec.name}", **request).remote(
                spec, study, request["num_cpus"], run
            )
            names[ref] = spec.name
        return _collect(ray, names, study)
    finally:
        if started:
            ray.shutdown()


def _collect(ray: Any, names: dict[Any, str], study: StudyConfig) -> list[str]:
    """Wait for every task, in the order they finish; a task Ray gave up on counts as failed."""
    failed = []
    bar = progress_bar(None, f"study {study.name}", total=len(names), unit="run")
    pending = list(names)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            name = names[ready[0]]
            try:
                _, err = ray.get(ready[0])
            except ray.exceptions.RayError as exc:  # its worker or node died more than max_retries times
                err = f"{type(exc).__name__}: {exc}"
            bar.update(1)
            if err:
                failed.append(name)
                print(f"run {name} failed:\n{err}")
    except KeyboardInterrupt:  # ^C: cancel what has not finished; finished runs stay finished
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    return failed
