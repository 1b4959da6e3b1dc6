"""D-TEXT-AUG: caption augmentation (CLIP🚀 weak/strong views, EDA operations, ZeroVL masking) follows
the spec's rules, is deterministic given its generator and never touches global RNG state."""

import json
import pickle
import random
from collections import Counter

import numpy as np
import pytest

from contrastkit.core.errors import ConfigError, MissingFileError
from contrastkit.data.textaug import (
    STOPWORDS,
    TextAugConfig,
    TextAugmenter,
    clean_text,
    random_deletion,
    random_swap,
    remove_stopwords,
    strong_augment,
    synonym_replacement,
    weak_augment,
    zerovl_mask,
)

SYN = {"dog": ["puppy", "hound"], "red": ["crimson"], "ball": ["sphere", "orb"], "park": ["garden"]}
CAPTION = "a red dog chases the red ball in the park near a dog"


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_config_defaults_and_validation():
    cfg = TextAugConfig()
    fields = (cfg.remove_stopwords_prob, cfg.op_weights, cfg.deletion_p, cfg.clean, cfg.synonyms)
    assert fields == (0.8, (0.0, 0.4, 0.4, 0.2), 0.1, True, None)
    assert len(STOPWORDS) == 179
    for bad in (
        {"op_weights": (0, 0, 0, 0)},
        {"op_weights": (1, -1, 1, 1)},
        {"op_weights": (1, 1, 1)},
        {"remove_stopwords_prob": 1.5},
        {"deletion_p": -0.1},
    ):
        with pytest.raises(ConfigError):
            TextAugConfig(**bad)


def test_clean_and_stopword_removal():
    assert clean_text("  A&amp;B   Dog\n\tRuns ") == "a&b dog runs"
    assert remove_stopwords("The dog is in the Park", rng(), p=1.0) == "dog Park"
    assert remove_stopwords("The dog is in the Park", rng(), p=0.0) == "The dog is in the Park"
    assert remove_stopwords("the of and it", rng(), p=1.0) == "the of and it"  # only stop-words
    assert remove_stopwords("", rng(), p=1.0) == ""


def test_deletion_only_weights_always_delete():
    cfg = TextAugConfig(op_weights=(0, 0, 0, 1), remove_stopwords_prob=0.0, deletion_p=0.5)
    words = CAPTION.split()
    shorter = 0
    for s in range(200):
        out = strong_augment(CAPTION, rng(s), cfg, SYN).split()
        assert 1 <= len(out) <= len(words)
        # a subsequence of the input words: deletion, never swap or replacement
        it = iter(words)
        assert all(w in it for w in out)
        shorter += len(out) < len(words)
    assert shorter == 200  # p = 0.5 over 13 words: P(no deletion) = 2^-13


def test_swap_preserves_multiset():
    words = CAPTION.split()
    changed = 0
    for s in range(200):
        out = random_swap(CAPTION, rng(s)).split()
        assert Counter(out) == Counter(words)
        assert sum(a != b for a, b in zip(out, words)) in (0, 2)
        changed += out != words
    assert changed > 150
    assert random_swap("dog", rng()) == "dog"
    assert random_swap("", rng()) == ""


def test_synonym_replacement_changes_exactly_one_word_type():
    words = CAPTION.split()
    for s in range(100):
        out = synonym_replacement(CAPTION, rng(s), SYN).split()
        assert len(out) == len(words)
        diff = {(a, b) for a, b in zip(words, out) if a != b}
        assert len({a for a, _ in diff}) == 1
        (old, new), *_ = diff
        assert new in SYN[old]
        assert len(diff) == 1  # the same synonym everywhere
        assert out.count(new) == words.count(old)  # all occurrences replaced
    assert synonym_replacement(CAPTION, rng(), {}) == CAPTION  # no dictionary -> unchanged
    assert synonym_replacement("the cat", rng(), SYN) == "the cat"  # no word has a synonym
    cleaned = synonym_replacement("dog", rng(), {"dog": ["Hot_Dog-2", "dog"]})
    assert cleaned == "hot dog"  # lowercased, _/- -> space, letters only; the word itself excluded


def test_deletion_never_empty():
    for s in range(300):
        assert random_deletion("two words", rng(s), p=1.0) in ("two", "words")
        assert random_deletion(CAPTION, rng(s), p=0.9)
    assert random_deletion("single", rng(), p=1.0) == "single"
    assert random_deletion("", rng(), p=1.0) == ""


def test_zerovl_mask_frequencies():
    n, tok, mask_id, vocab = 100_000, 7, 3, 10**9
    out = np.asarray(zerovl_mask([tok] * n, rng(1), mask_id=mask_id, vocab_size=vocab, p=0.2))
    masked, kept, deleted = (out == mask_id).sum(), (out == tok).sum(), n - len(out)
    freqs = np.array([masked, len(out) - masked - kept, deleted, kept]) / n
    assert np.allclose(freqs, [0.10, 0.02, 0.08, 0.80], atol=0.01), freqs
    assert zerovl_mask([], rng(), 0, 10) == []
    assert zerovl_mask([1, 2, 3], rng(), 0, 10, p=0.0) == [1, 2, 3]


def test_deterministic_and_global_state_untouched():
    cfg = TextAugConfig()
    random.seed(123)
    np.random.seed(123)
    py_state, np_state = random.getstate(), np.random.get_state()
    a = [strong_augment(CAPTION, rng(s), cfg, SYN) for s in range(20)]
    b = [strong_augment(CAPTION, rng(s), cfg, SYN) for s in range(20)]
    w = [weak_augment(CAPTION, rng(s), cfg) for s in range(20)]
    zerovl_mask(list(range(50)), rng(), 0, 100)
    assert a == b
    assert len(set(a)) > 5
    assert random.getstate() == py_state
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), np_state))
    assert set(w) <= {CAPTION, "red dog chases red ball park near dog"}


def test_empty_caption_unchanged():
    cfg = TextAugConfig(remove_stopwords_prob=1.0)
    for text in ("", "   "):
        assert strong_augment(text, rng(), cfg, SYN) == text
        assert weak_augment(text, rng(), cfg) == text
    assert weak_augment("The Of AND", rng(), cfg) == "the of and"  # stop-word-only: only cleaned


def test_augmenter_seeded_and_picklable(tmp_path):
    path = tmp_path / "syn.json"
    path.write_text(json.dumps(SYN))
    aug = TextAugmenter(TextAugConfig(synonyms=str(path)))
    texts = [CAPTION, "a small red dog sleeps on the grass in the sunny park", ""]
    out = aug(texts, (3, 7, 1))
    assert out == aug(texts, (3, 7, 1))
    assert out[2] == ""
    others = [aug(texts, (3, s, 1)) for s in range(8, 14)]
    assert sum(o != out for o in others) >= 5
    # row i only depends on (seed_key, i)
    assert aug(texts[:1], (3, 7, 1)) == out[:1]
    clone = pickle.loads(pickle.dumps(aug))
    assert clone(texts, (3, 7, 1)) == out
    with pytest.raises(MissingFileError, match="missing.json"):
        TextAugmenter(TextAugConfig(synonyms=str(tmp_path / "missing.json")))
