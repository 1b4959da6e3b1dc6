"""D-ZEROVL — single-source (debiased) batches and coin-flip mixup of images or texts.

Paper: Cui et al. 2022, "Contrastive Vision-Language Pre-training with Limited Resources"
(ZeroVL). Reference: zerovl/ZeroVL ``clip_bsgs_runner.py`` (``debias_train``) and
``pipelines/clip.py`` (``get_mixup_kwargs``), loss ``MixUpNCE``.

:class:`SingleSourceSampler` — every global batch comes from ONE source of a ``data.sources``
mixture: step ``k`` draws source ``s ~ Categorical(pₛ = |Dₛ| / Σ|D|)`` (proportional to size,
NOT uniform over sources, and not the configured weights) from a generator seeded by
``(seed, step block)``, the same on every rank, and takes that source's next batch. Each
source walks its own epochs (a fresh permutation, the last incomplete batch dropped, as the
reference's per-source loaders with ``drop_last``). A source smaller than one batch can never
fill one: it is left out of the draw, with a warning.

:class:`CoinFlipMixup` — once per step, from ``default_rng([seed, tag, step])`` (the same on
every rank): with probability ``prob`` the step is mixed; ``λ ~ Beta(α, α)`` (α = 0.1) and
``γ ~ U(0, 1)``; ``γ > 1 − image_prob`` (``γ > 0.5`` in ZeroVL) mixes images, else texts. With
``flip(i) = b−1−i`` inside this rank's batch of ``b`` rows:

* images, on raw pixels here: ``x̃ᵢ = λ xᵢ + (1−λ) x_flip(i)`` (rounded to uint8 — the image
  towers take uint8 and normalise inside, so this equals mixing normalised pixels up to ±0.5/255);
* texts, on the projected text embedding before L2 normalisation: ``t̃ᵢ = λ tᵢ + (1−λ) t_flip(i)``,
  done by the loss (``mixup_nce``), since a token sequence has no meaningful mixture.

The batch carries ``mix_lambda`` (float ``[b]``, λ, 1 on an unmixed step), ``mix_partner``
(int64 ``[b]``, the global row of ``flip(i)``: ``offset + b−1−i``) and ``mix_text`` (int64
``[b]``, 1 when the loss must mix the text embeddings); ``mixup_nce`` turns them into the soft
targets ``λ e_i + (1−λ) e_flip(i)``. Odd ``b``: the middle row mixes with itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.batching import ChunkStream
from contrastkit.data.pairs import SampledBatch

__all__ = ["MIX_FIELDS", "CoinFlipMixup", "SingleSourceSampler"]

MIX_FIELDS = ("mix_lambda", "mix_partner", "mix_text")  # batch fields of a mixup step
_TAG = 0x5A56  # single_source draws: default_rng([seed, _TAG, …])
_MIX = 0x4D58  # mixup draws
_BLOCK = 4096  # source choices are drawn in blocks of this many steps


class SingleSourceSampler(Sampler[list[tuple[int, int, int]]]):
    """Infinite batches of ``(source, image, caption)`` keys, one source per global batch
    (module docstring); ``transform``: the mixup the loader applies to every batch (or None)."""

    def __init__(
        self,
        n_captions: Sequence[np.ndarray],
        batch_size: int,
        seed: int,
        start: int = 0,
        shard: tuple[int, int] = (0, 1),
        transform: CoinFlipMixup | None = None,
    ) -> None:
        if batch_size % shard[1]:
            raise ConfigError(f"batch_size {batch_size} cannot be split into {shard[1]} equal shards")
        sizes = np.asarray([len(n) for n in n_captions], dtype=np.float64)
        small = [i for i, s in enumerate(sizes) if s < batch_size]
        if len(small) == len(sizes):
            raise ConfigError(f"single_source: every source is smaller than one batch of {batch_size}")
        if small:
            warnings.warn(
                f"single_source: source(s) {small} have fewer items than one batch of {batch_size} and "
                "never make a batch",
                stacklevel=2,
            )
        sizes[small] = 0
        self.p = sizes / sizes.sum()
        self.streams = {
            s: ChunkStream(np.arange(len(n)), n, batch_size, [seed, _TAG, 1, s])
            for s, n in enumerate(n_captions)
            if s not in small
        }
        self.batch_size, self.seed, self.start, self.shard = batch_size, seed, start, shard
        self.transform = transform

    def _choices(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, _TAG, 0, block])
        return rng.choice(len(self.p), size=_BLOCK, p=self.p)

    def sources(self, steps: int) -> np.ndarray:
        """The source of each global batch ``0 … steps−1``."""
        blocks = [self._choices(b) for b in range(-(-steps // _BLOCK))]
        return np.concatenate(blocks)[:steps] if blocks else np.empty(0, dtype=np.int64)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        used = np.bincount(self.sources(self.start), minlength=len(self.p))  # batches taken per source
        rank, world = self.shard
        local = self.batch_size // world
        k, block = self.start, None
        choices = np.empty(0, dtype=np.int64)
        while True:
            if block != k // _BLOCK:
                block = k // _BLOCK
                choices = self._choices(block)
            src = int(choices[k % _BLOCK])
            items, caps = self.streams[src](int(used[src]))
            used[src] += 1
            rows = [(src, i, c) for i, c in zip(items.tolist(), caps.tolist())]
            yield SampledBatch(rows[rank * local : (rank + 1) * local], k, rank * local, self.batch_size)
            k += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is infinite
        return 2**62


@dataclass(frozen=True)
class CoinFlipMixup:
    """ZeroVL's per-step mixup of images or texts (module docstring). ``prob``: probability that a
    step is mixed (ZeroVL's baseline: off; its DGA recipe: every step); ``alpha``: λ ~ Beta(α, α);
    ``image_prob``: probability that a mixed step mixes images rather than texts."""

    prob: float = 1.0
    alpha: float = 0.1
    image_prob: float = 0.5

    def __post_init__(self) -> None:
        if not (0 <= self.prob <= 1 and 0 <= self.image_prob <= 1) or not self.alpha > 0:
            raise ConfigError(
                f"mixup: prob and image_prob must lie in [0, 1] and alpha > 0, got prob={self.prob}, "
                f"image_prob={self.image_prob}, alpha={self.alpha}"
            )

    def draw(self, seed: int, step: int) -> tuple[float, str | None]:
        """``(λ, "image" | "text")`` of global batch ``step``, or ``(1.0, None)`` when it is not mixed."""
        rng = np.random.default_rng([seed, _MIX, step])
        u, lam, gamma = rng.random(), rng.beta(self.alpha, self.alpha), rng.random()
        if u >= self.prob:
            return 1.0, None
        return float(lam), "image" if gamma > 1 - self.image_prob else "text"

    def __call__(self, batch: dict[str, object], seed: tuple[int, int, int] | None) -> dict[str, object]:
        """Mix ``batch`` (this rank's rows; ``seed`` = ``(seed, step, offset)``) and add the fields."""
        if seed is None:
            raise InputError("mixup needs batches that carry their step (from a contrastkit sampler)")
        base, step, offset = seed
        images = [k for k in batch if k == "image" or k.startswith("image@")]
        rows = batch[images[0]] if images else batch.get("text")
        if rows is None:
            raise InputError("mixup needs image or text in the batch")
        b = len(rows)  # type: ignore[arg-type]
        lam, what = self.draw(int(base), int(step))
        if what == "image":
            if not images:
                raise InputError("mixup drew an image step but the batch has no images (data.modalities)")
            for key in images:
                x = batch[key].float()  # type: ignore[union-attr]
                mixed = (lam * x + (1 - lam) * x.flip(0)).round().clamp(0, 255).to(torch.uint8)
                batch[key] = mixed
        batch["mix_lambda"] = torch.full((b,), lam, dtype=torch.float32)
        flip = torch.arange(b - 1, -1, -1) if what else torch.arange(b)
        batch["mix_partner"] = flip + int(offset)
        batch["mix_text"] = torch.full((b,), int(what == "text"), dtype=torch.long)
        return batch
