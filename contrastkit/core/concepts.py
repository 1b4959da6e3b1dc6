"""Caption concepts: multi-hot word labels parsed from captions (CatLIP / TagAlign targets).

Shared by the data layer (which can put ``targets`` in batches, ``DataConfig.concepts``) and the
label-style losses (``CatLIPLoss.targets_for``), so both parse captions the same way.
:func:`unknown_entries` marks a fixed, seeded share of an image's labels as unobserved (partial
labels, ``data.concepts_unknown``: the −1 targets of ``multi_focal``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from contrastkit.core.counters import counter_uniform
from contrastkit.core.errors import ConfigError, InputError

__all__ = ["STOP_WORDS", "caption_vocabulary", "concept_targets", "unknown_entries"]

# Function words that never name a concept (articles, prepositions, conjunctions, copulas).
STOP_WORDS = frozenset(
    "a an the of on in at to and or with without is are be this that there it its next by for "
    "from photo picture image".split()
)

_WORD = re.compile(r"[a-z0-9]+")


def concept_targets(
    captions: Sequence[str],
    vocabulary: Sequence[str],
    *,
    stop_words: Iterable[str] | None = None,
    lexicon: Mapping[str, str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Multi-hot targets ``[N, C]`` of ``captions`` over ``vocabulary`` (C concept names).

    Parsing: lower-case the caption; words are maximal runs of ``[a-z0-9]`` (punctuation, hyphens and
    apostrophes split words: "t-shirt" → "t", "shirt"); words in ``stop_words`` (lower-cased) are
    dropped; with a ``lexicon`` each word is mapped to its concept name (e.g. a lemma or a WordNet
    synset id, CatLIP's labelling, supplied as a local table — no WordNet download) and words absent
    from it are dropped; a word (or its concept) matches a vocabulary entry when equal to it after
    lower-casing. Duplicates collapse to 1; a caption with no concept gives an all-zero row.
    """
    if isinstance(captions, str) or isinstance(vocabulary, str):
        raise InputError("concept_targets expects a list of captions and a list of concept names")
    index: dict[str, int] = {}
    for c, name in enumerate(vocabulary):
        key = str(name).lower()
        if key in index:
            raise ConfigError(f"vocabulary has a duplicate concept {key!r} (case-insensitive)")
        index[key] = c
    stops = {w.lower() for w in stop_words} if stop_words is not None else set()
    out = torch.zeros(len(captions), len(index), dtype=dtype)
    for i, caption in enumerate(captions):  # string parsing: no tensor work per caption
        for word in _WORD.findall(str(caption).lower()):
            if word in stops:
                continue
            concept = word if lexicon is None else lexicon.get(word)
            c = index.get(concept.lower()) if concept is not None else None
            if c is not None:
                out[i, c] = 1.0
    return out


def caption_vocabulary(
    captions: Iterable[Sequence[str] | str], stop_words: Iterable[str] = STOP_WORDS
) -> list[str]:
    """The sorted concept vocabulary of a caption set: every word (parsed as in
    :func:`concept_targets`) that is not a stop word. ``captions`` may hold strings or lists of
    strings (several captions per image)."""
    stops = {w.lower() for w in stop_words}
    words: set[str] = set()
    for item in captions:
        for caption in [item] if isinstance(item, str) else item:
            words.update(w for w in _WORD.findall(str(caption).lower()) if w not in stops)
    if not words:
        raise InputError("no concept words in the captions (all empty or stop words)")
    return sorted(words)


def unknown_entries(
    rows: Sequence[int] | np.ndarray, n_concepts: int, share: float, seed: int
) -> torch.Tensor:
    """Which concept labels of the images ``rows`` are unobserved: ``bool [B, C]``, entry (i, c)
    unknown iff ``u(seed, i, c) < share`` with ``u`` uniform on [0, 1) from a hash of the key.

    Why a hash: partial labels belong to the *image* (a data set whose annotators skipped some
    labels), so image i must miss the same labels in every batch, epoch, worker and resumed run,
    without an ``[N, C]`` table in memory. ``share`` in [0, 1).
    """
    if not 0 <= share < 1:
        raise ConfigError(f"the share of unknown concept labels must be in [0, 1), got {share}")
    rows = np.asarray(rows, dtype=np.int64)[:, None]
    return torch.from_numpy(counter_uniform(seed, rows, np.arange(n_concepts)[None, :]) < share)
