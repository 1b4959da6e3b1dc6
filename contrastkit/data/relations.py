"""Relation-conditioned batches (``data.relations``): each training pair carries a natural-language
relation and the group ids of the rows it links — the inputs of the ``rcml`` loss.

What: RCML ("Multimodal Representation Learning Conditioned on Semantic Relations", seed 108)
contrasts pairs under a relation description such as "the same colour". A labelled data set has
the relations already: each class task (Shapes' ``color``, ``shape``) is one. ``data.relations``
maps task names to their descriptions, ``{color: "the same colour", shape: "the same shape"}``.

Protocol: row ``k`` of a global batch (step ``t``, global position ``k``) draws relation
``r = ⌊u · R⌋`` of the ``R`` configured relations, ``u`` uniform from a counter hash of
``(seed, t, k)`` — so a resumed run and any number of loader workers see the same draws. The
batch gets ``relation`` (the description of each row's relation, tokenised like captions and
embedded by the text tower) and ``labels`` = ``r · (C_max + 1) + c``, ``c`` the row's class in
task ``r``: rows with equal labels share the relation *and* the class, i.e. they are related under
it. A row whose class is unknown in that task (label −1) gets a label no other row has
(``−1 − global row``): it relates only to its own pair.

Related: :mod:`contrastkit.losses.conditioned` (``rcml``), :func:`contrastkit.core.concepts.
unknown_entries` (the same counter hash for partial labels).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from contrastkit.core.counters import counter_uniform
from contrastkit.core.errors import ConfigError, InputError

__all__ = ["RELATION_KEY", "Relations", "check_relations"]

RELATION_KEY = "relation"  # batch key of the relation texts (then their token ids)


@dataclass(frozen=True)
class Relations:
    """The configured relations of one pair set: descriptions, and per relation the class labels
    of every image (``int64 [N]``, −1 = not in the task)."""

    texts: tuple[str, ...]
    labels: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, tasks: Mapping[str, object], relations: Mapping[str, str], name: str = "") -> Relations:
        """Relations from a pair set's class ``tasks`` (objects with ``labels``); an unknown task
        or an empty description is an error naming the tasks there are."""
        if not relations:
            raise ConfigError("data.relations is empty: map at least one class task to its description")
        missing = [t for t in relations if t not in tasks]
        if missing:
            raise InputError(
                f"data.relations names class tasks {missing} that {name or 'the data set'} does not "
                f"have; it has {sorted(tasks)}"
            )
        for task, text in relations.items():
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"data.relations.{task}: the description must be non-empty text")
        labels = tuple(np.asarray(tasks[t].labels, dtype=np.int64) for t in relations)  # type: ignore[attr-defined]
        return cls(tuple(relations.values()), labels)

    def batch(
        self, images: torch.Tensor, seed: int, step: int, offset: int
    ) -> tuple[list[str], torch.Tensor]:
        """Relation texts and group labels of the rows ``images`` (image indices, ``int64 [B]``) of
        global batch ``step``, this shard's rows starting at global position ``offset``."""
        rows = offset + np.arange(len(images), dtype=np.int64)
        u = counter_uniform(seed, np.full(len(rows), step, dtype=np.int64), rows)
        which = np.minimum((u * len(self.texts)).astype(np.int64), len(self.texts) - 1)
        idx = images.numpy()
        cls = np.stack([lab[idx] for lab in self.labels])[which, np.arange(len(idx))]
        span = 1 + max(int(lab.max(initial=-1)) for lab in self.labels)
        labels = np.where(cls >= 0, which * (span + 1) + cls, -1 - rows)
        return [self.texts[r] for r in which], torch.from_numpy(labels)


def check_relations(relations: Mapping[str, str], label_task: str | None) -> None:
    """Config-level checks of ``data.relations`` (a pair set checks its tasks when it is built)."""
    if not relations:
        return
    if label_task is not None:
        raise ConfigError(
            f"data.relations and data.label_task ({label_task!r}) both set batch labels: use one "
            "(relations label the rows by relation and class)"
        )
    for task, text in relations.items():
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"data.relations.{task}: the description must be non-empty text")
