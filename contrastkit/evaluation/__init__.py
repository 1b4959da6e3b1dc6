"""Evaluation: zero-shot, retrieval, probes, geometry, compositional tests — on contrastkit runs,
local Hugging Face CLIP/SigLIP checkpoints, or any pair of embedding functions."""

from contrastkit.evaluation.encoders import Encoders, model_encoders
from contrastkit.evaluation.external import hf_encoders, hf_text_encoder
from contrastkit.evaluation.plots import plot_similarity
from contrastkit.evaluation.report import (
    TASKS,
    evaluate_examples,
    evaluate_model,
    evaluate_pairs,
    evaluate_run,
    format_table,
)
from contrastkit.evaluation.retrieval import (
    choose_backend,
    image_to_text_ranks,
    retrieval_metrics,
    retrieval_ranks,
    text_to_image_ranks,
)
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult
from contrastkit.evaluation.zeroshot import zero_shot_classifier, zero_shot_metrics

# Register the remaining task families (each module's @EVAL_TASKS.register runs at import).
from contrastkit.evaluation import (  # noqa: F401  isort: skip
    alignment,
    composed,
    compositional,
    cross_modal,
    decomposition,
    error_analysis,
    experts,
    geometry,
    instruct,
    multilabel,
    probes,
    same_object,
    tolerance,
)

__all__ = [
    "EVAL_TASKS",
    "TASKS",
    "Encoders",
    "EvalContext",
    "TaskResult",
    "choose_backend",
    "evaluate_examples",
    "evaluate_model",
    "evaluate_pairs",
    "evaluate_run",
    "format_table",
    "hf_encoders",
    "hf_text_encoder",
    "image_to_text_ranks",
    "model_encoders",
    "plot_similarity",
    "retrieval_metrics",
    "retrieval_ranks",
    "text_to_image_ranks",
    "zero_shot_classifier",
    "zero_shot_metrics",
]
