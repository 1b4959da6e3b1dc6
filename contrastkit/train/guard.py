"""Step guard: detect non-finite losses/gradients and loss spikes; skip and count them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from contrastkit.core.errors import TrainingDivergedError
from contrastkit.train.config import GuardConfig

__all__ = ["StepGuard"]


@dataclass
class StepGuard:
    """Decides whether an optimizer step may be applied.

    ``check_loss`` runs before backward (non-finite or spiking loss), ``check_grad_norm`` after
    (non-finite gradient norm). A skipped step consumes its batch but leaves the weights and the
    optimizer untouched. State is checkpointed so resume continues the same decisions.
    """

    cfg: GuardConfig
    ema: float | None = None
    good_steps: int = 0
    consecutive: int = 0
    total: int = 0
    last_reason: str = ""

    def check_loss(self, loss: float) -> str | None:
        """A reason to skip, or ``None``."""
        if not math.isfinite(loss):
            return "non-finite loss"
        # a rise of more than (factor − 1)·|EMA| above the EMA: for a positive loss this is
        # "loss > factor × EMA"; unlike that form it stays meaningful for losses that go negative
        if (
            self.ema is not None
            and self.good_steps >= self.cfg.spike_warmup
            and loss - self.ema > (self.cfg.spike_factor - 1) * abs(self.ema)
        ):
            return f"loss spike ({loss:.4g} vs EMA {self.ema:.4g}, factor {self.cfg.spike_factor})"
        return None

    def check_grad_norm(self, norm: float) -> str | None:
        return None if math.isfinite(norm) else "non-finite gradient"

    def record(self, step: int, loss: float, reason: str | None) -> None:
        """Record the step's outcome; raise once too many steps were skipped."""
        if reason is None:
            self.consecutive = 0
            self.good_steps += 1
            d = self.cfg.ema_decay
            self.ema = loss if self.ema is None else d * self.ema + (1 - d) * loss
            return
        self.consecutive += 1
        self.total += 1
        self.last_reason = f"step {step}: {reason}"
        if self.consecutive >= self.cfg.max_consecutive or self.total >= self.cfg.max_total:
            raise TrainingDivergedError(
                f"training stopped: {self.total} skipped steps ({self.consecutive} in a row); "
                f"last: {self.last_reason}. Lower the learning rate, enable gradient clipping, "
                "or resume from the last checkpoint with a different seed."
            )

    def state_dict(self) -> dict:
        return {
            "ema": self.ema,
            "good_steps": self.good_steps,
            "consecutive": self.consecutive,
            "total": self.total,
            "last_reason": self.last_reason,
        }

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
