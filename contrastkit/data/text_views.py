"""Text views of a class from prompt templates and demonstrations (``data.text_views``).

What: after Jian et al. 2022, "Contrastive Learning for Prompt-Based Few-Shot Language Learners"
(LM-SupCon): the views of an example are the example rendered with different prompt templates and
different demonstrations, and a supervised contrastive loss pulls together the views of one class.
Here the rendered thing is the class of each training row (``data.label_task``): row i with class c
gets K text views, batch keys ``text@0 … text@{K−1}``::

    text@k = sep.join([templates[k].format(d_1), …, templates[k].format(d_D), templates[k].format(c)])

``D = demonstrations`` prefixes (0 by default), each a class of the task drawn uniformly among the
others, independently per (step, view, row) from ``default_rng([*batch_seed, view, row, 7])`` — our
reading of "demonstrations" for class labels (the paper's are training sentences with their label
words). ``fix_articles`` turns "a orange" into "an orange". A row the task does not cover (label ≥
the number of classes: its own unique label) has its sampled caption as every view. The loss
``supcon_text_views`` (:mod:`contrastkit.losses.prompt_views`) runs SupCon over the views with the
batch ``labels`` as classes. Deterministic: a batch's views depend only on its seed and rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.pairs import english_articles

__all__ = ["TextViews", "TextViewsConfig", "render_views", "view_keys"]

_TAG = 7  # keeps these draws apart from other users of the batch seed


@dataclass(frozen=True)
class TextViewsConfig:
    """K ≥ 2 prompt templates (each with ``{}`` for the class name), ``demonstrations`` prefixes per
    view, joined by ``separator``; ``fix_articles``: "a orange" → "an orange"."""

    templates: tuple[str, ...] = ("a photo of a {}.", "a picture of a {}.")
    demonstrations: int = 0
    separator: str = " "
    fix_articles: bool = True

    def __post_init__(self) -> None:
        if not self.templates or any(not isinstance(t, str) or "{}" not in t for t in self.templates):
            raise ConfigError(
                "data.text_views.templates must be a non-empty list of texts with '{}', "
                f"got {self.templates!r}"
            )
        if len(self.templates) < 2:  # a row's positives are its other views (SupCon)
            raise ConfigError(
                f"data.text_views needs at least 2 templates (views), got {len(self.templates)}; one view "
                "is plain SupCon on the class names (loss supcon with data.label_task)"
            )
        d = self.demonstrations
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ConfigError(f"data.text_views.demonstrations must be an integer >= 0, got {d!r}")


def view_keys(cfg: TextViewsConfig) -> tuple[str, ...]:
    """``("text@0", …, "text@{K−1}")``."""
    return tuple(f"text@{k}" for k in range(len(cfg.templates)))


def render_views(
    cfg: TextViewsConfig,
    classnames: Sequence[str],
    labels: Sequence[int],
    captions: Sequence[str],
    seed: Sequence[int],
) -> list[list[str]]:
    """``views[k][i]``: view k of row i (see the module docstring); ``seed``: the batch's seed key."""
    n_cls = len(classnames)
    fix = english_articles if cfg.fix_articles else (lambda s: s)
    if cfg.demonstrations and n_cls < 2:
        raise InputError("data.text_views demonstrations need a task with at least 2 classes")
    views: list[list[str]] = []
    for k, template in enumerate(cfg.templates):
        rows = []
        for i, (c, cap) in enumerate(zip(labels, captions)):
            c = int(c)
            if not 0 <= c < n_cls:  # a row the task does not cover: its own caption
                rows.append(cap)
                continue
            parts = []
            if cfg.demonstrations:
                rng = np.random.default_rng([*(int(s) for s in seed), k, i, _TAG])
                draws = rng.integers(n_cls - 1, size=cfg.demonstrations)
                parts = [template.format(classnames[d + (d >= c)]) for d in draws]  # skip class c
            rows.append(fix(cfg.separator.join([*parts, template.format(classnames[c])])))
        views.append(rows)
    return views


class TextViews:
    """The collate step that adds ``text@k`` (lists of texts; tokenised with the other text keys) from
    the batch's ``labels`` and ``text``. Picklable."""

    def __init__(self, cfg: TextViewsConfig, classnames: Sequence[str]) -> None:
        self.cfg, self.classnames = cfg, tuple(classnames)

    def __call__(self, out: dict[str, object], seed: Sequence[int] | None) -> None:
        labels = out.get("labels")
        if not isinstance(labels, torch.Tensor) or "text" not in out:
            raise InputError("data.text_views needs batches with labels (data.label_task) and text")
        if self.cfg.demonstrations and seed is None:
            raise InputError("data.text_views demonstrations need batches that carry their seed (_seed)")
        views = render_views(self.cfg, self.classnames, labels.tolist(), out["text"], seed or ())  # type: ignore[arg-type]
        out.update(zip(view_keys(self.cfg), views))
