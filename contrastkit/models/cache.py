"""Embeddings of a locked tower, computed once and cached on disk as memory-mapped ``.npy``.

A locked (frozen) tower gives the same features every epoch, so LiT-style training and adapters
on frozen encoders (FuseMix) compute them once: :func:`cached_features` writes ``float32 [N, D]``
to ``<cache_dir>/<key>.npy`` (atomically: a temporary file, then rename) with a JSON sidecar
describing what was encoded, and returns it memory-mapped read-only. The ``key`` is a SHA-256
of a fingerprint (tower config, weights file size/mtime, a hash of the inputs), so changed
inputs or weights never reuse stale features.

:class:`CachedTextTower` wraps a locked text tower: its "tokenizer" maps a caption to its row in
the cached table (computing and appending captions it has not seen, e.g. new prompt templates at
evaluation), and ``forward`` looks rows up — training touches only the heads and unlocked towers.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.core.errors import InputError
from contrastkit.core.io import atomic_path, atomic_write_json
from contrastkit.core.progress import progress_bar
from contrastkit.core.registry import PositiveInt
from contrastkit.models.towers import TOWERS, TextTower, Tower, TowerContext

__all__ = ["CachedTextTower", "cached_features", "default_cache_dir", "fingerprint", "hash_inputs"]


def default_cache_dir() -> Path:
    """``$CONTRASTKIT_CACHE`` or ``.cache/contrastkit/features`` under the working directory."""
    return Path(os.environ.get("CONTRASTKIT_CACHE", ".cache/contrastkit")) / "features"


def hash_inputs(inputs: torch.Tensor | Sequence[str]) -> str:
    """SHA-256 of a tensor's bytes (with dtype/shape) or of a list of strings."""
    h = hashlib.sha256()
    if isinstance(inputs, torch.Tensor):
        h.update(f"{inputs.dtype}{tuple(inputs.shape)}".encode())
        h.update(inputs.contiguous().cpu().numpy().tobytes())
    else:
        for s in inputs:
            h.update(s.encode() + b"\x00")
    return h.hexdigest()


def fingerprint(**parts: Any) -> str:
    """A short stable key of JSON-serialisable ``parts`` (paths become their size and mtime)."""

    def norm(v: Any) -> Any:
        if isinstance(v, Path) and v.exists():
            st = v.stat()
            return {"path": str(v.resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}
        return str(v) if isinstance(v, Path) else v

    text = json.dumps({k: norm(v) for k, v in parts.items()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_features(
    key: str,
    n: int,
    compute: Callable[[int, int], torch.Tensor],
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    meta: dict | None = None,
) -> np.ndarray:
    """``float32 [n, D]`` features, memory-mapped from ``<cache_dir>/<key>.npy``; computed by
    ``compute(start, stop)`` in batches (under ``no_grad``, with a progress bar: encoding a data
    set with a large frozen tower takes minutes) and written atomically if absent."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"{key}.npy"
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape[0] == n and arr.dtype == np.float32:
            return arr
    if n < 1:
        raise InputError("nothing to encode (n = 0)")
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        bar = progress_bar(None, f"cache features ({n} rows)", total=n, unit="row")
        first = compute(0, min(batch_size, n)).float().cpu().numpy()
        bar.update(len(first))
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, first.shape[1]))
            out[: len(first)] = first
            for i in range(len(first), n, batch_size):
                out[i : i + batch_size] = compute(i, min(i + batch_size, n)).float().cpu().numpy()
                bar.update(min(batch_size, n - i))
            out.flush()
            del out
        bar.close()
    atomic_write_json(folder / f"{key}.json", {"key": key, "n": n, **(meta or {})})
    return np.load(path, mmap_mode="r")


class CachedTextTower(TextTower):
    """A locked text tower whose outputs for known captions come from a cached table.

    ``tokenize(texts)`` returns ``LongTensor [B, 1]`` row indices (unknown texts are encoded by
    the wrapped tower and appended in memory); ``forward(ids)`` returns those rows. The wrapped
    tower stays a submodule (its weights are part of the model), locked by the model config.
    """

    def __init__(
        self, inner: TextTower, table: np.ndarray, texts: Sequence[str], batch_size: int = 256
    ) -> None:
        Tower.__init__(self)
        self.inner = inner.requires_grad_(False).eval()
        self.tokenizer, self.max_length, self.pooling = inner.tokenizer, inner.max_length, inner.pooling
        self.pad_id, self.output_dim = -1, inner.output_dim
        self.batch_size = batch_size
        self.texts = list(texts)
        self._rows = {t: i for i, t in enumerate(self.texts)}
        with warnings.catch_warnings():  # a read-only memmap: rows are only read, never written
            warnings.simplefilter("ignore", UserWarning)
            self._table = torch.from_numpy(np.asarray(table, dtype=np.float32))
        if self._table.shape[0] != len(self.texts):
            raise InputError(f"{self._table.shape[0]} cached rows for {len(self.texts)} texts")

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        self.inner.eval()
        dev = next(self.inner.parameters()).device
        size = self.batch_size
        starts = progress_bar(range(0, len(texts), size), "encode new texts", unit="batch", leave=False)
        outs = [self.inner(self.inner.tokenize(texts[i : i + size]).to(dev)).float().cpu() for i in starts]
        return torch.cat(outs)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        new = list(dict.fromkeys(t for t in texts if t not in self._rows))
        if new:
            self._table = torch.cat([self._table, self._encode(new)])
            for t in new:
                self._rows[t] = len(self._rows)
        return torch.tensor([[self._rows[t]] for t in texts], dtype=torch.long)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[1] != 1 or ids.dtype != torch.long:
            raise InputError(f"cached text input must be LongTensor [B, 1] of rows, got {tuple(ids.shape)}")
        if ids.shape[0] == 0:
            raise InputError("empty text batch")
        return self._table[ids[:, 0].cpu()].to(next(self.inner.parameters()).device)

    def save_assets(self, folder: Path) -> None:
        self.inner.save_assets(folder)
        atomic_write_json(Path(folder) / "cached_texts.json", self.texts)


@TOWERS.register("cached_text")
def cached_text_tower(
    tower: dict | None = None,
    cache_dir: str | Path | None = None,
    batch_size: PositiveInt = 256,
    context: TowerContext | None = None,
) -> CachedTextTower:
    """A locked text tower (``tower``: ``{name, params}``, e.g. ``hf_pretrained`` MiniLM) with the
    embeddings of the training captions precomputed once into a memory-mapped disk cache."""
    if not tower or "name" not in tower:
        raise InputError("tower 'cached_text' needs params.tower = {name: ..., params: {...}}")
    context = context or TowerContext()
    inner = TOWERS.build(tower["name"], context=context, **tower.get("params", {}))
    if not isinstance(inner, TextTower):
        raise InputError(f"tower 'cached_text' wraps a text tower, {tower['name']!r} is not one")
    if context.assets_dir is not None and (context.assets_dir / "cached_texts.json").is_file():
        texts = json.loads((context.assets_dir / "cached_texts.json").read_text())
    else:
        texts = list(dict.fromkeys(context.texts or ()))
    if not texts:
        return CachedTextTower(inner, np.zeros((0, inner.output_dim), np.float32), [], batch_size)
    inner.requires_grad_(False).eval()
    key = fingerprint(kind="text", tower=tower, texts=hash_inputs(texts))
    table = cached_features(
        key,
        len(texts),
        lambda a, b: inner(inner.tokenize(texts[a:b])),
        cache_dir,
        batch_size,
        {"tower": tower},
    )
    return CachedTextTower(inner, table, texts, batch_size)
