"""Sources from tables: ``csv``, ``tsv`` and ``parquet`` files of image paths and captions.

```yaml
data:
  name: csv                      # or tsv, parquet
  params:
    path: pairs.csv              # image paths in it are relative to this file (or image_root)
    image_column: image
    caption_columns: [caption]   # several columns, or one list column (parquet), or caption_sep
    label_columns: [label]       # optional: class tasks (zero-shot, probes, SupCon labels)
    extra_columns: [weight]      # optional: passed through to batches (numbers; strings → codes)
    text_columns: [caption_neg]  # optional: extra caption columns, tokenised into batches
    split_column: split          # optional: one file for all splits (rows whose value = the split)
  splits: {train: {}, test: {}}
  eval_splits: [test]
```

Columns are read with pyarrow. A column named in the config that the file lacks is a one-line
error listing the columns it has; an empty selection is an error. Image cells may hold a path, encoded
bytes, or a ``{"bytes", "path"}`` struct (the Hugging Face image layout); a missing file or an
undecodable image is skipped and counted when read, never at load time (so a 10M-row table opens
in seconds).
"""

from __future__ import annotations

import csv
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.core.errors import ConfigError, DataError, MissingFileError
from contrastkit.core.registry import PositiveInt
from contrastkit.data.pairs import ClassTask
from contrastkit.data.table import PAIR_KEY, ExtraColumn, PairTable

__all__ = ["DEFAULT_TEMPLATES", "class_task", "extra_column", "make_table", "read_columns"]

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def read_columns(path: Path, fmt: str) -> dict[str, list]:
    """Every column of a csv/tsv/parquet file as Python lists (pyarrow). Text files are read as
    strings throughout (a caption "1984" or a label "007" must not become a number); numbers in
    extra columns are parsed later (:func:`extra_column`)."""
    import pyarrow as pa

    if not path.is_file():
        raise MissingFileError(f"{fmt} source: no file at {path}")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pacsv

            delimiter = "\t" if fmt == "tsv" else ","
            with open(path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f, delimiter=delimiter), [])
            conv = pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header}, strings_can_be_null=False
            )
            table = pacsv.read_csv(path, pacsv.ReadOptions(), pacsv.ParseOptions(delimiter=delimiter), conv)
    except pa.ArrowInvalid as err:
        raise DataError(f"{fmt} source {path}: cannot read it as {fmt}: {err}") from None
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _require(columns: dict[str, list], names: Sequence[str], what: str, path: Path) -> None:
    missing = [n for n in names if n not in columns]
    if missing:
        raise ConfigError(f"{path.name}: no {what} column(s) {missing}; columns are {list(columns)}")


def _image_ref(value: Any, root: Path) -> str | bytes | None:
    if value is None or value == "":
        return None
    if isinstance(value, dict):  # Hugging Face image struct
        return value.get("bytes") or _image_ref(value.get("path"), root)
    if isinstance(value, bytes):
        return value
    p = Path(str(value))
    return str(p if p.is_absolute() else root / p)


def _captions(columns: dict[str, list], names: Sequence[str], sep: str | None, row: int) -> tuple[str, ...]:
    out: list[str] = []
    for n in names:
        v = columns[n][row]
        if isinstance(v, (list, tuple)):
            out.extend("" if c is None else str(c) for c in v)
        elif sep is not None and v is not None:
            out.extend(str(v).split(sep))
        else:
            out.append("" if v is None else str(v))
    return tuple(c.strip() for c in out) or ("",)


def class_task(values: Sequence[Any], templates: Sequence[str], classnames: Sequence[str] = ()) -> ClassTask:
    """A class task from per-row label values (``None``/empty → ``-1``): class names are the sorted
    distinct values unless ``classnames`` fixes them (integer labels then index into it)."""
    present = [v for v in values if v is not None and v != ""]
    if classnames:
        names = tuple(classnames)
        if all(isinstance(v, (int, np.integer)) for v in present):
            labels = [int(v) if v is not None else -1 for v in values]
        else:
            unknown = sorted({str(v) for v in present} - set(names))
            if unknown:
                raise ConfigError(
                    f"label values {unknown[:5]} are not among the class names {list(names)[:10]}"
                )
            labels = [names.index(str(v)) if v not in (None, "") else -1 for v in values]
    else:
        names = tuple(sorted({str(v) for v in present}))
        labels = [names.index(str(v)) if v not in (None, "") else -1 for v in values]
    if not names:
        raise DataError("a label column has no values")
    return ClassTask(names, tuple(templates), np.asarray(labels, dtype=np.int64))


def _number(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def extra_column(values: Sequence[Any], text: bool) -> ExtraColumn:
    """A pass-through column: text (tokenised), float/int numbers, or string categories."""
    if text:
        return ExtraColumn(tuple(values), "text")
    values = [_number(v) for v in values]  # text files hold numbers as strings
    present = [v for v in values if v is not None]
    if all(isinstance(v, (bool, int, np.integer)) for v in present) and len(present) == len(values):
        return ExtraColumn(tuple(int(v) for v in values), "int")
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in present):
        return ExtraColumn(tuple(values), "float")
    cats = tuple(sorted({str(v) for v in values}))
    return ExtraColumn(tuple(str(v) for v in values), "category", cats)


def make_table(
    split: str,
    path: str | Path,
    fmt: str = "csv",
    image_column: str | None = "image",
    caption_columns: Sequence[str] = ("caption",),
    caption_sep: str | None = None,
    pair_column: str | None = None,
    label_columns: Sequence[str] = (),
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    extra_columns: Sequence[str] = (),
    text_columns: Sequence[str] = (),
    split_column: str | None = None,
    image_root: str | Path | None = None,
    limit: PositiveInt | None = None,
) -> PairTable:
    """The ``split`` rows of a csv/tsv/parquet file as a :class:`PairTable` (module docstring)."""
    file = Path(path).expanduser()
    columns = read_columns(file, fmt)
    _require(columns, [image_column] if image_column else [], "image", file)
    _require(columns, caption_columns, "caption", file)
    _require(columns, [*label_columns, *extra_columns, *text_columns], "label/extra", file)
    _require(columns, [pair_column] if pair_column else [], "pair", file)
    n = len(columns[caption_columns[0]]) if caption_columns else 0
    rows = np.arange(n)
    if split_column is not None:
        _require(columns, [split_column], "split", file)
        values = np.asarray([str(v) for v in columns[split_column]])
        rows = np.flatnonzero(values == split)
        if len(rows) == 0:
            raise DataError(
                f"{file.name}: no rows with {split_column} = {split!r}; "
                f"values: {sorted({str(v) for v in values})}"
            )
    if limit is not None:
        rows = rows[:limit]
    if len(rows) == 0:
        raise DataError(f"{fmt} source {file} has no rows")
    root = Path(image_root).expanduser() if image_root else file.parent
    cols = {k: [v[i] for i in rows] for k, v in columns.items()}
    images = [_image_ref(v, root) for v in cols[image_column]] if image_column else [None] * len(rows)
    captions = tuple(_captions(cols, caption_columns, caption_sep, r) for r in range(len(rows)))
    tasks = {c: class_task(cols[c], templates) for c in label_columns}
    extras = {c: extra_column(cols[c], text=False) for c in extra_columns}
    extras.update({c: extra_column(cols[c], text=True) for c in text_columns})
    if pair_column:
        extras[PAIR_KEY] = extra_column(cols[pair_column], text=True)
    return PairTable(images, captions, tasks, extras, name=f"{file.name}:{split}")


def make_csv(split: str, path: str, **params: Any) -> PairTable:
    """Image–caption pairs from a comma-separated file (see :func:`make_table` for parameters)."""
    return make_table(split, path, "csv", **params)


def make_tsv(split: str, path: str, **params: Any) -> PairTable:
    """Image–caption pairs from a tab-separated file (see :func:`make_table` for parameters)."""
    return make_table(split, path, "tsv", **params)


def make_parquet(split: str, path: str, **params: Any) -> PairTable:
    """Image–caption pairs from a Parquet file (see :func:`make_table` for parameters)."""
    return make_table(split, path, "parquet", **params)


def _takes_table_params(fn: Any) -> None:
    """Give a file source ``make_table``'s parameters (less ``fmt``) as its signature and
    annotations, so the data source registry checks ``data.params`` names, types and ranges."""
    sig = inspect.signature(make_table)
    fn.__signature__ = sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "fmt"])
    fn.__annotations__ = {k: v for k, v in make_table.__annotations__.items() if k != "fmt"}


for _source in (make_csv, make_tsv, make_parquet):
    _takes_table_params(_source)
