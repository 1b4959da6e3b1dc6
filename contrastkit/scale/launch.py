"""Spawn a local gloo process group: multi-process CPU runs for tests and experiments.

Real jobs are launched with ``torchrun`` (one process per device, any number of nodes); this helper
exists so tests can check multi-rank exactness on one CPU machine without a launcher.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from contrastkit.core.errors import ContrastkitError

__all__ = ["spawn_gloo"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gloo_worker(
    fn: Callable[..., Any],
    r: int,
    n: int,
    port: int,
    out_dir: str,
    threads: int,
    timeout_s: float,
    args: tuple,
) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", rank=r, world_size=n, timeout=timedelta(seconds=timeout_s))
        try:
            payload: dict[str, Any] = {"ok": True, "result": fn(*args)}
        finally:
            dist.destroy_process_group()
    except BaseException as err:  # reported to the parent, which re-raises
        payload = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    path = os.path.join(out_dir, f"rank{r}.pt")
    torch.save(payload, path + ".tmp")
    os.replace(path + ".tmp", path)  # the parent polls for complete files only


def spawn_gloo(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 120.0, threads: int = 1
) -> list[Any]:
    """Run ``fn(*args)`` in ``world_size`` spawned CPU processes joined in a gloo group.

    Rendezvous on ``127.0.0.1`` and a free port; each process uses ``threads`` torch threads.
    ``fn`` must be importable (module level) and return plain data: tensors, numbers, strings
    and lists/dicts of them (results travel through ``torch.save``/``torch.load(weights_only)``).
    Returns the results in rank order. If any rank raises, the others are terminated (they may
    be blocked in a collective) and :class:`ContrastkitError` reports each failed rank's traceback;
    ranks still running after ``timeout_s`` are terminated and reported likewise.
    """
    ctx = torch.multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="contrastkit-gloo-") as out_dir:
        port = _free_port()
        procs = [
            ctx.Process(
                target=_gloo_worker, args=(fn, r, world_size, port, out_dir, threads, timeout_s, args)
            )
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        payloads = _collect(procs, out_dir, timeout_s)
    errors = [f"rank {r}: {p['traceback']}" for r, p in enumerate(payloads) if p is not None and not p["ok"]]
    missing = [r for r, p in enumerate(payloads) if p is None]
    if errors or missing:
        codes = [procs[r].exitcode for r in missing]
        note = f"ranks {missing} gave no result (exit codes {codes}; killed if still running)\n"
        note = note if missing else ""
        raise ContrastkitError(
            f"spawn_gloo({getattr(fn, '__name__', fn)}) failed:\n{note}" + "\n".join(errors)
        )
    return [p["result"] for p in payloads]


def _collect(procs: list[Any], out_dir: str, timeout_s: float) -> list[dict[str, Any] | None]:
    """Wait for every rank's result file; stop early (terminating the rest) once one has failed
    or died without writing one. Missing results are ``None``."""
    payloads: list[dict[str, Any] | None] = [None] * len(procs)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(p is None for p in payloads):
        died = False
        for r, proc in enumerate(procs):
            if payloads[r] is not None:
                continue
            alive = proc.is_alive()  # before the file check: a rank writes its file, then exits
            path = os.path.join(out_dir, f"rank{r}.pt")
            if os.path.exists(path):
                payloads[r] = torch.load(path, weights_only=True)
            elif not alive:
                died = True
        if died or any(p is not None and not p["ok"] for p in payloads):
            break
        time.sleep(0.02)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
        proc.join()
    return payloads
