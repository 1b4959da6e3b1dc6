"""Caption augmentation for vision-language pre-training (spec D-TEXT-AUG).

Ports the text side of CLIP🚀 (Fini et al. 2023, "Improved baselines for vision-language
pre-training"; facebookresearch/clip-rocket ``tokenizer.py``) with EDA operations
(dsfsi/textaugment ``eda.py``), plus ZeroVL's token masking (zerovl ``process_caption``):

- **clean** (``clean=True``): ``html.unescape``, whitespace collapse, lowercase (no ftfy).
- **weak view** (:func:`weak_augment`): clean, then with probability ``remove_stopwords_prob`` = 0.8
  drop English stop-words (NLTK's 179-word list, case-insensitive, surrounding punctuation ignored).
- **strong view** (:func:`strong_augment`): the same, then exactly one of (identity,
  synonym_replacement, random_swap, random_deletion) with ``op_weights`` = (0.0, 0.4, 0.4, 0.2).
- EDA rules (words = whitespace split): synonym replacement n = 1 replaces *all* occurrences of the
  first word (distinct non-stop-words, shuffled) that has a synonym; random swap n = 1 swaps two
  distinct positions and gives up after 3 failed redraws; random deletion drops each word with
  ``deletion_p`` = 0.1, returns one-word input as is and never returns an empty caption.
- Synonyms come from an optional JSON file ``{word: [synonym, ...]}`` (no WordNet offline); without
  one, synonym replacement is the identity. Synonyms are lowercased, ``_``/``-`` → space, and
  reduced to letters and spaces.
- An empty caption is returned unchanged; an empty result always falls back to the input.
- :func:`zerovl_mask`: each token id is selected with p = 0.2; a selected token becomes ``mask_id``
  (w.p. 0.5), a uniform random id in ``[0, vocab_size)`` (0.1) or is deleted (0.4). Pass content
  tokens only (no BOS/EOS); word-piece rejoining is left to the tokenizer.

Determinism: every function takes an explicit ``numpy.random.Generator`` and never touches the
global ``random``/NumPy/torch state. :class:`TextAugmenter` augments row ``i`` of a batch with
``np.random.default_rng([*seed_key, i])`` (e.g. ``seed_key = (seed, step, view)``), so a caption
depends only on (seed key, row) — resumed runs and any number of loader workers agree.
"""

from __future__ import annotations

import html
import json
import numbers
import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from contrastkit.core.errors import ConfigError, InputError, MissingFileError

__all__ = [
    "STOPWORDS",
    "TextAugConfig",
    "TextAugmenter",
    "clean_text",
    "load_synonyms",
    "random_deletion",
    "random_swap",
    "remove_stopwords",
    "strong_augment",
    "synonym_replacement",
    "weak_augment",
    "zerovl_mask",
]

STOPWORDS: frozenset[str] = frozenset(
    """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves
    he him his himself she she's her hers herself it it's its itself they them their theirs themselves
    what which who whom this that that'll these those am is are was were be been being have has had
    having do does did doing a an the and but if or because as until while of at by for with about
    against between into through during before after above below to from up down in out on off over
    under again further then once here there when where why how all any both each few more most other
    some such no nor not only own same so than too very s t can will just don don't should should've
    now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn
    hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn
    shouldn't wasn wasn't weren weren't won won't wouldn wouldn't""".split()
)
"""NLTK's English stop-word list (179 words)."""

Synonyms = Mapping[str, Sequence[str]]
_EMPTY: dict[str, tuple[str, ...]] = {}
_NOT_LETTER = re.compile(r"[^a-z ]")


@dataclass(frozen=True)
class TextAugConfig:
    """Caption augmentation settings (CLIP🚀 recipe defaults); see the module docstring.

    ``op_weights``: weights of (identity, synonym_replacement, random_swap, random_deletion).
    ``synonyms``: path to a JSON ``{word: [synonyms]}`` file, or ``None`` (no synonym replacement).
    """

    remove_stopwords_prob: float = 0.8
    op_weights: tuple[float, float, float, float] = (0.0, 0.4, 0.4, 0.2)
    deletion_p: float = 0.1
    clean: bool = True
    synonyms: str | None = None

    def __post_init__(self) -> None:
        for name in ("remove_stopwords_prob", "deletion_p"):
            v = getattr(self, name)
            if not (isinstance(v, numbers.Real) and 0 <= v <= 1):
                raise ConfigError(f"data.textaug.{name} is a probability in [0, 1], got {v!r}")
        w = tuple(self.op_weights)
        if len(w) != 4 or not all(isinstance(x, numbers.Real) and np.isfinite(x) and x >= 0 for x in w):
            raise ConfigError(
                f"data.textaug.op_weights must be 4 finite weights >= 0, got {self.op_weights!r}"
            )
        if sum(w) <= 0:
            raise ConfigError(f"data.textaug.op_weights must not all be zero, got {self.op_weights!r}")
        object.__setattr__(self, "op_weights", tuple(float(x) for x in w))
        if isinstance(self.synonyms, os.PathLike):
            object.__setattr__(self, "synonyms", os.fspath(self.synonyms))
        if self.synonyms is not None and not isinstance(self.synonyms, str):
            raise ConfigError(f"data.textaug.synonyms must be a path or null, got {self.synonyms!r}")


def clean_text(text: str) -> str:
    """HTML-unescape, collapse whitespace, lowercase."""
    return " ".join(html.unescape(text).split()).lower()


def _is_stopword(word: str) -> bool:
    w = word.lower()
    return w in STOPWORDS or w.strip(string.punctuation) in STOPWORDS


def remove_stopwords(text: str, rng: np.random.Generator, p: float = 0.8) -> str:
    """With probability ``p`` drop the stop-words of ``text``; an empty result keeps ``text``."""
    if not text.split() or rng.random() >= p:
        return text
    kept = " ".join(w for w in text.split() if not _is_stopword(w))
    return kept or text


def _clean_synonym(s: str) -> str:
    return " ".join(_NOT_LETTER.sub("", s.lower().replace("_", " ").replace("-", " ")).split())


def synonym_replacement(text: str, rng: np.random.Generator, synonyms: Synonyms, n: int = 1) -> str:
    """Replace every occurrence of each of the first ``n`` (shuffled distinct non-stop-)words that
    have a synonym with one uniformly chosen synonym."""
    words = text.split()
    candidates = [w for w in dict.fromkeys(words) if not _is_stopword(w)]  # first-occurrence order
    replaced = 0
    for idx in rng.permutation(len(candidates)):
        word = candidates[int(idx)]
        raw = synonyms.get(word) or synonyms.get(word.lower()) or ()
        options = [s for s in dict.fromkeys(_clean_synonym(s) for s in raw) if s and s != word.lower()]
        if options:
            choice = options[int(rng.integers(len(options)))]
            words = [choice if w == word else w for w in words]
            replaced += 1
            if replaced >= n:
                break
    return " ".join(words) if words else text


def random_swap(text: str, rng: np.random.Generator, n: int = 1) -> str:
    """Swap the words at two distinct random positions, ``n`` times (a swap gives up after 3 failed
    redraws of the second position)."""
    words = text.split()
    if len(words) < 2:
        return text
    for _ in range(n):
        i = j = int(rng.integers(len(words)))
        for _ in range(3):
            j = int(rng.integers(len(words)))
            if j != i:
                break
        if j != i:
            words[i], words[j] = words[j], words[i]
    return " ".join(words)


def random_deletion(text: str, rng: np.random.Generator, p: float = 0.1) -> str:
    """Drop each word with probability ``p``; one-word input is returned as is, and if every word is
    dropped one random original word is kept."""
    words = text.split()
    if len(words) <= 1:
        return text
    kept = [w for w, u in zip(words, rng.random(len(words))) if u > p]
    if not kept:
        kept = [words[int(rng.integers(len(words)))]]
    return " ".join(kept)


def weak_augment(
    text: str, rng: np.random.Generator, cfg: TextAugConfig, synonyms: Synonyms | None = None
) -> str:
    """View 0: clean, then stop-word removal with ``cfg.remove_stopwords_prob``."""
    if not text.split():
        return text
    if cfg.clean:
        text = clean_text(text)
    return remove_stopwords(text, rng, cfg.remove_stopwords_prob)


def strong_augment(
    text: str, rng: np.random.Generator, cfg: TextAugConfig, synonyms: Synonyms | None = None
) -> str:
    """Views 1..A: :func:`weak_augment`, then one EDA operation drawn with ``cfg.op_weights``."""
    if not text.split():
        return text
    text = weak_augment(text, rng, cfg)
    w = np.asarray(cfg.op_weights, dtype=np.float64)
    op = int(rng.choice(4, p=w / w.sum()))
    if op == 1:
        out = synonym_replacement(text, rng, synonyms if synonyms is not None else _EMPTY)
    elif op == 2:
        out = random_swap(text, rng)
    elif op == 3:
        out = random_deletion(text, rng, cfg.deletion_p)
    else:
        out = text
    return out or text


def zerovl_mask(
    token_ids: Sequence[int], rng: np.random.Generator, mask_id: int, vocab_size: int, p: float = 0.2
) -> list[int]:
    """ZeroVL token masking: each token is selected with probability ``p``; a selected token becomes
    ``mask_id`` w.p. 0.5, a uniform random id in ``[0, vocab_size)`` w.p. 0.1, else it is deleted."""
    if not 0 <= p <= 1:
        raise InputError(f"p is a probability in [0, 1], got {p}")
    if vocab_size < 1:
        raise InputError(f"vocab_size must be >= 1, got {vocab_size}")
    n = len(token_ids)
    if n == 0:
        return []
    selected = rng.random(n) < p
    action = rng.random(n)
    random_ids = rng.integers(vocab_size, size=n)
    out: list[int] = []
    for t, sel, a, r in zip(token_ids, selected, action, random_ids):
        if not sel:
            out.append(int(t))
        elif a < 0.5:
            out.append(int(mask_id))
        elif a < 0.6:
            out.append(int(r))
    return out


def load_synonyms(path: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    """Read a JSON ``{word: [synonym, ...]}`` file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"synonym dictionary not found: {path!r} (data.textaug.synonyms)")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"synonym dictionary {path!r} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(s, str) for s in v)
        for k, v in data.items()
    ):
        raise ConfigError(f"synonym dictionary {path!r} must map each word to a list of strings")
    return {k: tuple(v) for k, v in data.items()}


class TextAugmenter:
    """Applies :func:`strong_augment` to a batch of captions; row ``i`` uses the generator
    ``np.random.default_rng([*seed_key, i])``. Picklable (safe in DataLoader workers)."""

    def __init__(self, cfg: TextAugConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else TextAugConfig()
        self.synonyms: dict[str, tuple[str, ...]] = (
            load_synonyms(self.cfg.synonyms) if self.cfg.synonyms is not None else {}
        )

    def __call__(self, texts: Sequence[str], seed_key: Sequence[int]) -> list[str]:
        key = [int(k) for k in seed_key]
        if any(k < 0 for k in key):
            raise InputError(f"seed_key entries must be non-negative integers, got {tuple(seed_key)}")
        return [
            strong_augment(t, np.random.default_rng([*key, i]), self.cfg, self.synonyms)
            for i, t in enumerate(texts)
        ]

    def __repr__(self) -> str:
        return f"TextAugmenter({self.cfg!r}, {len(self.synonyms)} synonym entries)"
