"""Hard-negative captions: one per training pair, for losses that take extra negatives (``clip_in``).

``data.text_negatives: swap`` makes them from the sampled caption, NegCLIP-style, on the word level:

1. if the caption names two different colours, they trade places ("a red circle to the left of a
   blue square" → "a blue circle to the left of a red square": same words, wrong binding);
2. else if it names two different shapes, they trade places ("a yellow diamond above a yellow
   circle" → "a yellow circle above a yellow diamond": same words, wrong relation);
3. else its first colour word becomes another colour (drawn with the pair's RNG), else its first
   shape word another shape ("a small red circle" → "a small green circle");
4. else (no colour or shape word: a caption outside the Shapes vocabulary) two different words at
   random positions trade places (NegCLIP's word-order shuffle).

Articles are fixed afterwards ("a orange" → "an orange", "an purple" → "a purple"). A caption of
fewer than two different words has no negative: it is returned unchanged, and
:func:`swap_negatives` counts it (a negative equal to its positive is a false negative). The
vocabulary is Shapes' (:mod:`contrastkit.data.shapes`); the user's own negatives come from a data
column instead (``data.text_negatives: COLUMN``).
Determinism: each pair's RNG is seeded by the batch seed that also seeds text augmentation (train
seed, step, row), so a resumed run draws the same negatives.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from contrastkit.data.pairs import english_articles
from contrastkit.data.shapes import COLOR_NAMES, SHAPES

__all__ = ["NEG_KEY", "swap_negative", "swap_negatives"]

NEG_KEY = "text_neg"  # batch key of the negative captions' token ids
_WORD = re.compile(r"[A-Za-z]+")
_AN_A = re.compile(r"\b([Aa])n (?=[b-df-hj-np-tv-zB-DF-HJ-NP-TV-Z])")
_COLOURS, _SHAPES = frozenset(COLOR_NAMES), frozenset(SHAPES)


def _swap(words: list[str], i: int, j: int) -> list[str]:
    out = list(words)
    out[i], out[j] = out[j], out[i]
    return out


def _first_two_different(words: list[str], vocab: frozenset[str]) -> tuple[int, int] | None:
    idx = [k for k, w in enumerate(words) if w.lower() in vocab]
    for b in idx[1:]:
        if words[b].lower() != words[idx[0]].lower():
            return idx[0], b
    return None


def _replace_first(words: list[str], vocab: Sequence[str], rng: np.random.Generator) -> list[str] | None:
    for k, w in enumerate(words):
        if w.lower() in vocab:
            others = [v for v in vocab if v != w.lower()]
            out = list(words)
            out[k] = others[int(rng.integers(len(others)))]
            return out
    return None


def swap_negative(caption: str, rng: np.random.Generator) -> str:
    """The hard negative of ``caption`` by the rules of this module (module docstring)."""
    tokens = re.split(r"(\W+)", caption)  # words and the separators between them, in order
    words = [t for t in tokens if _WORD.fullmatch(t)]
    new: list[str] | None = None
    for vocab in (_COLOURS, _SHAPES):
        pair = _first_two_different(words, vocab)
        if pair is not None:
            new = _swap(words, *pair)
            break
    if new is None:
        new = _replace_first(words, COLOR_NAMES, rng) or _replace_first(words, SHAPES, rng)
    if new is None:
        if len({w.lower() for w in words}) < 2:
            return caption
        i = int(rng.integers(len(words)))
        others = [k for k, w in enumerate(words) if w.lower() != words[i].lower()]
        if not others:  # words[i] is the only word type there is: start from another word
            i = next(k for k, w in enumerate(words) if w.lower() != words[i].lower())
            others = [k for k, w in enumerate(words) if w.lower() != words[i].lower()]
        new = _swap(words, i, others[int(rng.integers(len(others)))])
    it = iter(new)
    text = "".join(next(it) if _WORD.fullmatch(t) else t for t in tokens)
    return _AN_A.sub(lambda m: m.group(1) + " ", english_articles(text))  # "an purple" → "a purple"


def swap_negatives(captions: Sequence[str], seed: Sequence[int]) -> tuple[list[str], int]:
    """One negative per caption of a batch whose seed is ``seed`` (the batch's ``(train seed, step,
    row offset)``): row ``i`` draws from ``default_rng([*seed, i, 17])``. Also returns how many
    negatives equal their caption (no negative possible: fewer than two different words)."""
    out = [swap_negative(c, np.random.default_rng([*map(int, seed), i, 17])) for i, c in enumerate(captions)]
    return out, sum(a == b for a, b in zip(out, captions))
