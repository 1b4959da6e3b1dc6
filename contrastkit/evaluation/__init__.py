"""Evaluation: zero-shot classification, retrieval, plots and run reports."""

from contrastkit.evaluation.encoders import Encoders, model_encoders
from contrastkit.evaluation.plots import plot_similarity
from contrastkit.evaluation.report import TASKS, evaluate_examples, evaluate_pairs, evaluate_run, format_table
from contrastkit.evaluation.retrieval import (
    image_to_text_ranks,
    retrieval_metrics,
    text_to_image_ranks,
)
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult
from contrastkit.evaluation.zeroshot import zero_shot_classifier, zero_shot_metrics

__all__ = [
    "EVAL_TASKS",
    "TASKS",
    "Encoders",
    "EvalContext",
    "TaskResult",
    "evaluate_examples",
    "evaluate_pairs",
    "evaluate_run",
    "format_table",
    "image_to_text_ranks",
    "model_encoders",
    "plot_similarity",
    "retrieval_metrics",
    "text_to_image_ranks",
    "zero_shot_classifier",
    "zero_shot_metrics",
]
