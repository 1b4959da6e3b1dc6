"""Series sets: the ``.ts`` parser, fixed length (resample / pad), train-split standardisation,
captions and errors on a written toy set; BasicMotions and JapaneseVowels from the sktime wheel
(skipped when it is not installed), read without importing sktime."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.core.errors import InputError, MissingFileError, UnknownNameError
from contrastkit.data.series import SERIES_SETS, load_series, read_ts, series_dir, series_names

HAS_SKTIME = importlib.util.find_spec("sktime") is not None
needs_sktime = pytest.mark.skipif(not HAS_SKTIME, reason="sktime wheel not installed (make setup)")

HEADER = "# a toy set\n@problemName Toy\n@timeStamps false\n@univariate false\n@classLabel true b a\n@data\n"
TRAIN = [("1,2,3,4:0,0,2,2", "a"), ("5,7:1,3", "b"), ("2,2,2:4,4,4", "a")]
TEST = [("0,4:2,2", "b"), ("1,1,1,1,1:0,1,2,3,4", "a")]


def write(root: Path, rows, split: str, name: str = "Toy", header: str = HEADER) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    body = "".join(f"{x}:{y}\n" for x, y in rows)
    (root / name / f"{name}_{split}.ts").write_text(header + body)


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    write(tmp_path, TRAIN, "TRAIN")
    write(tmp_path, TEST, "TEST")
    return tmp_path


def naive_resample(row, t):
    row = np.asarray(row, dtype=float)
    return np.interp(np.linspace(0, len(row) - 1, t), np.arange(len(row)), row)


def test_resampled_set_is_standardised_with_train_statistics(toy):
    train = load_series("Toy", "train", root=toy)
    assert train.classnames == ("class b", "class a") and train.labels.tolist() == [1, 0, 1]
    assert train.lengths.tolist() == [4, 2, 3] and train.values.shape == (3, 2, 4)  # T = longest
    raw = np.stack(
        [np.stack([naive_resample(d.split(","), 4) for d in x.split(":")]) for x, _ in TRAIN]
    )  # [3, 2, 4]
    mean, std = raw.mean((0, 2)), raw.std((0, 2))
    torch.testing.assert_close(train.mean, torch.tensor(mean, dtype=torch.float32))
    want = (raw - mean[None, :, None]) / std[None, :, None]
    torch.testing.assert_close(train.values, torch.tensor(want, dtype=torch.float32))
    test = load_series("Toy", "test", root=toy)
    raw_t = np.stack([np.stack([naive_resample(d.split(","), 4) for d in x.split(":")]) for x, _ in TEST])
    torch.testing.assert_close(
        test.values, torch.tensor((raw_t - mean[None, :, None]) / std[None, :, None], dtype=torch.float32)
    )
    assert (
        test.labels.tolist() == [0, 1]
        and test.devices == ((0, 1),)
        and test.channel_names == ("dim_0", "dim_1")
    )


def test_padding_keeps_real_steps_and_zero_fills(toy):
    s = load_series("Toy", "train", root=toy, fit="pad", length=3)
    real = [[1, 2, 3], [5, 7], [2, 2, 2]], [[0, 0, 2], [1, 3], [4, 4, 4]]
    for c in range(2):
        steps = np.concatenate(real[c])
        assert abs(float(s.mean[c]) - steps.mean()) < 1e-6 and abs(float(s.std[c]) - steps.std()) < 1e-6
    assert s.values[1, :, 2].tolist() == [0.0, 0.0]  # the 2-step recording, padded
    torch.testing.assert_close(s.values[1, 0, :2], (torch.tensor([5.0, 7.0]) - s.mean[0]) / s.std[0])
    test = load_series("Toy", "test", root=toy, fit="pad", length=3)  # the 5-step one is truncated
    torch.testing.assert_close(test.values[1, 1], (torch.tensor([0.0, 1.0, 2.0]) - s.mean[1]) / s.std[1])


def test_captions_are_deterministic_and_prompts_use_other_templates(toy):
    s = load_series("Toy", "train", root=toy)
    caps = s.captions(seed=3)
    assert caps == s.captions(seed=3) and len(caps) == 3
    assert all(s.classnames[y] in c for c, y in zip(caps, s.labels.tolist()))
    assert s.captions(templates=["{}!"]) == ("class a!", "class b!", "class a!")
    assert s.prompts(["x {}"]) == [["x class b"], ["x class a"]]
    assert not set(s.eval_templates) & set(s.templates)
    with pytest.raises(InputError, match="must contain"):
        s.captions(templates=["no slot"])


def test_errors_name_the_problem(toy, tmp_path):
    with pytest.raises(UnknownNameError, match="unknown series set 'Nope'.*Toy"):
        load_series("Nope", root=toy)
    with pytest.raises(InputError, match="no split 'val'.*train.*test"):
        load_series("Toy", "val", root=toy)
    with pytest.raises(InputError, match="length must be a positive integer"):
        load_series("Toy", root=toy, length=0)
    with pytest.raises(InputError, match="fit must be"):
        load_series("Toy", root=toy, fit="crop")  # type: ignore[arg-type]
    bad = tmp_path / "bad"
    write(bad, [("1,?,3", "a")], "TRAIN", "Miss", header=HEADER)
    with pytest.raises(InputError, match="missing values"):
        read_ts(bad / "Miss" / "Miss_TRAIN.ts")
    write(bad, [("1,2", "c")], "TRAIN", "Lab")
    with pytest.raises(InputError, match=r"labels \['c'\] are not in @classLabel"):
        read_ts(bad / "Lab" / "Lab_TRAIN.ts")
    write(bad, [("1,2", "0.5")], "TRAIN", "Reg", header="@problemName Reg\n@targetLabel true\n@data\n")
    with pytest.raises(InputError, match="not a classification set"):
        read_ts(bad / "Reg" / "Reg_TRAIN.ts")


def test_environment_override_and_missing_folder(toy, monkeypatch):
    monkeypatch.setenv("CONTRASTKIT_SERIES_DIR", str(toy))
    assert series_dir() == toy and series_names() == ["Toy"]
    monkeypatch.setenv("CONTRASTKIT_SERIES_DIR", str(toy / "absent"))
    with pytest.raises(MissingFileError, match="not a folder"):
        series_dir()


@needs_sktime
def test_basic_motions_from_the_wheel_without_importing_sktime():
    sys.modules.pop("sktime", None)  # nothing in contrastkit imports it; make sure of a clean start
    s = load_series("BasicMotions", "test")
    assert tuple(s.values.shape) == (40, 6, 100)
    assert "sktime" not in sys.modules  # found with find_spec, read as text: no sktime code ran
    assert {"BasicMotions", "JapaneseVowels"} <= set(series_names()) <= set(SERIES_SETS)


@needs_sktime
def test_basic_motions_classes_devices_and_standardisation():
    train, test = load_series("BasicMotions", "train"), load_series("BasicMotions", "test")
    assert train.classnames == ("standing still", "running", "walking", "playing badminton")
    assert train.devices == ((0, 1, 2), (3, 4, 5)) and train.device_names == ("accelerometer", "gyroscope")
    assert train.values.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert np.bincount(train.labels.numpy()).tolist() == [10, 10, 10, 10]
    raw, _, _ = read_ts(series_dir() / "BasicMotions" / "BasicMotions_TRAIN.ts")
    x = np.stack(raw)  # float64 [40, 6, 100]
    mean, std = x.mean((0, 2)), x.std((0, 2))
    torch.testing.assert_close(train.mean, torch.tensor(mean, dtype=torch.float32))
    raw_t, _, _ = read_ts(series_dir() / "BasicMotions" / "BasicMotions_TEST.ts")
    want = (np.stack(raw_t) - mean[None, :, None]) / std[None, :, None]
    torch.testing.assert_close(test.values, torch.tensor(want, dtype=torch.float32))
    torch.testing.assert_close(train.values.mean((0, 2)), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.values.std((0, 2), correction=0), torch.ones(6), atol=1e-5, rtol=0)
    assert train.device_values(1).shape == (40, 3, 100)
    assert train.captions(0)[0] in {t.format("standing still") for t in train.templates}


@needs_sktime
def test_japanese_vowels_are_resampled_to_29_steps():
    s = load_series("JapaneseVowels", "train")
    assert s.values.shape == (270, 12, 29) and s.classnames[0] == "speaker 1"
    assert int(s.lengths.min()) == 7 and int(s.lengths.max()) == 26 and s.devices == (tuple(range(12)),)
    assert int(load_series("JapaneseVowels", "test").lengths.max()) == 29  # T = the archive's longest
    raw, _, _ = read_ts(series_dir() / "JapaneseVowels" / "JapaneseVowels_TRAIN.ts")
    i = int(s.lengths.argmin())
    want = (naive_resample(raw[i][0], 29) - float(s.mean[0])) / float(s.std[0])
    torch.testing.assert_close(s.values[i, 0], torch.tensor(want, dtype=torch.float32))
