"""Emoji image–name pairs (1,911 Noto emoji, 64 px) from the npm package ``emoji-datasource-google``.

Installed by ``make setup`` (``npm install --prefix .cache/npm emoji-datasource-google@16.0.0``);
the folder is ``$CONTRASTKIT_EMOJI`` or ``.cache/npm/node_modules/emoji-datasource-google`` under
the working directory or the source checkout. Each emoji's caption is its lower-cased Unicode
name ("grinning face", "woman detective"); images are composited on white.

Split: near-duplicate names must never straddle train/test, so emoji are grouped by a normalised
*base name* (:func:`base_name`: gender and person words removed, e.g. "man detective", "woman
detective" and "detective" share "detective"; skin tones are variations of one entry and are
not separate images) and whole groups go to one split by a seeded permutation of the sorted
groups: ``test`` ≈ ``test_fraction`` of the groups, ``val`` ≈ ``val_fraction``, ``train`` the rest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from contrastkit.core.errors import InputError
from contrastkit.core.registry import Fraction, NonNegInt, PositiveInt
from contrastkit.data.locate import locate_data, repo_root
from contrastkit.data.pairs import PairSet

__all__ = ["GENDER_WORDS", "base_name", "emoji_dir", "emoji_records", "make_emoji", "split_groups"]

GENDER_WORDS = frozenset(
    "man woman men women person people boy girl male female gentleman lady adult child "
    "mans womans persons".split()
)
_PACKAGE = Path(".cache/npm/node_modules/emoji-datasource-google")
_INSTALL = "npm install --prefix .cache/npm emoji-datasource-google@16.0.0"
_SPLITS = ("train", "val", "test")


def emoji_dir() -> Path:
    """The emoji package folder (``$CONTRASTKIT_EMOJI``, else ``.cache/npm/…`` here or in the checkout)."""
    return locate_data(
        "CONTRASTKIT_EMOJI",
        [Path.cwd() / _PACKAGE, repo_root() / _PACKAGE],
        "emoji.json",
        "emoji data",
        _INSTALL,
    )


def _caption(entry: dict) -> str:
    name = entry.get("name") or entry["short_name"].replace("_", " ").replace("-", " ")
    return re.sub(r"\s+", " ", name.lower().replace(":", " ").replace(",", " ")).strip()


def base_name(caption: str) -> str:
    """The group key of a name: lower-case words minus :data:`GENDER_WORDS` and skin-tone words,
    e.g. "woman detective" → "detective", "man raising hand" → "raising hand"."""
    words = re.findall(r"[a-z0-9]+", caption.lower())
    kept = [w for w in words if w not in GENDER_WORDS and w not in ("skin", "tone")]
    return " ".join(kept) or " ".join(words)


def emoji_records(folder: Path | None = None, size: int = 64) -> list[tuple[str, Path]]:
    """``(caption, png path)`` of every emoji with a Google image of ``size`` px, in file order."""
    folder = emoji_dir() if folder is None else folder
    entries = json.loads((folder / "emoji.json").read_text())
    out = []
    for e in entries:
        png = folder / "img" / "google" / str(size) / e["image"]
        if e.get("has_img_google") and png.is_file():
            out.append((_caption(e), png))
    if not out:
        raise InputError(f"no emoji images found under {folder}/img/google/{size}")
    return out


def split_groups(
    captions: list[str], seed: int, test_fraction: float, val_fraction: float
) -> dict[str, np.ndarray]:
    """Indices of each split; all captions with the same :func:`base_name` land in one split."""
    groups = sorted({base_name(c) for c in captions})
    order = np.random.default_rng(seed).permutation(len(groups))
    n_test, n_val = round(test_fraction * len(groups)), round(val_fraction * len(groups))
    where = {}
    for rank, g in enumerate(order):
        where[groups[g]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    assign = np.array([where[base_name(c)] for c in captions])
    return {s: np.flatnonzero(assign == s) for s in _SPLITS}


def _load_png(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
        if rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def make_emoji(
    split: str = "train",
    image_size: PositiveInt = 64,
    test_fraction: Fraction = 0.2,
    val_fraction: Fraction = 0.0,
    seed: NonNegInt = 0,
) -> PairSet:
    """The ``split`` of the emoji pairs: RGB ``uint8 [N, 3, image_size, image_size]``, one caption
    (the emoji's name) each."""
    if split not in _SPLITS:
        raise InputError(f"unknown emoji split {split!r}; available: {list(_SPLITS)}")
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise InputError(f"fractions must be in [0, 1) and sum below 1, got {test_fraction}, {val_fraction}")
    records = emoji_records()
    idx = split_groups([c for c, _ in records], seed, test_fraction, val_fraction)[split]
    if len(idx) == 0:
        raise InputError(
            f"emoji split {split!r} is empty (test_fraction={test_fraction}, val_fraction={val_fraction})"
        )
    pix = np.stack([_load_png(records[i][1], image_size) for i in idx])
    captions = tuple((records[i][0],) for i in idx)
    return PairSet(torch.from_numpy(pix), captions, {}, name=f"emoji/{split}")
