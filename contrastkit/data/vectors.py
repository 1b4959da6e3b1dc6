"""The ``vectors`` source: a fixed-length float vector per sample as a modality, with captions.

For modalities that arrive as features — brain recordings (fMRI-to-LLM alignment, seed paper 27),
embeddings of another model, tabular measurements — paired with text:

```yaml
data:
  name: vectors
  modalities: [vectors, text]
  params: {column: vector, caption_column: caption, label_column: label}
  splits:
    train: {path: data/train.parquet}
    test: {path: data/test.parquet}
model:
  towers:
    vectors: {name: mlp, params: {input_dim: 64, hidden_dim: 256, output_dim: 128}}
```

``path``: a Parquet file (``column``: a list or fixed-size-list column of floats; ``caption_column``;
optional ``label_column`` → a class task ``label`` for zero-shot evaluation with ``templates``) or a
``.npy`` array ``[N, D]`` with ``captions``: a UTF-8 text file of N lines (and optional ``labels``:
one class name per line). ``modality``: the batch key (default ``vectors``). A row whose vector is
missing (null) or holds a NaN is a sample **without** that modality (``present`` false,
:mod:`contrastkit.data.signals`), not an error; rows of other lengths are an error naming the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, DataError, MissingFileError
from contrastkit.data.pairs import ClassTask, PairSet
from contrastkit.data.signals import check_modality_name
from contrastkit.data.tabular import DEFAULT_TEMPLATES, class_task

__all__ = ["make_vectors", "read_vectors"]


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise MissingFileError(f"vectors source: no file at {path}")
    return [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]


def _rows_to_array(rows: Sequence[object], where: str) -> np.ndarray:
    """``[N, D]`` float32 with NaN rows for missing vectors; rows of another length are an error."""
    lengths = {len(r) for r in rows if r is not None}  # type: ignore[arg-type]
    if len(lengths) > 1:
        d = min(lengths)
        bad = next(i for i, r in enumerate(rows) if r is not None and len(r) != d)  # type: ignore[arg-type]
        raise DataError(f"{where}: vectors differ in length ({sorted(lengths)}); first odd row {bad}")
    if not lengths:
        raise DataError(f"{where}: every vector is missing")
    d = lengths.pop()
    out = np.full((len(rows), d), np.nan, dtype=np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = np.asarray([np.nan if v is None else v for v in r], dtype=np.float32)  # type: ignore[union-attr]
    return out


def read_vectors(
    path: Path,
    column: str,
    caption_column: str,
    label_column: str | None,
    captions: str | None,
    labels: str | None,
) -> tuple[np.ndarray, list[str], list[str] | None]:
    """``(vectors [N, D] with NaN rows for missing ones, captions, labels or None)`` of one file."""
    if not path.is_file():
        raise MissingFileError(f"vectors source: no file at {path}")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
            raise DataError(f"{path}: a .npy of vectors must be float [N, D], got {arr.dtype} {arr.shape}")
        if captions is None:
            raise ConfigError(
                f"vectors source: {path} is a .npy; give its captions as a text file (captions)"
            )
        caps = _lines(Path(captions).expanduser())
        labs = _lines(Path(labels).expanduser()) if labels else None
        for what, vals in (("captions", caps), ("labels", labs)):
            if vals is not None and len(vals) != len(arr):
                raise DataError(f"vectors source: {len(vals)} {what} lines for {len(arr)} vectors in {path}")
        return arr.astype(np.float32), caps, labs
    if path.suffix != ".parquet":
        raise ConfigError(f"vectors source: {path} must be a .parquet or .npy file")
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    wanted = [c for c in (column, caption_column, label_column) if c]
    lacking = [c for c in wanted if c not in table.column_names]
    if lacking:
        raise ConfigError(f"{path} has no columns {lacking}; it has {table.column_names}")
    arr = _rows_to_array(table.column(column).to_pylist(), f"{path} column {column!r}")
    caps = [str(c) if c is not None else "" for c in table.column(caption_column).to_pylist()]
    labs = None if not label_column else [v for v in table.column(label_column).to_pylist()]
    return arr, caps, labs


def make_vectors(
    split: str,
    path: str,
    column: str = "vector",
    caption_column: str = "caption",
    label_column: str | None = None,
    captions: str | None = None,
    labels: str | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    modality: str = "vectors",
) -> PairSet:
    """The ``split`` read from ``path`` (give each split its own ``path`` in ``data.splits``)."""
    check_modality_name(modality, "vectors.modality")
    if modality in ("image", "text", "attributes"):
        raise ConfigError(
            f"vectors.modality {modality!r} would shadow a PairSet field; name it e.g. 'vectors'"
        )
    arr, caps, labs = read_vectors(
        Path(path).expanduser(), column, caption_column, label_column, captions, labels
    )
    if any(not c for c in caps):
        raise DataError(f"vectors source {path}: {sum(not c for c in caps)} rows have no caption")
    absent = np.isnan(arr).any(axis=1)
    arr[absent] = 0.0  # absent rows hold zeros; present says which (contrastkit.data.signals)
    tasks: dict[str, ClassTask] = {}
    if labs is not None:
        tasks["label"] = class_task(labs, templates)
    present = {modality: torch.from_numpy(~absent)} if absent.any() else {}
    return PairSet(
        images=None,
        captions=tuple((c,) for c in caps),
        tasks=tasks,
        name=f"vectors:{Path(path).stem}:{split}",
        signals={modality: torch.from_numpy(arr)[:, None]},
        present=present,
    )
