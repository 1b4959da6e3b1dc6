"""Progress bars: one helper, quiet for quick loops, whole lines off a terminal, three off switches."""

import numpy as np
import pytest
import torch

from contrastkit.core import progress as progress_mod
from contrastkit.core.progress import progress_bar, progress_default, progress_enabled
from contrastkit.models.cache import cached_features


@pytest.fixture
def eager(monkeypatch):
    """Bars show at once and refresh on every step (the defaults wait 2 s / 30 s)."""
    monkeypatch.setattr(progress_mod, "DELAY", 0.0)
    monkeypatch.setattr(progress_mod, "LOG_INTERVAL", 0.0)
    monkeypatch.delenv("CONTRASTKIT_PROGRESS", raising=False)


def test_off_a_terminal_every_refresh_is_one_whole_line(eager, capsys):
    assert sum(progress_bar(range(3), "load", unit="img")) == 3
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    # one line per refresh (each step here), the last again when the bar closes
    assert [line.split("|")[0] for line in lines] == ["load:   0%", "load:  33%", "load:  67%"] + 2 * [
        "load: 100%"
    ]
    assert lines[0].endswith("| 0/3 [00:00<?, ?img/s]") and "| 3/3 [00:00<00:00, " in lines[-1]
    assert all(len(line) <= 100 and line.isascii() for line in lines)  # fixed width, ASCII bar


def test_manual_bar_shows_its_postfix(eager, capsys):
    bar = progress_bar(None, "train", total=2, unit="step")
    bar.update(1)
    bar.set_postfix(loss="0.5000")
    bar.update(1)
    bar.close()
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("train: 100%") and "2/2" in last and "loss=0.5000" in last


def test_quick_loops_print_nothing(capsys, monkeypatch):
    monkeypatch.delenv("CONTRASTKIT_PROGRESS", raising=False)
    assert list(progress_bar(range(1000), "quick")) == list(range(1000))  # well under DELAY = 2 s
    assert capsys.readouterr().err == ""


def test_switches_environment_beats_argument_beats_ambient_default(monkeypatch):
    monkeypatch.delenv("CONTRASTKIT_PROGRESS", raising=False)
    assert progress_enabled() is True and progress_enabled(False) is False
    with progress_default(False):
        assert progress_enabled() is False
        assert progress_enabled(True) is True  # an explicit train.progress: true still shows
        with progress_default(None):  # None keeps the surrounding default
            assert progress_enabled() is False
        with progress_default(True):
            assert progress_enabled() is True
        assert progress_enabled() is False
    assert progress_enabled() is True
    for off in ("0", "false", "off"):
        monkeypatch.setenv("CONTRASTKIT_PROGRESS", off)
        assert progress_enabled(True) is False
    monkeypatch.setenv("CONTRASTKIT_PROGRESS", "1")
    assert progress_enabled() is True


def test_disabled_bars_still_iterate_and_count(eager, capsys):
    with progress_default(False):
        bar = progress_bar(range(4), "hidden")
        assert list(bar) == [0, 1, 2, 3]
        bar.update(0)
        bar.close()
    assert capsys.readouterr().err == ""


def test_feature_cache_shows_rows_encoded(eager, tmp_path, capsys):
    calls = []

    def compute(a: int, b: int) -> torch.Tensor:
        calls.append((a, b))
        return torch.arange(a, b, dtype=torch.float32)[:, None].repeat(1, 3)

    feats = cached_features("k", 10, compute, tmp_path, batch_size=4)
    assert calls == [(0, 4), (4, 8), (8, 10)]
    np.testing.assert_array_equal(feats[:, 0], np.arange(10, dtype=np.float32))
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("cache features (10 rows): 100%") and "10/10" in lines[-1]
    assert any(line.startswith("cache features (10 rows):  40%") for line in lines)  # 4 of 10
    cached_features("k", 10, compute, tmp_path, batch_size=4)  # cached: nothing encoded, no bar
    assert len(calls) == 3 and capsys.readouterr().err == ""


def test_train_and_eval_show_their_phases_and_no_progress_silences_them(eager, tmp_path, capsys):
    import dataclasses

    from contrastkit.cli import main
    from contrastkit.train import RunConfig, train

    cfg = RunConfig.tiny(out_dir=str(tmp_path))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=4, progress=True))
    run = train(cfg).run_dir
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("tiny: 100%") and "| 4/4 [" in err[-1] and "loss=" in err[-1]
    assert any(line.startswith("shapes/train: 100%") and "512/512" in line for line in err)

    assert main(["eval", str(run), "--splits", "test,unseen", "--tasks", "zeroshot"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("evaluate: 100%") and "| 2/2 [" in err[-1]
    assert any(line.startswith("embed images: 100%") and "| 1/1 [" in line for line in err)
    assert any(line.startswith("evaluate shapes/test: 100%") and "zeroshot]" in line for line in err)
    assert any(line.startswith("shapes/unseen: 100%") and "64/64" in line for line in err)

    assert main(["eval", str(run), "--splits", "test", "--tasks", "zeroshot", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
