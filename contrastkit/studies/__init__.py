"""Studies: conclusions about training procedures — many seeds, many settings, the Multi-Bootstrap."""

from contrastkit.studies.multibootstrap import (
    BootstrapResult,
    Interval,
    Runs,
    multibootstrap,
    seed_means,
    summarize,
)

__all__ = ["BootstrapResult", "Interval", "Runs", "multibootstrap", "seed_means", "summarize"]
