"""Zero-shot accuracy on a reference task during training (fine-tuning without forgetting).

:func:`zero_shot_tracker` makes a trainer callback ``(every, fn)``: every ``every`` steps it
embeds the reference images and the task's prompts with the model being trained (eval mode, no
gradient, then back to training mode) and logs ``track/<name>/top1`` to ``metrics.jsonl``.
"""

from __future__ import annotations

from collections.abc import Callable

from contrastkit.core.errors import InputError
from contrastkit.data.pairs import PairSet
from contrastkit.evaluation.encoders import model_encoders
from contrastkit.evaluation.late_interaction import is_token_set, late_zero_shot_metrics
from contrastkit.evaluation.zeroshot import zero_shot_classifier, zero_shot_metrics
from contrastkit.models.dual_encoder import DualEncoder

__all__ = ["zero_shot_accuracy", "zero_shot_tracker"]


def zero_shot_accuracy(model: DualEncoder, pairs: PairSet, task: str, batch_size: int = 256) -> dict:
    """:func:`zero_shot_metrics` of ``model`` on ``pairs.tasks[task]`` (restores train mode)."""
    if task not in pairs.tasks:
        raise InputError(f"{pairs.name} has no task {task!r}; tasks: {sorted(pairs.tasks)}")
    was_training = model.training
    enc = model_encoders(model, batch_size)
    t = pairs.tasks[task]
    images = enc.images(pairs.images)
    if is_token_set(images):  # late interaction: MaxSim scores averaged over prompts
        out = late_zero_shot_metrics(images, enc.texts, t.prompts(), t.labels)
    else:
        out = zero_shot_metrics(images, zero_shot_classifier(enc.texts, t.prompts()), t.labels)
    model.train(was_training)
    return out


def zero_shot_tracker(
    pairs: PairSet, task: str, every: int, name: str | None = None
) -> tuple[int, Callable[[int, DualEncoder], dict[str, float]]]:
    """A trainer callback logging zero-shot top-1 on ``pairs``' ``task`` every ``every`` steps."""
    if every < 1:
        raise InputError(f"every must be >= 1, got {every}")
    key = f"track/{name or pairs.name}/{task}/top1"

    def fn(step: int, model: DualEncoder) -> dict[str, float]:
        return {key: float(zero_shot_accuracy(model, pairs, task)["top1"])}

    return every, fn
