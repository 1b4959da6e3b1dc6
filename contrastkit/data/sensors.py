"""The ``series`` data set: sensor recordings paired with class-templated captions.

A built-in data set over :func:`contrastkit.data.series.load_series` (UCR/UEA sets shipped in the
sktime wheel: BasicMotions, JapaneseVowels, …): each sample is a multichannel recording — the
signal ``series``, ``float [C, T]`` in batches — whose captions are every *training* template of
the set filled with its class name ("a person walking", "someone is walking", …; one is drawn per
epoch, like Shapes' captions), and one class task ``class`` whose zero-shot prompts use the set's
*evaluation* templates, none of which is a caption, so zero-shot accuracy measures transfer to
unseen wording. No images: evaluate with ``cross_modal`` (docs/modalities.md).

```yaml
data:
  name: series
  params: {set_name: BasicMotions}
  modalities: [series, text]
  splits: {train: {}, test: {}}
  eval_splits: [test]
model:
  towers:
    series: {name: series_cnn, params: {in_channels: 6}}
```
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from contrastkit.core.registry import PositiveInt
from contrastkit.data.pairs import ClassTask, PairSet
from contrastkit.data.series import SPLITS, load_series

__all__ = ["SPLITS", "make_series"]


def make_series(
    split: str = "train",
    set_name: str = "BasicMotions",
    length: PositiveInt | None = None,
    fit: Literal["resample", "pad"] = "resample",
) -> PairSet:
    """The ``split`` (``train``/``test``) of series set ``set_name`` as a PairSet without images."""
    data = load_series(set_name, split, length=length, fit=fit)
    names = data.classnames
    labels = data.labels.numpy().astype(np.int64)
    captions = tuple(tuple(t.format(names[y]) for t in data.templates) for y in labels)
    return PairSet(
        images=None,
        captions=captions,
        tasks={"class": ClassTask(names, data.eval_templates, labels)},
        name=f"{set_name}:{split}",
        signals={"series": data.values[:, None]},
    )
