"""Curation: filter a data source before training — by image–caption agreement under a model
(``clip_score``), image near-duplicates (``near_duplicates``) or caption complexity
(``complexity``) — and write the kept rows as a new ``csv`` source with a report of what was
removed and why.

```python
from contrastkit.curation import curate

report = curate("data/pairs.csv", [("clip_score", {"keep": 0.3})], "curated", model="runs/shapes-clip")
```
"""

from contrastkit.curation.complexity import CaptionComplexity, caption_complexity
from contrastkit.curation.filters import (
    FILTERS,
    ClipScore,
    Complexity,
    Filter,
    FilterInput,
    FilterResult,
    NearDuplicates,
    clip_score_keep,
    near_duplicate_keep,
)
from contrastkit.curation.run import FilterStep, curate, load_curation_model

__all__ = [
    "FILTERS",
    "CaptionComplexity",
    "ClipScore",
    "Complexity",
    "Filter",
    "FilterInput",
    "FilterResult",
    "FilterStep",
    "NearDuplicates",
    "caption_complexity",
    "clip_score_keep",
    "curate",
    "load_curation_model",
    "near_duplicate_keep",
]
