"""Counter-based random numbers: a uniform draw that is a pure function of integer keys.

Why: some per-sample draws must not depend on which batch, worker, rank or resumed run asks —
an image's unobserved labels (``data.concepts_unknown``), the relation drawn for row k of step t
(``data.relations``). A generator's stream depends on call order; a hash of the key does not, and
needs no ``[N, C]`` table in memory.

What: SplitMix64's finaliser (Steele, Lea & Flood 2014) chained over the keys,
``h₀ = mix(seed)``, ``h_{j+1} = mix(h_j ⊕ k_j)``, and ``u = ⌊h / 2¹¹⌋ / 2⁵³`` ∈ [0, 1) (53 bits,
as numpy's doubles). Keys broadcast like numpy arrays; wrapping uint64 arithmetic.
"""

from __future__ import annotations

import numpy as np

__all__ = ["counter_uniform", "splitmix64"]


def splitmix64(x: np.ndarray | np.uint64) -> np.ndarray:
    """SplitMix64's output function on ``uint64`` values (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def counter_uniform(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """Uniform [0, 1) float64 draws indexed by ``keys`` (integer arrays, broadcast together),
    a pure function of ``(seed, *keys)``."""
    h = splitmix64(np.uint64(seed & (2**64 - 1)))
    for k in keys:
        h = splitmix64(h ^ np.asarray(k, dtype=np.int64).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)
