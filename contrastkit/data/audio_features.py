"""Log-mel features: waveforms ``[.., S]`` → ``[.., n_mels, T]`` with a fixed number of frames.

What: the input of the audio towers (:mod:`contrastkit.models.audio`), computed from spoken
captions (:mod:`contrastkit.data.speech`) or any mono waveform.

Formula (HTK mel scale, triangular filters without area normalisation — torchaudio's
``melscale_fbanks(norm=None, mel_scale="htk")``)::

    mel(f) = 2595 · log10(1 + f / 700)            f(m) = 700 · (10^(m / 2595) − 1)
    p_j = f(mel(fmin) + j · (mel(fmax) − mel(fmin)) / (n_mels + 1)),   j = 0 … n_mels + 1
    f_k = k · sample_rate / n_fft,   k = 0 … n_fft / 2
    W[k, j] = max(0, min((f_k − p_j) / (p_{j+1} − p_j), (p_{j+2} − f_k) / (p_{j+2} − p_{j+1})))
    X[t, k] = Σ_n x̃[t · hop + n] · w[n] · e^{−2πi k n / n_fft}     w[n] = 0.5 − 0.5 cos(2π n / n_fft)
    out[j, t] = log(Σ_k |X[t, k]|² · W[k, j] + eps)

with an even ``n_fft``, where ``x̃`` is the waveform with ``n_fft // 2`` zeros on each side
(``center``, constant padding: silence, unlike torchaudio's default reflection) and ``w`` the
periodic Hann window. ``T = 1 + S // hop``. With ``max_frames`` the waveform is first zero-padded
or cropped to ``(max_frames − 1) · hop`` samples, so ``T = max_frames`` exactly: a padded clip's
first ``1 + S // hop`` frames are exactly its unpadded frames, and the frames after them see its
last samples then silence (``log(eps)``).

Exactness: equal to a naive float64 DFT-and-loop reference to 1e-6 relative (tests); the
computation runs in the input's dtype (``torch.stft``). Related: :mod:`contrastkit.data.speech`,
:mod:`contrastkit.models.audio`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from contrastkit.core.errors import ConfigError, InputError

__all__ = ["MelConfig", "hz_to_mel", "log_mel", "mel_filterbank", "mel_to_hz"]


@dataclass(frozen=True)
class MelConfig:
    """Log-mel settings (``speech.mel``). Defaults: 25 ms windows every 10 ms at 16 kHz, 40 HTK
    mel bands from 0 to 8 kHz; ``fmax: null`` is the Nyquist frequency; ``max_frames: null`` fits
    ``max_seconds`` of the speech config (``1 + max_seconds · sample_rate // hop``)."""

    n_fft: int = 400
    hop: int = 160
    n_mels: int = 40
    fmin: float = 0.0
    fmax: float | None = None
    eps: float = 1e-6
    max_frames: int | None = None

    def __post_init__(self) -> None:
        for name in ("n_fft", "hop", "n_mels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"speech.mel.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_fft % 2 or self.hop > self.n_fft:
            raise ConfigError(
                f"speech.mel: need an even n_fft and hop <= n_fft, got {self.n_fft}, {self.hop}"
            )
        if self.fmin < 0 or (self.fmax is not None and self.fmin >= self.fmax):
            raise ConfigError(f"speech.mel: need 0 <= fmin < fmax, got {self.fmin}, {self.fmax}")
        if not self.eps > 0:
            raise ConfigError(f"speech.mel.eps must be > 0, got {self.eps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"speech.mel.max_frames must be >= 1 or null, got {self.max_frames}")

    def frames_for(self, seconds: float, sample_rate: int) -> int:
        """``max_frames``, or the frames of ``seconds`` of audio if it is null."""
        if self.max_frames is not None:
            return self.max_frames
        return 1 + math.floor(seconds * sample_rate) // self.hop


def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """HTK mel scale: ``2595 · log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`: ``700 · (10^(m / 2595) − 1)``."""
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int,
    sample_rate: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Triangular HTK filters ``W [n_freqs, n_mels]`` over the FFT bins ``k · sample_rate /
    (2 (n_freqs − 1))`` (formula in the module docstring)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise InputError(f"need 0 <= fmin < fmax <= sample_rate / 2, got {fmin}, {fmax}, {sample_rate}")
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    lo, hi = (
        hz_to_mel(torch.tensor(fmin, dtype=torch.float64)),
        hz_to_mel(torch.tensor(fmax, dtype=torch.float64)),
    )
    points = mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64))
    left, centre, right = points[:-2], points[1:-1], points[2:]
    f = freqs[:, None]
    up = (f - left) / (centre - left)
    down = (right - f) / (right - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(dtype)


def log_mel(
    wave: torch.Tensor,
    sample_rate: int,
    n_fft: int = 400,
    hop: int = 160,
    n_mels: int = 40,
    fmin: float = 0.0,
    fmax: float | None = None,
    eps: float = 1e-6,
    max_frames: int | None = None,
) -> torch.Tensor:
    """Log-mel features ``[.., n_mels, T]`` of float waveforms ``[.., S]`` (module docstring);
    ``T = max_frames`` if given (zero-pad or crop the waveform), else ``1 + S // hop``."""
    if not isinstance(wave, torch.Tensor) or not wave.is_floating_point() or wave.ndim < 1:
        raise InputError(f"wave must be a float tensor [.., S], got {getattr(wave, 'dtype', type(wave))}")
    if n_fft < 2 or n_fft % 2 or not 1 <= hop <= n_fft or n_mels < 1:
        raise InputError(
            f"need an even n_fft >= 2, 1 <= hop <= n_fft, n_mels >= 1; got {n_fft}, {hop}, {n_mels}"
        )
    if not eps > 0:
        raise InputError(f"eps must be > 0, got {eps}")
    if max_frames is not None:
        if max_frames < 1:
            raise InputError(f"max_frames must be >= 1, got {max_frames}")
        length = (max_frames - 1) * hop
        wave = wave[..., :length]
        wave = torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))
    lead, samples = wave.shape[:-1], wave.shape[-1]
    flat = wave.reshape(-1, samples)
    if flat.shape[0] == 0:
        raise InputError("empty batch of waveforms")
    # center=True pads n_fft // 2 zeros each side ourselves: torch.stft's constant pad mode would
    # do the same, but padding first also makes a clip shorter than n_fft // 2 legal
    flat = torch.nn.functional.pad(flat, (n_fft // 2, n_fft // 2))
    window = torch.hann_window(n_fft, periodic=True, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(flat, n_fft, hop, n_fft, window, center=False, return_complex=True)
    power = spec.real.square() + spec.imag.square()  # [B, n_fft // 2 + 1, T]
    bank = mel_filterbank(n_fft // 2 + 1, sample_rate, n_mels, fmin, fmax, wave.dtype).to(wave.device)
    mel = torch.einsum("bkt,km->bmt", power, bank)
    return torch.log(mel + eps).reshape(*lead, n_mels, mel.shape[-1])
