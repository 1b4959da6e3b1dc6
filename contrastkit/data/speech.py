"""Spoken captions: text → speech with the espeak-ng synthesiser → log-mel features, cached.

What: speech as a modality (seed papers: CoAVT, audio–visual–text pre-training; joint
acoustic–phonetic word embeddings). Each caption is spoken in V *variants* — a voice (accent), a
speed (words per minute) and a pitch (0–99) of espeak-ng (Debian's ``espeak-ng``, ``make speech``) —
so the variants act as augmentations of one utterance. :func:`speech_features` returns
``float32 [N, V, n_mels, T]`` for the towers of :mod:`contrastkit.models.audio`.

Protocol:

1. each *distinct* text is synthesised once per variant (Shapes' templated captions repeat: 60,000
   captions of the 30,000-image train split are 16,603 distinct strings), by
   ``espeak-ng -v VOICE -s SPEED -p PITCH -b 1 --stdin --stdout`` with the UTF-8 text on stdin (no
   shell; a text starting with ``-`` is not an option), several processes at a time (``workers``);
2. the 16-bit mono output (22,050 Hz) is cached as a WAV file keyed by
   ``sha256(json([text, voice, speed, pitch, espeak-ng version]))`` under ``cache_dir``
   (``<key[:2]>/<key>.wav``; written to a temporary file and renamed, so a crash or a concurrent
   writer never leaves a partial file);
3. samples ``/ 32768`` are resampled to ``sample_rate`` in float64 by a polyphase filter
   (``scipy.signal.resample_poly``, ratio reduced by the gcd, its default Kaiser-window FIR
   designed once per ratio), cropped to ``max_seconds`` (a warning counts the cropped clips),
   cast to float32;
4. log-mel features (:func:`contrastkit.data.audio_features.log_mel`, ``speech.mel``) in
   float32 with a fixed number of frames (zero-padded waveforms: trailing frames are silence,
   ``log(eps)``);
5. the feature tensor of the distinct texts is kept too (``cache_features``), as
   ``<cache_dir>/features/<key>.npy`` keyed by the texts, variants, settings and the espeak-ng,
   torch and scipy versions: a warm start loads one file instead of re-reading every clip.

Exactness: espeak-ng has no randomness: its output was byte-identical over repeated runs and
across worker counts (tests check it for every variant they synthesise), so cached and fresh
results are the same bytes; the cache also pins results across machines where another espeak-ng
build would differ in its patch level (the key holds only ``--version``'s number). Voices are
checked against ``espeak-ng --voices`` (exact language, voice or file names, optionally
``+variant``), not espeak-ng's own fuzzy matching, so a typo fails instead of silently picking
another accent. Related: :mod:`contrastkit.data.audio_features`, :mod:`contrastkit.models.audio`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import math
import os
import re
import subprocess
import tempfile
import warnings
import wave
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.core.progress import progress_bar
from contrastkit.data.audio_features import MelConfig, log_mel

__all__ = [
    "ESPEAK",
    "SpeechConfig",
    "Variant",
    "distinct_speech_features",
    "espeak_version",
    "espeak_voices",
    "speak",
    "speech_features",
    "synthesize",
]

ESPEAK = "espeak-ng"
_INSTALL = "install it with `make speech` (Debian: apt-get install espeak-ng)"
_VOICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*(\+[A-Za-z0-9_.-]+)?$")
_CHUNK = 256  # distinct texts per feature batch: bounds the padded waveforms held at once


class Variant(NamedTuple):
    """One way of speaking a text: an espeak-ng voice, speed (words/min) and pitch (0–99)."""

    voice: str
    speed: int
    pitch: int


@dataclass(frozen=True)
class SpeechConfig:
    """How captions are spoken (``speech:``); the variants are every (voice, speed, pitch) of
    :meth:`variants`, in that order. ``voices``: espeak-ng names (``espeak-ng --voices``), e.g.
    ``en-us``, ``en-gb``, ``en-gb-scotland``, ``en-029``, ``en-us+f3`` (a variant voice);
    ``speeds``: 80–450 words per minute (espeak-ng's default 175); ``pitches``: 0–99 (default 50);
    ``cache_dir``: relative to the working directory; ``workers``: synthesiser processes at a time;
    ``cache_features``: also keep each feature tensor (``<cache_dir>/features/<key>.npy``)."""

    voices: tuple[str, ...] = ("en-us",)
    speeds: tuple[int, ...] = (175,)
    pitches: tuple[int, ...] = (50,)
    sample_rate: int = 16000
    max_seconds: float = 4.0
    cache_dir: str = ".cache/speech"
    workers: int = 2
    cache_features: bool = True
    mel: MelConfig = field(default_factory=MelConfig)

    def __post_init__(self) -> None:
        for name in ("voices", "speeds", "pitches"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ConfigError(
                    f"speech.{name} must be a non-empty list without repeats, got {list(values)}"
                )
        bad = [v for v in self.voices if not isinstance(v, str) or not _VOICE.match(v)]
        if bad:
            raise ConfigError(f"speech.voices: not an espeak-ng voice name: {bad} (e.g. en-us, en-gb+f3)")
        if any(isinstance(s, bool) or not isinstance(s, int) or not 80 <= s <= 450 for s in self.speeds):
            raise ConfigError(
                f"speech.speeds must be integers in [80, 450] (words/min), got {list(self.speeds)}"
            )
        if any(isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 99 for p in self.pitches):
            raise ConfigError(f"speech.pitches must be integers in [0, 99], got {list(self.pitches)}")
        if not 1000 <= self.sample_rate <= 192000:
            raise ConfigError(f"speech.sample_rate must be in [1000, 192000] Hz, got {self.sample_rate}")
        if not 0 < self.max_seconds <= 600:
            raise ConfigError(f"speech.max_seconds must be in (0, 600], got {self.max_seconds}")
        if self.workers < 1:
            raise ConfigError(f"speech.workers must be >= 1, got {self.workers}")
        if not self.cache_dir:
            raise ConfigError("speech.cache_dir must be a folder name")
        fmax = self.mel.fmax
        if fmax is not None and fmax > self.sample_rate / 2:
            raise ConfigError(f"speech.mel.fmax={fmax} is above the Nyquist frequency {self.sample_rate / 2}")

    def variants(self) -> tuple[Variant, ...]:
        """Every (voice, speed, pitch), voices outermost."""
        return tuple(Variant(*v) for v in itertools.product(self.voices, self.speeds, self.pitches))

    @property
    def max_frames(self) -> int:
        """The frames T of every feature map (``mel.max_frames`` or ``max_seconds``' worth)."""
        return self.mel.frames_for(self.max_seconds, self.sample_rate)


def _run(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([ESPEAK, *args], input=stdin, capture_output=True, timeout=120, check=False)
    except FileNotFoundError:
        raise MissingFileError(f"the speech synthesiser {ESPEAK!r} is not installed: {_INSTALL}") from None


@functools.lru_cache(maxsize=1)
def espeak_version() -> str:
    """espeak-ng's version number (``espeak-ng --version``: ``1.51`` on Debian 12); part of the cache key."""
    out = _run(["--version"]).stdout.decode("utf-8", "replace")
    match = re.search(r"text-to-speech:\s*(\S+)", out)
    return match.group(1) if match else out.strip().splitlines()[0]


@functools.lru_cache(maxsize=1)
def espeak_voices() -> tuple[frozenset[str], frozenset[str]]:
    """``(voices, variants)``: every name ``-v`` takes (language, voice name, file of
    ``espeak-ng --voices``) and every ``+variant`` (``espeak-ng --voices=variant``)."""
    names: set[str] = set()
    for line in _run(["--voices"]).stdout.decode("utf-8", "replace").splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            names.update((cols[1], cols[3], cols[4]))
    variants = set()
    for line in _run(["--voices=variant"]).stdout.decode("utf-8", "replace").splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5 and cols[4].startswith("!v/"):
            variants.add(cols[4][3:])
    return frozenset(names), frozenset(variants)


def _check_voice(voice: str) -> None:
    names, variants = espeak_voices()
    base, _, variant = voice.partition("+")
    if base not in names:
        near = sorted(
            {n for n in names if n.startswith(base[:2])} | set(difflib.get_close_matches(base, names))
        )
        raise InputError(
            f"unknown espeak-ng voice {base!r}; close matches (espeak-ng --voices): {near[:20] or 'none'}"
        )
    if variant and variant not in variants:
        near = difflib.get_close_matches(variant, variants, n=10) or sorted(variants)[:20]
        raise InputError(
            f"unknown espeak-ng voice variant {variant!r}; e.g. {near} (espeak-ng --voices=variant)"
        )


def _parse_wav(data: bytes) -> tuple[int, np.ndarray]:
    """``(rate, int16 samples)`` of espeak-ng's streamed WAV: its RIFF and data sizes are
    placeholders (it cannot seek stdout), so the data run to the end of the output."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InputError(f"{ESPEAK} did not write a WAV file (got {data[:12]!r})")
    pos, rate = 12, None
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if tag == b"fmt ":
            fmt, channels, bits = (int.from_bytes(data[pos + a : pos + a + 2], "little") for a in (8, 10, 22))
            rate = int.from_bytes(data[pos + 12 : pos + 16], "little")
            if (fmt, channels, bits) != (1, 1, 16):
                raise InputError(
                    f"{ESPEAK} wrote format {fmt}, {channels} channels, {bits} bits; expected PCM mono 16"
                )
        elif tag == b"data":
            if rate is None:
                break
            body = data[pos + 8 :]
            return rate, np.frombuffer(body[: len(body) // 2 * 2], "<i2").copy()
        pos += 8 + size + (size & 1)
    raise InputError(f"{ESPEAK} wrote a WAV file without format or data")


def synthesize(text: str, variant: Variant) -> tuple[int, np.ndarray]:
    """``(sample_rate, int16 [S])``: ``text`` spoken by espeak-ng as ``variant``, no cache."""
    voice, speed, pitch = variant
    args = ["-v", voice, "-s", str(speed), "-p", str(pitch), "-b", "1", "--stdin", "--stdout"]
    done = _run(args, text.encode("utf-8"))
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise InputError(
            f"{ESPEAK} failed for voice {voice!r} (exit {done.returncode}): {' '.join(err)[-300:]}"
        )
    return _parse_wav(done.stdout)


def _cache_path(cache_dir: Path, text: str, variant: Variant) -> Path:
    key = json.dumps(
        [text, variant.voice, variant.speed, variant.pitch, espeak_version()], ensure_ascii=False
    )
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return cache_dir / digest[:2] / f"{digest}.wav"


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write`` into a temporary file beside it, then rename: readers
    (other processes, a later run after a crash) see no file or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem[:8], suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_wav(path: Path, rate: int, pcm: np.ndarray) -> None:
    def write(f: BinaryIO) -> None:
        with wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pcm.astype("<i2").tobytes())

    _atomic_write(path, write)


def _read_wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2").copy()


def _cached_pcm(cache_dir: Path, text: str, variant: Variant) -> tuple[int, np.ndarray]:
    path = _cache_path(cache_dir, text, variant)
    if path.is_file():
        return _read_wav(path)
    rate, pcm = synthesize(text, variant)
    _write_wav(path, rate, pcm)
    return rate, pcm


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, got one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"text {i} is empty or not a string ({t!r}): nothing to speak")
    return list(dict.fromkeys(texts))  # distinct, in first-seen order


def _variants(cfg: SpeechConfig, variants: Sequence[Variant] | None) -> tuple[Variant, ...]:
    chosen = cfg.variants() if variants is None else tuple(Variant(*v) for v in variants)
    if not chosen:
        raise InputError("no speech variants")
    for voice in dict.fromkeys(v.voice for v in chosen):
        _check_voice(voice)
    SpeechConfig(  # the same range checks as a config's
        voices=tuple(dict.fromkeys(v.voice for v in chosen)),
        speeds=tuple(dict.fromkeys(v.speed for v in chosen)),
        pitches=tuple(dict.fromkeys(v.pitch for v in chosen)),
    )
    return chosen


@functools.lru_cache(maxsize=8)
def _fir(up: int, down: int) -> np.ndarray:
    """``resample_poly``'s default anti-aliasing filter for ``up/down``, designed once (the
    design costs more than filtering a caption)."""
    from scipy.signal import firwin

    rate = max(up, down)
    return firwin(2 * 10 * rate + 1, 1.0 / rate, window=("kaiser", 5.0))


def _resample(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """``scipy.signal.resample_poly(x, up, down)`` (float64), with the filter designed once."""
    from scipy.signal import resample_poly

    return resample_poly(x, up, down, window=_fir(up, down))


def _waves(
    texts: list[str], variants: tuple[Variant, ...], cfg: SpeechConfig, progress: bool
) -> tuple[list[np.ndarray], int]:
    """float32 waveforms at ``cfg.sample_rate`` for every (text, variant), text-major, cropped
    to ``max_seconds``, and how many were cropped."""
    jobs = [(t, v) for t in texts for v in variants]
    cache_dir = Path(cfg.cache_dir)
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:  # threads wait on espeak-ng processes
        pcms = list(
            progress_bar(
                pool.map(lambda job: _cached_pcm(cache_dir, *job), jobs),
                "speech",
                progress,
                total=len(jobs),
                unit="clip",
                leave=False,
            )
        )
    limit = math.floor(cfg.max_seconds * cfg.sample_rate)
    out = []
    for rate, pcm in pcms:
        g = math.gcd(cfg.sample_rate, rate)
        x = pcm.astype(np.float64) / 32768.0
        if rate != cfg.sample_rate:
            x = _resample(x, cfg.sample_rate // g, rate // g)
        out.append(x.astype(np.float32))
    return [x[:limit] for x in out], sum(len(x) > limit for x in out)


def _warn_cropped(cropped: int, total: int, cfg: SpeechConfig, stacklevel: int) -> None:
    if cropped:
        warnings.warn(
            f"speech: {cropped} of {total} spoken clips are longer than max_seconds="
            f"{cfg.max_seconds} and were cropped",
            stacklevel=stacklevel,  # the caller of the public function
        )


def speak(
    texts: Sequence[str],
    cfg: SpeechConfig | None = None,
    variants: Sequence[Variant] | None = None,
    progress: bool = False,
) -> list[list[np.ndarray]]:
    """float32 waveforms ``out[i][v]`` (``[S]`` at ``cfg.sample_rate``, at most ``max_seconds``)
    of ``texts[i]`` spoken as variant ``v`` (default ``cfg.variants()``); each distinct text is
    synthesised once per variant, through the cache (module docstring)."""
    cfg = cfg or SpeechConfig()
    distinct = _check_texts(texts)
    chosen = _variants(cfg, variants)
    waves, cropped = _waves(distinct, chosen, cfg, progress)
    _warn_cropped(cropped, len(waves), cfg, 3)
    row = {t: i for i, t in enumerate(distinct)}
    v = len(chosen)
    return [waves[row[t] * v : row[t] * v + v] for t in texts]


def _features_path(texts: list[str], variants: tuple[Variant, ...], cfg: SpeechConfig) -> Path:
    """The feature cache file of these distinct texts, variants and settings: keyed also by the
    espeak-ng, torch and scipy versions (float32 STFT and resampling rounding)."""
    import scipy

    key = [texts, [list(v) for v in variants], cfg.sample_rate, cfg.max_seconds, cfg.max_frames]
    key += [dataclasses.astuple(cfg.mel), espeak_version(), torch.__version__, scipy.__version__]
    digest = hashlib.sha256(json.dumps(key, ensure_ascii=False).encode("utf-8")).hexdigest()
    return Path(cfg.cache_dir) / "features" / f"{digest}.npy"


def _features(
    texts: list[str], variants: tuple[Variant, ...], cfg: SpeechConfig, progress: bool
) -> torch.Tensor:
    m, frames = cfg.mel, cfg.max_frames
    feats = torch.empty(len(texts), len(variants), m.n_mels, frames, dtype=torch.float32)
    length, cropped = (frames - 1) * m.hop, 0
    bar = progress_bar(total=len(texts), desc="speech features", enabled=progress, unit="text", leave=False)
    for lo in range(0, len(texts), _CHUNK):
        chunk = texts[lo : lo + _CHUNK]
        waves, n = _waves(chunk, variants, cfg, False)
        cropped += n
        batch = torch.zeros(len(waves), length)  # zero padding = silence
        for i, x in enumerate(waves):
            batch[i, : min(len(x), length)] = torch.from_numpy(x[:length])
        mel = log_mel(batch, cfg.sample_rate, m.n_fft, m.hop, m.n_mels, m.fmin, m.fmax, m.eps, frames)
        feats[lo : lo + len(chunk)] = mel.view(len(chunk), len(variants), m.n_mels, frames)
        bar.update(len(chunk))
    bar.close()
    _warn_cropped(cropped, feats.shape[0] * feats.shape[1], cfg, 4)
    return feats


def distinct_speech_features(
    texts: Sequence[str],
    cfg: SpeechConfig | None = None,
    variants: Sequence[Variant] | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features float32 [U, V, n_mels, T], index int64 [N])``: log-mel features of the U
    distinct texts (first-seen order) spoken as each variant, and ``features[index[i]]`` is
    ``texts[i]``'s. Use this for large N with repeated captions (it holds U, not N, maps)."""
    cfg = cfg or SpeechConfig()
    distinct = _check_texts(texts)
    chosen = _variants(cfg, variants)
    path = _features_path(distinct, chosen, cfg)
    if cfg.cache_features and path.is_file():
        feats = torch.from_numpy(np.load(path))
    else:
        feats = _features(distinct, chosen, cfg, progress)
        if cfg.cache_features:
            _atomic_write(path, lambda f: np.save(f, feats.numpy()))
    row = {t: i for i, t in enumerate(distinct)}
    return feats, torch.tensor([row[t] for t in texts], dtype=torch.int64)


def speech_features(
    texts: Sequence[str],
    cfg: SpeechConfig | None = None,
    variants: Sequence[Variant] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Log-mel features ``float32 [N, V, n_mels, T]`` of ``texts`` (one per sample) spoken as
    each variant (default ``cfg.variants()``), ``T = cfg.max_frames``; distinct texts are
    synthesised and featurised once (:func:`distinct_speech_features`)."""
    feats, index = distinct_speech_features(texts, cfg, variants, progress)
    return feats[index]
