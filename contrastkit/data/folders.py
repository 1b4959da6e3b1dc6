"""Sources from folders and Hugging Face ``datasets``: ``imagefolder`` and ``hf``.

``imagefolder`` reads torchvision's class-per-folder layout (``ROOT/<class>/<image>``; a split
sub-folder ``ROOT/<split>/<class>/…`` is used when it exists). Each image's captions are the
prompt ``templates`` filled with its class name (``_`` and ``-`` read as spaces, or ``classnames``
given in the config), and the table carries a ``class`` task for zero-shot evaluation, linear
probes and label losses (``data.label_task: class``).

```yaml
data:
  name: imagefolder
  params: {root: photos, templates: ["a photo of a {}.", "a picture of a {}."]}
  splits: {train: {}, val: {}}      # photos/train/<class>/…, photos/val/<class>/…
  eval_splits: [val]
```

``hf`` opens a local folder written by ``datasets.Dataset.save_to_disk`` (``load_from_disk``; a
``DatasetDict`` is indexed by the split name) with an image column (the ``Image`` feature, read
undecoded as bytes or a path) and caption column(s); a ``ClassLabel`` column becomes a class
task with its names. Never downloads anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.core.errors import ConfigError, DataError, MissingFileError
from contrastkit.core.registry import PositiveInt
from contrastkit.data.pairs import ClassTask
from contrastkit.data.table import PAIR_KEY, PairTable
from contrastkit.data.tabular import DEFAULT_TEMPLATES, _captions, _image_ref, class_task, extra_column

__all__ = ["IMAGE_EXTENSIONS", "make_hf", "make_imagefolder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def _pretty(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").split())


def make_imagefolder(
    split: str,
    root: str | Path,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    classnames: dict[str, str] | None = None,
    limit: PositiveInt | None = None,
) -> PairTable:
    """A class-per-folder image tree as a :class:`PairTable` with a ``class`` task."""
    from torchvision.datasets.folder import find_classes, make_dataset

    base = Path(root).expanduser()
    if not base.is_dir():
        raise MissingFileError(f"imagefolder source: no folder at {base}")
    folder = base / split if (base / split).is_dir() else base
    try:
        classes, to_idx = find_classes(str(folder))
    except FileNotFoundError as err:
        raise DataError(f"imagefolder {folder}: {err}") from None
    samples = make_dataset(str(folder), to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    if not samples:
        raise DataError(f"imagefolder {folder}: no images with extensions {list(IMAGE_EXTENSIONS)}")
    if limit is not None:
        rng = np.random.default_rng(0)  # a class-balanced-in-expectation subset, not the first classes
        samples = [samples[i] for i in sorted(rng.permutation(len(samples))[:limit])]
    names = tuple((classnames or {}).get(c, _pretty(c)) for c in classes)
    captions = tuple(tuple(t.format(names[y]) for t in templates) for _, y in samples)
    labels = np.asarray([y for _, y in samples], dtype=np.int64)
    task = ClassTask(names, tuple(templates), labels)
    return PairTable([p for p, _ in samples], captions, {"class": task}, name=f"{folder.name}:{split}")


def make_hf(
    split: str,
    path: str | Path,
    image_column: str | None = "image",
    caption_columns: Sequence[str] = ("caption",),
    pair_column: str | None = None,
    label_columns: Sequence[str] = (),
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    extra_columns: Sequence[str] = (),
    text_columns: Sequence[str] = (),
    limit: PositiveInt | None = None,
) -> PairTable:
    """The ``split`` of a local Hugging Face ``datasets`` folder as a :class:`PairTable`."""
    import datasets

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise MissingFileError(f"hf source: no datasets folder at {folder}")
    try:
        ds: Any = datasets.load_from_disk(str(folder))
    except FileNotFoundError as err:
        raise MissingFileError(f"hf source {folder}: not a save_to_disk folder ({err})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ConfigError(f"hf source {folder}: no split {split!r}; splits are {list(ds)}")
        ds = ds[split]
    images_in = [image_column] if image_column else []
    pairs_in = [pair_column] if pair_column else []
    wanted = [*images_in, *caption_columns, *pairs_in, *label_columns, *extra_columns, *text_columns]
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise ConfigError(f"hf source {folder}: no column(s) {missing}; columns are {ds.column_names}")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    if len(ds) == 0:
        raise DataError(f"hf source {folder} ({split}) has no rows")
    if image_column and isinstance(ds.features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))  # bytes/paths, decoded in workers
    cols = {c: ds[c] for c in dict.fromkeys(wanted)}
    images = [_image_ref(v, folder) for v in cols[image_column]] if image_column else [None] * len(ds)
    captions = tuple(_captions(cols, caption_columns, None, r) for r in range(len(ds)))
    tasks = {}
    for c in label_columns:
        feat = ds.features[c]
        names = tuple(feat.names) if isinstance(feat, datasets.ClassLabel) else ()
        tasks[c] = class_task(cols[c], templates, names)
    extras = {c: extra_column(cols[c], text=False) for c in extra_columns}
    extras.update({c: extra_column(cols[c], text=True) for c in text_columns})
    if pair_column:
        extras[PAIR_KEY] = extra_column(cols[pair_column], text=True)
    return PairTable(images, captions, tasks, extras, name=f"{folder.name}:{split}")
