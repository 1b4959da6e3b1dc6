"""Bad input on the command line: exit code 2 and one ``error:`` line naming the key and value, never a
traceback, and no run folder made for a config that cannot run."""

import os
import pickle
import time
from pathlib import Path

import pytest
import torch

from contrastkit.cli import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shapes-clip.yaml"


def _train(tmp_path: Path, *sets: str) -> int:
    tiny = [
        "train.steps=1",
        "train.batch_size=8",
        "train.threads=1",
        "train.progress=false",
        "train.tensorboard=false",
        "data.splits.train.n=64",
        "data.splits.test.n=16",
        "data.splits.unseen.n=16",
        f"out_dir={tmp_path / 'runs'}",
    ]
    argv = ["train", "--config", str(CONFIG)]
    for item in (*tiny, *sets):
        argv += ["--set", item]
    return main(argv)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.seed=-1", "train.seed must be an integer in [0, 2**32 - 1 = 4294967295], got -1"),
        (f"train.seed={2**70}", f"train.seed must be an integer in [0, 2**32 - 1 = 4294967295], got {2**70}"),
        ("optim.lr=1e300", "optim.lr must be > 0 and <= 10 (a finite step size), got 1e+300"),
        ("optim.lr=.inf", "optim.lr must be > 0 and <= 10 (a finite step size), got inf"),
        ("optim.eps=-1", "optim.eps must be > 0 and <= 1, got -1.0"),
        ("guard.spike_warmup=-5", "guard.spike_warmup must be >= 0, got -5"),
        ("train.threads=100000", "train.threads=100000 is more than the"),
        ("train.device=gpu", "train.device='gpu' is not a device"),
    ],
)
def test_bad_values_are_one_line(tmp_path, capsys, override, expected):
    t0 = time.perf_counter()
    assert _train(tmp_path, override) == 2
    assert time.perf_counter() - t0 < 5
    assert expected in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _train(tmp_path, "train.device=cuda") == 2
    line = _one_error_line(capsys)
    assert "train.device=cuda but torch.cuda.is_available() is False (no GPU / CPU-only torch)" in line
    assert not (tmp_path / "runs").exists()


def test_threads_above_the_cores(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert _train(tmp_path, "train.threads=3") == 2
    assert "train.threads=3 is more than the 2 cores of this machine" in _one_error_line(capsys)
    assert main(["demo", "--threads", "3"]) == 2
    assert "--threads=3 is more than the 2 cores" in _one_error_line(capsys)


def test_out_dir_that_is_a_file_or_unwritable(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert _train(tmp_path, f"out_dir={tmp_path / 'file'}") == 2
    assert f"out_dir {tmp_path / 'file'} is a file, not a folder" in _one_error_line(capsys)
    assert _train(tmp_path, f"out_dir={tmp_path / 'file' / 'runs'}") == 2
    assert f"{tmp_path / 'file'} is a file, not a folder" in _one_error_line(capsys)
    if os.path.isdir("/proc/self"):
        assert _train(tmp_path, "out_dir=/proc/contrastkit-test") == 2
        assert "out_dir /proc/contrastkit-test is not a writable folder" in _one_error_line(capsys)


@pytest.mark.parametrize("size", ["0", "-3"])
def test_eval_batch_size_is_checked_first(tmp_path, capsys, size):
    t0 = time.perf_counter()
    assert main(["eval", str(tmp_path / "nope"), "--batch-size", size]) == 2
    assert time.perf_counter() - t0 < 1
    assert f"--batch-size must be >= 1, got {size}" in _one_error_line(capsys)


def test_eval_api_checks_batch_size(tmp_path):
    from contrastkit.core.errors import InputError
    from contrastkit.evaluation.report import evaluate_model, evaluate_run

    with pytest.raises(InputError, match="batch_size must be an integer >= 1, got 0"):
        evaluate_model(tmp_path / "nope", batch_size=0)
    with pytest.raises(InputError, match="batch_size must be an integer >= 1, got -1"):
        evaluate_run(tmp_path / "nope", batch_size=-1)


class _Payload:
    """Not a tensor: a pickle that would run code on a full load."""


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_refused_pickle_is_one_line(tmp_path, capsys):
    weights = tmp_path / "model.pth"
    with open(weights, "wb") as f:
        pickle.dump({"weight": _Payload()}, f)
    tower = "model.towers.image.params={arch: resnet18, weights: " + str(weights) + "}"
    assert _train(tmp_path, "model.towers.image.name=timm_pretrained", tower) == 2
    line = _one_error_line(capsys)
    assert f"refusing {weights}: it is a pickle that cannot be loaded safely" in line
    assert "If you trust the file, convert it to safetensors where you trust it" in line
    assert "st.save_file(torch.load(" in line and "model.safetensors" in line
    assert "will likely succeed" not in line  # torch's own advice is not repeated


def test_corrupt_safetensors_is_one_line(tmp_path):
    from contrastkit.core.errors import InputError
    from contrastkit.models import load_weights

    (tmp_path / "w.safetensors").write_bytes(b"junk" * 4)
    with pytest.raises(InputError, match="not a valid safetensors file"):
        load_weights(tmp_path / "w.safetensors")
    (tmp_path / "w.pt").write_bytes(b"junk" * 4)
    with pytest.raises(InputError, match="not a PyTorch weights file"):
        load_weights(tmp_path / "w.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(InputError, match="empty or truncated"):
        load_weights(tmp_path / "empty.pt")
