"""Log-mel features against a naive float64 reference: explicit DFT, power, triangular filters by loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contrastkit.core.config import from_dict
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.audio_features import MelConfig, hz_to_mel, log_mel, mel_filterbank, mel_to_hz


def _naive_log_mel(x, sr, n_fft, hop, n_mels, fmin, fmax, eps):
    """The module docstring's formula, one frame, bin and filter at a time."""
    fmax = sr / 2 if fmax is None else fmax
    xp = np.concatenate([np.zeros(n_fft // 2), x, np.zeros(n_fft // 2)])
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * math.pi * n / n_fft)
    frames = 1 + len(x) // hop
    power = np.zeros((n_fft // 2 + 1, frames))
    for t in range(frames):
        seg = xp[t * hop : t * hop + n_fft] * window
        for k in range(n_fft // 2 + 1):
            z = np.sum(seg * np.exp(-2j * math.pi * k * n / n_fft))
            power[k, t] = z.real**2 + z.imag**2
    mel = lambda f: 2595 * math.log10(1 + f / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    lo, hi = mel(fmin), mel(fmax)
    points = [hz(lo + j * (hi - lo) / (n_mels + 1)) for j in range(n_mels + 2)]
    bank = np.zeros((n_fft // 2 + 1, n_mels))
    for j in range(n_mels):
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            up = (f - points[j]) / (points[j + 1] - points[j])
            down = (points[j + 2] - f) / (points[j + 2] - points[j + 1])
            bank[k, j] = max(0.0, min(up, down))
    return np.log(bank.T @ power + eps)


@pytest.mark.parametrize(
    "sr, n_fft, hop, n_mels, fmin, fmax, samples",
    [
        (16000, 400, 160, 40, 0.0, None, 1234),
        (8000, 256, 100, 16, 50.0, 3500.0, 777),
        (16000, 64, 64, 8, 0.0, None, 10),
    ],
)
def test_log_mel_equals_naive_formula(sr, n_fft, hop, n_mels, fmin, fmax, samples):
    rng = np.random.default_rng(samples)
    x = rng.standard_normal(samples) * 0.3
    ref = _naive_log_mel(x, sr, n_fft, hop, n_mels, fmin, fmax, 1e-6)
    got = log_mel(torch.from_numpy(x), sr, n_fft, hop, n_mels, fmin, fmax, 1e-6).numpy()
    assert got.shape == ref.shape == (n_mels, 1 + samples // hop)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)


def test_filterbank_shape_and_triangles():
    bank = mel_filterbank(201, 16000, 40)
    assert bank.shape == (201, 40) and bank.dtype == torch.float64
    assert (bank >= 0).all() and (bank <= 1).all()
    assert (bank.sum(0) > 0).all()  # no empty filter at these settings
    f = torch.tensor([0.0, 700.0, 4000.0], dtype=torch.float64)
    assert torch.allclose(mel_to_hz(hz_to_mel(f)), f, rtol=1e-12, atol=1e-9)
    assert abs(float(hz_to_mel(torch.tensor(700.0, dtype=torch.float64))) - 2595 * math.log10(2)) < 1e-9
    with pytest.raises(InputError, match="fmax"):
        mel_filterbank(201, 16000, 40, fmax=9000)


def test_max_frames_pads_with_silence_and_crops():
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(1600) * 0.3)  # 0.1 s: 11 frames
    full = log_mel(x, 16000)
    assert full.shape == (40, 11)
    padded = log_mel(x, 16000, max_frames=30)
    assert padded.shape == (40, 30)
    torch.testing.assert_close(padded[:, :11], full, rtol=1e-12, atol=1e-12)  # the clip's own frames
    assert (padded[:, 13:] == math.log(1e-6)).all()  # frames past the clip's last samples: silence
    cropped = log_mel(x, 16000, max_frames=5)
    assert cropped.shape == (40, 5)
    # frames that see only the first 640 samples (frame t: samples [160 t − 200, 160 t + 200))
    torch.testing.assert_close(cropped[:, :3], full[:, :3], rtol=1e-12, atol=1e-12)


def test_leading_dimensions_and_dtype():
    x = torch.randn(2, 3, 800, dtype=torch.float32)
    out = log_mel(x, 16000, n_mels=20, max_frames=7)
    assert out.shape == (2, 3, 20, 7) and out.dtype == torch.float32
    torch.testing.assert_close(out[1, 2], log_mel(x[1, 2], 16000, n_mels=20, max_frames=7))


def test_bad_inputs():
    with pytest.raises(InputError, match="float"):
        log_mel(torch.zeros(100, dtype=torch.int16), 16000)
    with pytest.raises(InputError, match="even n_fft"):
        log_mel(torch.zeros(100), 16000, n_fft=401)
    with pytest.raises(InputError, match="max_frames"):
        log_mel(torch.zeros(100), 16000, max_frames=0)
    with pytest.raises(InputError, match="empty"):
        log_mel(torch.zeros(0, 100), 16000)


def test_mel_config():
    assert MelConfig().frames_for(4.0, 16000) == 401
    assert MelConfig(max_frames=128).frames_for(4.0, 16000) == 128
    assert from_dict(MelConfig, {"n_mels": 64, "fmax": 7600}).fmax == 7600.0
    for bad in ({"n_fft": 401}, {"hop": 0}, {"fmin": 100, "fmax": 50}, {"eps": 0}, {"max_frames": 0}):
        with pytest.raises(ConfigError):
            MelConfig(**bad)
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(MelConfig, {"n_mel": 40})
