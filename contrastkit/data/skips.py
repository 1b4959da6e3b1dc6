"""Counting unusable samples: a long run never dies on one bad file, and never hides it.

Loaders skip a sample that cannot be used and report why, per batch, under the batch key
:data:`SKIPS_KEY` (a ``{reason: count}`` dict the trainer pops before the batch reaches the
model). Reasons (:data:`REASONS`):

============================  ==========================================================
``missing file``              the image path does not exist or cannot be opened
``bad image``                 the bytes are not a decodable image (truncated, corrupt, empty)
``empty caption``             the caption is empty or only whitespace
``missing key``               a shard sample lacks the configured image or text member
``bad shard``                 a tar shard breaks off (truncated or corrupt); the rest is lost
``truncated caption``         *not a skip*: the caption was longer than the text tower's
                              context and was truncated (counted so it is never silent)
============================  ==========================================================

and ``caption without sub-captions`` (*not a skip*): ``data.long_captions`` found no sub-caption
in the caption and used the whole caption in their place.

The trainer adds the counts up (they are part of the checkpoint, so a resumed run reports the
same totals), logs them in ``metrics.jsonl`` as ``skipped/<reason>``, shows the total in the
progress bar, and stops with :class:`~contrastkit.core.errors.DataError` once the skipped
fraction of samples read exceeds ``data.max_skip_fraction`` (after ``data.skip_grace`` samples, so
one bad file in the first batch does not end a run).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from contrastkit.core.errors import DataError

__all__ = ["NOT_SKIPS", "REASONS", "SKIPS_KEY", "SkipTally"]

SKIPS_KEY = "_skips"
REASONS = (
    "missing file",
    "bad image",
    "empty caption",
    "missing key",
    "bad shard",
    "truncated caption",
    "caption without sub-captions",
)
# counted, but the sample was used
NOT_SKIPS = frozenset({"truncated caption", "caption without sub-captions"})


class SkipTally:
    """Running totals of skipped samples per reason, and of samples delivered."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.delivered = 0

    def add(self, counts: Mapping[str, int], delivered: int) -> None:
        self.counts.update({k: int(v) for k, v in counts.items() if v})
        self.delivered += int(delivered)

    @property
    def skipped(self) -> int:
        return sum(v for k, v in self.counts.items() if k not in NOT_SKIPS)

    def fraction(self) -> float:
        read = self.delivered + self.skipped
        return self.skipped / read if read else 0.0

    def check(self, max_fraction: float, grace: int) -> None:
        """Raise :class:`DataError` if more than ``max_fraction`` of the samples read were skipped
        (only once ``grace`` samples have been read)."""
        read = self.delivered + self.skipped
        if read >= grace and self.fraction() > max_fraction:
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
            raise DataError(
                f"{self.skipped} of {read} samples read were unusable ({self.fraction():.1%} > "
                f"data.max_skip_fraction = {max_fraction:.1%}): {detail}. Fix the data (contrastkit data "
                "inspect SRC) or raise data.max_skip_fraction"
            )

    def log_values(self) -> dict[str, float]:
        return {
            "skipped_samples": float(self.skipped),
            **{f"skipped/{k}": float(v) for k, v in self.counts.items()},
        }

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "delivered": self.delivered}

    def load_state_dict(self, state: Mapping) -> None:
        self.counts = Counter({k: int(v) for k, v in state.get("counts", {}).items()})
        self.delivered = int(state.get("delivered", 0))
