"""Spoken captions: espeak-ng synthesis, its cache, resampling and features (contrastkit.data.speech)."""

from __future__ import annotations

import dataclasses
import shutil
import warnings

import numpy as np
import pytest
import torch

from contrastkit.core.config import from_dict
from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.data import speech
from contrastkit.data.audio_features import MelConfig, log_mel
from contrastkit.data.speech import SpeechConfig, Variant, distinct_speech_features, speak, speech_features

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (make speech)"
)
TEXTS = [
    "a red circle",
    "-5 large blue squares",
    "a red circle",
]  # a repeat; a text that looks like an option
VARIANTS = (Variant("en-us", 175, 50), Variant("en-gb+f3", 130, 70))


def _cfg(tmp_path, **kw) -> SpeechConfig:
    return SpeechConfig(cache_dir=str(tmp_path / "speech"), **kw)


def test_config_validation_and_variants():
    cfg = SpeechConfig(voices=("en-us", "en-gb"), speeds=(140, 200), pitches=(50,))
    assert cfg.variants() == (
        Variant("en-us", 140, 50),
        Variant("en-us", 200, 50),
        Variant("en-gb", 140, 50),
        Variant("en-gb", 200, 50),
    )
    assert cfg.max_frames == 401  # 4 s at a 10 ms hop
    parsed = from_dict(SpeechConfig, {"voices": ["en-029"], "speeds": [210], "mel": {"n_mels": 64}})
    assert parsed.voices == ("en-029",) and parsed.mel == MelConfig(n_mels=64)
    for bad, match in (
        ({"speeds": (60,)}, "80, 450"),
        ({"pitches": (100,)}, r"\[0, 99\]"),
        ({"voices": ()}, "non-empty"),
        ({"voices": ("en-us", "en-us")}, "repeats"),
        ({"voices": ("-w /tmp/x",)}, "voice name"),
        ({"sample_rate": 16000, "mel": MelConfig(fmax=9000)}, "Nyquist"),
        ({"max_seconds": 0}, "max_seconds"),
        ({"workers": 0}, "workers"),
    ):
        with pytest.raises(ConfigError, match=match):
            SpeechConfig(**bad)
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(SpeechConfig, {"voice": ["en-us"]})


def test_missing_espeak_names_the_make_target(monkeypatch, tmp_path):
    monkeypatch.setattr(speech, "ESPEAK", "espeak-ng-not-installed-here")
    speech.espeak_version.cache_clear()
    speech.espeak_voices.cache_clear()
    try:
        with pytest.raises(MissingFileError, match="make speech"):
            speak(["hello"], _cfg(tmp_path))
    finally:
        speech.espeak_version.cache_clear()
        speech.espeak_voices.cache_clear()


def test_parse_streamed_wav():
    pcm = np.array([0, 1, -2, 32767, -32768], dtype="<i2")
    fmt = (16).to_bytes(4, "little") + bytes.fromhex("0100 0100 2256 0000 44ac 0000 0200 1000")
    # espeak-ng --stdout cannot seek back: RIFF and data sizes are placeholders
    data = (
        b"RIFF"
        + b"\x24\xf0\xff\x7f"
        + b"WAVE"
        + b"fmt "
        + fmt
        + b"data"
        + b"\x00\xf0\xff\x7f"
        + pcm.tobytes()
    )
    rate, got = speech._parse_wav(data)
    assert rate == 22050 and np.array_equal(got, pcm)
    with pytest.raises(InputError, match="WAV"):
        speech._parse_wav(b"Error: no voice")


@needs_espeak
def test_synthesis_cached_deterministic_and_resampled(tmp_path, monkeypatch):
    from scipy.signal import resample_poly

    cfg = _cfg(tmp_path)
    raw = [speech.synthesize(t, v) for t in TEXTS[:2] for v in VARIANTS]
    again = [speech.synthesize(t, v) for t in TEXTS[:2] for v in VARIANTS]
    assert all(r == 22050 and np.array_equal(a, b) for (r, a), (_, b) in zip(raw, again))  # byte-identical
    first = speak(TEXTS, cfg, VARIANTS)
    files = sorted((tmp_path / "speech").rglob("*"))
    wavs = [f for f in files if f.suffix == ".wav"]
    assert len(wavs) == 4 and not [f for f in files if f.suffix == ".tmp"]  # distinct texts once each
    for (_, pcm), wave in zip(raw, [w for row in first[:2] for w in row]):
        expect = resample_poly(pcm / 32768.0, 320, 441).astype(np.float32)  # 22050 → 16000
        assert wave.dtype == np.float32 and np.array_equal(wave, expect)
    assert all(np.array_equal(a, b) for a, b in zip(first[0], first[2]))  # the repeated text

    def fail(*args):
        raise AssertionError("synthesised although cached")

    monkeypatch.setattr(speech, "synthesize", fail)
    second = speak(TEXTS, cfg, VARIANTS)
    assert all(np.array_equal(a, b) for r, s in zip(first, second) for a, b in zip(r, s))
    feats, _ = distinct_speech_features(TEXTS, cfg, VARIANTS)  # computes and caches the features
    monkeypatch.setattr(speech, "_features", fail)
    again, _ = distinct_speech_features(TEXTS, cfg, VARIANTS)  # from the feature cache
    assert torch.equal(again, feats)
    assert not list((tmp_path / "speech").rglob("*.tmp"))


@needs_espeak
def test_variants_differ_and_workers_agree(tmp_path):
    variants = [Variant("en-us", 175, 50), Variant("en-us", 120, 50), Variant("en-us", 175, 20)]
    variants.append(Variant("en-gb-scotland", 175, 50))
    one = speak(["a small green triangle", "a purple star"], _cfg(tmp_path / "a", workers=1), variants)
    three = speak(["a small green triangle", "a purple star"], _cfg(tmp_path / "b", workers=3), variants)
    assert all(np.array_equal(a, b) for r, s in zip(one, three) for a, b in zip(r, s))
    row = one[0]
    assert len(row[1]) > 1.3 * len(row[0])  # 120 words/min is slower than 175
    for i in range(len(row)):
        for j in range(i + 1, len(row)):
            n = min(len(row[i]), len(row[j]))
            assert not np.array_equal(row[i][:n], row[j][:n]), (variants[i], variants[j])


@needs_espeak
def test_features_shape_index_and_equal_to_log_mel(tmp_path):
    cfg = _cfg(tmp_path, max_seconds=3.0)
    feats, index = distinct_speech_features(TEXTS, cfg, VARIANTS)
    assert feats.shape == (2, 2, 40, cfg.max_frames) and feats.dtype == torch.float32
    assert index.tolist() == [0, 1, 0]
    full = speech_features(TEXTS, cfg, VARIANTS)
    assert full.shape == (3, 2, 40, 301) and torch.equal(full[0], full[2]) and torch.equal(full[1], feats[1])
    assert len(list((tmp_path / "speech" / "features").glob("*.npy"))) == 1
    fresh, _ = distinct_speech_features(TEXTS, dataclasses.replace(cfg, cache_features=False), VARIANTS)
    assert torch.equal(fresh, feats)  # cached features = features recomputed from the cached clips
    wave = speak(TEXTS[1:2], cfg, VARIANTS[1:])[0][0]
    ref = log_mel(torch.from_numpy(wave), 16000, max_frames=301)  # float32, as the batch
    assert torch.equal(full[1, 1], ref)
    assert not torch.equal(full[0, 0], full[0, 1])


@needs_espeak
def test_long_clips_are_cropped_with_a_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (wave,) = speak(
            ["a large purple triangle to the right of a large orange triangle"],
            _cfg(tmp_path, max_seconds=0.5),
        )[0]
    assert len(wave) == 8000
    assert any("1 of 1 spoken clips are longer than max_seconds=0.5" in str(w.message) for w in caught)


@needs_espeak
def test_bad_input_errors(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(InputError, match="text 1 is empty"):
        speak(["a red circle", "  "], cfg)
    with pytest.raises(InputError, match="list of strings"):
        speak("a red circle", cfg)
    with pytest.raises(InputError, match="unknown espeak-ng voice 'en-sc'.*en-gb-scotland"):
        speak(["hello"], _cfg(tmp_path, voices=("en-sc",)))
    with pytest.raises(InputError, match="unknown espeak-ng voice variant 'nobody'"):
        speak(["hello"], cfg, [Variant("en-us+nobody", 175, 50)])
    with pytest.raises(ConfigError, match="pitches"):
        speak(["hello"], cfg, [Variant("en-us", 175, 120)])
    assert not (tmp_path / "speech").exists() or not list((tmp_path / "speech").rglob("*.wav"))
