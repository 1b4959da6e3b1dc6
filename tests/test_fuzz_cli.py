"""Fuzzing the command line: random config overrides and damaged config files end either in a
successful run or in exit code 2 with one `error:` line — never a traceback, never a hang.

A seeded generator draws each case, so failures reproduce (the case is in the assertion message).
The default suite runs FAST_CASES cases in-process through ``contrastkit.cli.main``; the slow
marker runs SLOW_CASES more.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from contrastkit.cli import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shapes-clip.yaml"
FAST_CASES, SLOW_CASES = 120, 1500
SECONDS_PER_CASE = 30.0
# a run that takes one step on 32 tiny images when the fuzzed values are harmless
SMALL = [
    "train.steps=1",
    "train.batch_size=8",
    "train.threads=1",
    "train.progress=false",
    "train.tensorboard=false",
    "train.ckpt_every=1",
    "data.splits.train.n=32",
    "data.splits.val.n=8",
    "data.splits.test.n=8",
    "data.splits.unseen.n=8",
]
VALUES = [
    "-1",
    "0",
    "1",
    "2",
    "3",
    "0.5",
    "1e300",
    "-1e300",
    "2e70",
    ".nan",
    ".inf",
    "-.inf",
    "abc",
    "''",
    "null",
    "[]",
    "{}",
    "[-1, 0]",
    "[0, 0, 0, 0]",
    "[1, 2]",
    "true",
    "false",
    "'../x'",
    "x" * 300,
    "{a: 1}",
    "[[[[[[[[]]]]]]]]",
    "max",
    "mean",
    "cls",
    "cuda",
    "cpu",
    "'{}'",
    "0.0",
    "7",
]
EXTRA_KEYS = [
    "loss.params.init_temperature",
    "loss.params.init_bias",
    "loss.name",
    "model.towers.text.params.heads",
    "model.towers.text.params.hidden_size",
    "model.towers.text.params.dropout",
    "model.towers.text.params.pooling",
    "model.towers.image.params.kwargs.layers",
    "model.towers.image.params.kwargs.channels",
    "model.towers.image.params.arch",
    "data.params.image_size",
    "data.name",
    "data.views",
    "data.label_task",
    "scale.tile_size",
    "scale.chunk_size",
    "scale.dist_loss",
    "scale.keep_chunks",
    "scale.partial_chunks",
    "scale.graph_memory",
    "train.compile",
    "train.channels_last",
    "train.auto_resume",
    "train.dist_wrapper",
    "optim.impl",
    "name",
    "out_dir",
    "unknown.key",
    "train.stpes",
    "data.image.size",
    "data.max_skip_fraction",
    "model.momentum",
    "model.momentum.start",
    "loss.terms",
    "train.modulation",
    "train.modulation.alpha",
    "model.teacher",
    "model.towers.text.prompt",
    "model.towers.text.prompt.n_ctx",
    "data.text_views",
    "data.text_views.templates",
    "data.jigsaw",
    "data.jigsaw.grid",
    "model.previous",
    "continual",
    "continual.method",
    "continual.stages",
]


def _leaves(node: object, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _leaves(v, f"{prefix}{key}.")]
    return [prefix[:-1]]


KEYS = sorted(set(_leaves(yaml.safe_load(CONFIG.read_text()))) | set(EXTRA_KEYS))


def _override_case(rng: np.random.Generator) -> list[str]:
    picks = rng.choice(len(KEYS), size=int(rng.integers(1, 3)), replace=False)
    return [f"{KEYS[i]}={VALUES[int(rng.integers(len(VALUES)))]}" for i in picks]


def _damaged_file(rng: np.random.Generator, path: Path) -> None:
    """The config with one random edit: bytes flipped, a line duplicated or dropped, junk inserted."""
    text = CONFIG.read_bytes()
    lines = text.split(b"\n")
    kind = int(rng.integers(5))
    i = int(rng.integers(len(lines)))
    if kind == 0:
        pos = int(rng.integers(len(text)))
        text = text[:pos] + bytes([int(rng.integers(256))]) + text[pos + 1 :]
    elif kind == 1:
        text = b"\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])
    elif kind == 2:
        text = b"\n".join(lines[:i] + lines[i + 1 :])
    elif kind == 3:
        junk = [b"  : :", b"- [", b"\t", b"&a [*a]", b"key: value: other", b"!!python/object:os.system {}"]
        text = b"\n".join([*lines[:i], junk[int(rng.integers(len(junk)))], *lines[i:]])
    else:
        text = text[: int(rng.integers(len(text)))]
    path.write_bytes(text)


def _run(args: list[str], capsys) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    try:
        rc = main(args)
    except SystemExit as stop:  # argparse exits with 2 on a malformed command line
        rc = stop.code if isinstance(stop.code, int) else 2
    rc = 0 if rc is None else rc
    return rc, capsys.readouterr().err, time.perf_counter() - t0


def _check(case: str, rc: int, err: str, seconds: float) -> None:
    assert "Traceback" not in err, f"{case}: traceback\n{err[-2000:]}"
    assert seconds < SECONDS_PER_CASE, f"{case}: took {seconds:.1f} s"
    if rc == 0:
        return
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    error_lines = [ln for ln in lines if ln.startswith("error:") or ": error:" in ln]
    assert rc == 2 and len(error_lines) == 1, f"{case}: rc={rc}\n{err[-2000:]}"


def _fuzz(n: int, seed: int, tmp_path: Path, capsys) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    outcomes = {"ok": 0, "error": 0}
    for k in range(n):
        out = tmp_path / f"case{k}"
        if rng.random() < 0.75:
            fuzzed = _override_case(rng)
            args = ["train", "--config", str(CONFIG)]
            for item in [*SMALL, f"out_dir={out}", *fuzzed]:
                args += ["--set", item]
            case = f"case {k}: --set {' --set '.join(fuzzed)}"
        else:
            cfg = tmp_path / f"case{k}.yaml"
            _damaged_file(rng, cfg)
            args = [
                "train",
                "--config",
                str(cfg),
                *[a for s in [*SMALL, f"out_dir={out}"] for a in ("--set", s)],
            ]
            case = f"case {k}: damaged file {cfg}"
        rc, err, seconds = _run(args, capsys)
        _check(case, rc, err, seconds)
        outcomes["ok" if rc == 0 else "error"] += 1
    print(f"fuzz seed {seed}: {n} cases, {outcomes['ok']} runs, {outcomes['error']} one-line errors")
    return outcomes


def test_fuzzed_overrides_and_files_never_end_in_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fuzzed relative out_dir ("1e300", "{}") lands here, not in the checkout
    outcomes = _fuzz(FAST_CASES, seed=0, tmp_path=tmp_path, capsys=capsys)
    assert outcomes["error"] > FAST_CASES // 3 and outcomes["ok"] > 5  # both paths were exercised


@pytest.mark.slow
def test_fuzz_many_more_cases(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outcomes = _fuzz(SLOW_CASES, seed=1, tmp_path=tmp_path, capsys=capsys)
    assert outcomes["error"] + outcomes["ok"] == SLOW_CASES
