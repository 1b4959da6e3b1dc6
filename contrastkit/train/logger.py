"""Metrics logging: ``metrics.jsonl`` (always), TensorBoard (if installed and enabled; requested
but not installed: one warning per process, naming the two fixes): every logged scalar, and at the
end of a run its configuration as hyperparameters with the last loss. ``contrastkit eval`` of a run
adds the evaluation metrics and the similarity image (:mod:`contrastkit.evaluation.report`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from contrastkit.core.io import atomic_write_text

__all__ = ["MetricsLogger", "read_metrics"]

_TB_MISSING = (
    "train.tensorboard is on but TensorBoard is not installed: metrics go to metrics.jsonl only "
    "(pip install tensorboard, or set train.tensorboard: false)"
)
_warned: list[bool] = []  # one warning per process, not one per run of a study or a test session
_log = logging.getLogger(__name__)  # unconfigured, Python prints a warning as the bare message line


class MetricsLogger:
    """Appends one JSON object per logged step to ``RUN/metrics.jsonl``.

    On resume, :meth:`truncate_after` drops lines written after the restored checkpoint so the
    file reads as one uninterrupted run.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = False, enabled: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled  # False on every rank but 0 of a multi-process run
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # TensorBoard is optional, but asked for: say so once
                if not _warned:
                    _warned.append(True)
                    _log.warning(_TB_MISSING)
            else:
                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.is_file():
            return
        keep = [r for r in read_metrics(self.path.parent) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **values}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def hparams(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        """The run's configuration as TensorBoard hyperparameters (the HPARAMS tab: flattened
        ``section.key`` entries; lists and ``None`` as text) with ``metrics`` beside them, and the
        whole config as text. Nothing without TensorBoard."""
        if self._tb is None:
            return
        flat = {
            k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in _flatten(config).items()
        }
        self._tb.add_hparams(flat, metrics, run_name=".")  # "." keeps it in this run's folder
        self._tb.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flat.items()))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All rows of a run's ``metrics.jsonl`` (a torn last line from a crash is ignored)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
