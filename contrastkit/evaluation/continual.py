"""E-CONTINUAL — forgetting of a continual run: the accuracy matrix, average accuracy and forgetting.

A continual run (:mod:`contrastkit.train.continual`) holds one model per stage. After stage ``l``
the model is evaluated zero-shot (prompt ensemble of the task's evaluation templates, as
E-ZEROSHOT) on the test images of the classes of every stage ``j ≤ l``: ``a[l, j]`` = top-1 over
those images, the prediction taken among ``candidates`` classes —

* ``seen`` (default, class-incremental): the classes of stages ``0 … l``;
* ``task`` (task-incremental): stage ``j``'s own classes;
* ``all``: every class of the task.

From the matrix (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning"), with ``T`` the
last stage: average accuracy ``A_T = mean_{j≤T} a[T, j]``; forgetting of stage ``j < T``:
``f_j = max_{j≤l<T} a[l, j] − a[T, j]``; average forgetting ``F_T = mean_{j<T} f_j`` (NaN for one
stage). :func:`continual_metrics` is the bare formula (tested against a hand computation).

WiSE-FT of the final model (:func:`wise_accuracies`): ``θ(α) = (1−α)·θ₀ + α·θ_T``
(:func:`contrastkit.train.wise.interpolate_weights`) with θ₀ the run's initial weights (stage 0's
start: the fresh initialisation of its seed, or ``train.init_from``; ``wise_from="first_stage"``:
stage 0's final model instead); batch-norm statistics of
``0 < α < 1`` are re-estimated on up to ``recalibrate`` training images a continual learner holds
at the end (the last stage's classes and its memory). Its row replaces ``a[T, ·]`` in ``A_T`` and
``F_T``. Several runs grouped by setting, with JSON, markdown and a plot:
:mod:`contrastkit.evaluation.continual_report` (what ``contrastkit continual`` writes).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import load_split
from contrastkit.data.pairs import PairSet
from contrastkit.evaluation.encoders import model_encoders
from contrastkit.evaluation.zeroshot import zero_shot_classifier
from contrastkit.models.dual_encoder import DualEncoder

__all__ = [
    "CANDIDATES",
    "WISE_FROM",
    "accuracy_matrix",
    "clean_json",
    "continual_metrics",
    "continual_summary",
    "task_accuracies",
    "wise_accuracies",
]

CANDIDATES = ("seen", "task", "all")
WISE_FROM = ("initial", "first_stage")  # θ₀ of WiSE-FT: the run's initial weights, or stage 0's final


def task_accuracies(
    scores: torch.Tensor | np.ndarray,
    labels: np.ndarray,
    stages: Sequence[Sequence[int]],
    upto: int,
    candidates: str = "seen",
) -> np.ndarray:
    """``a[upto, j]`` for ``j = 0 … upto``: top-1 on the rows labelled with stage ``j``'s classes,
    predicting the argmax of ``scores [N, C]`` over the ``candidates`` classes (module docstring)."""
    if candidates not in CANDIDATES:
        raise InputError(f"candidates must be one of {list(CANDIDATES)}, got {candidates!r}")
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    y = np.asarray(labels, dtype=np.int64)
    if s.ndim != 2 or y.shape != (s.shape[0],):
        raise InputError(f"scores must be [N, C] and labels [N], got {tuple(s.shape)} and {y.shape}")
    seen = [c for st in stages[: upto + 1] for c in st]
    out = np.full(upto + 1, np.nan)
    for j in range(upto + 1):
        rows = np.flatnonzero(np.isin(y, list(stages[j])))
        if not len(rows):
            raise InputError(f"no evaluation image of stage {j}'s classes {list(stages[j])}")
        cand = {"seen": seen, "task": list(stages[j]), "all": list(range(s.shape[1]))}[candidates]
        pred = np.asarray(cand)[s[rows][:, cand].argmax(1).numpy()]
        out[j] = float((pred == y[rows]).mean())
    return out


def continual_metrics(a: np.ndarray) -> dict[str, Any]:
    """Average accuracy and (average) forgetting of a stage × task accuracy matrix whose LAST row
    is the final model (Chaudhry et al.; module docstring). Entries above the diagonal are unused."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < a.shape[0] or a.shape[0] < 1:
        raise InputError(f"the accuracy matrix must be [stages, tasks] with tasks >= stages, got {a.shape}")
    last = a.shape[0] - 1
    final = a[last, : last + 1]
    forgetting = [float(a[j:last, j].max() - a[last, j]) for j in range(last)]
    return {
        "average_accuracy": float(final.mean()),
        "forgetting": forgetting,
        "average_forgetting": float(np.mean(forgetting)) if forgetting else math.nan,
    }


def _stage_ids(pairs: PairSet, task: str, stages: Sequence[Sequence[str]]) -> list[list[int]]:
    if task not in pairs.tasks:
        raise InputError(f"{pairs.name} has no task {task!r}; tasks: {sorted(pairs.tasks)}")
    names = pairs.tasks[task].classnames
    unknown = [c for s in stages for c in s if c not in names]
    if unknown:
        raise InputError(f"classes {unknown} are not classes of task {task!r}: {list(names)}")
    return [[names.index(c) for c in s] for s in stages]


def _scores(model: DualEncoder, pairs: PairSet, task: str, rows: np.ndarray, batch_size: int) -> torch.Tensor:
    """Cosine scores ``[len(rows), C]`` of the images ``rows`` against the task's class embeddings."""
    enc = model_encoders(model, batch_size)
    classifier = zero_shot_classifier(enc.texts, pairs.tasks[task].prompts())
    images = enc.images(pairs.image_tensor()[torch.as_tensor(rows)])
    return images.float() @ classifier.float().T


def _run(run_dir: str | Path) -> tuple[Any, Any, list[Path]]:
    from contrastkit.train import load_run_config
    from contrastkit.train.continual import stage_dirs
    from contrastkit.train.rundir import has_checkpoint

    cfg = load_run_config(run_dir)
    cont = cfg.continual
    if cont is None or cont.stage is not None:
        raise ConfigError(f"{run_dir} is not a continual run folder (its config has no top-level continual)")
    dirs = stage_dirs(run_dir, cont)
    missing = [str(d) for d in dirs if not has_checkpoint(d)]
    if missing:
        raise ConfigError(
            f"continual run {run_dir}: stage folder(s) {missing} have no checkpoint yet; finish the run "
            f"(contrastkit train --resume {run_dir}) before evaluating it"
        )
    return cfg, cont, dirs


def _eval_pairs(cfg: Any, split: str, n: int | None) -> PairSet:
    pairs = load_split(cfg.data, split)
    if n is not None:
        if n < 1:
            raise InputError(f"n must be >= 1, got {n}")
        pairs = pairs.subset(np.sort(np.random.default_rng(0).permutation(len(pairs))[:n]))
    return pairs


def accuracy_matrix(
    run_dir: str | Path,
    split: str = "test",
    candidates: str = "seen",
    n: int | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """``a[l, j]`` (module docstring) of a finished continual run on ``split`` (a seeded subset of
    ``n`` images if given); NaN above the diagonal."""
    from contrastkit.train import load_run

    cfg, cont, dirs = _run(run_dir)
    pairs = _eval_pairs(cfg, split, n)
    stages = _stage_ids(pairs, cont.task, cont.stages)
    labels = pairs.tasks[cont.task].labels
    a = np.full((len(dirs), len(dirs)), np.nan)
    for t, folder in enumerate(dirs):
        rows = np.flatnonzero(np.isin(labels, [c for s in stages[: t + 1] for c in s]))
        model = load_run(folder)[1]
        scores = _scores(model, pairs, cont.task, rows, batch_size)
        a[t, : t + 1] = task_accuracies(scores, labels[rows], stages, t, candidates)
    return a


def _calibration(run_dir: Path, cfg: Any, cont: Any, count: int) -> torch.Tensor | None:
    """Up to ``count`` training images of the last stage's classes and its memory (seeded)."""
    from contrastkit.train.continual import memory_path

    if count <= 0:
        return None
    train = load_split(cfg.data, cfg.data.train_split)
    ids = _stage_ids(train, cont.task, cont.stages)
    items = np.flatnonzero(np.isin(train.tasks[cont.task].labels, ids[-1]))
    mem = memory_path(run_dir, len(cont.stages) - 1)
    if mem.is_file():
        items = np.union1d(items, np.load(mem))
    pick = np.sort(np.random.default_rng(cfg.train.seed).permutation(items)[:count])
    return train.image_tensor()[torch.as_tensor(pick)]


def wise_accuracies(
    run_dir: str | Path,
    alphas: Sequence[float],
    split: str = "test",
    candidates: str = "seen",
    n: int | None = None,
    recalibrate: int = 512,
    batch_size: int = 256,
    wise_from: str = "initial",
) -> list[dict[str, Any]]:
    """For each α: ``{"alpha", "accuracies": a_α[j] for every stage j}`` of the WiSE-FT model
    ``(1−α)·θ₀ + α·θ_T`` (module docstring); ``wise_from``: θ₀ is the run's ``initial`` weights or
    the ``first_stage``'s final ones."""
    from contrastkit.train import load_run
    from contrastkit.train.wise import initial_model, interpolate_weights, recalibrate_batchnorm

    cfg, cont, dirs = _run(run_dir)
    pairs = _eval_pairs(cfg, split, n)
    stages = _stage_ids(pairs, cont.task, cont.stages)
    labels = pairs.tasks[cont.task].labels
    rows = np.flatnonzero(np.isin(labels, [c for s in stages for c in s]))
    model = load_run(dirs[-1])[1]
    theta1 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if wise_from not in WISE_FROM:
        raise InputError(f"wise_from must be one of {list(WISE_FROM)}, got {wise_from!r}")
    anchor = initial_model(dirs[0]) if wise_from == "initial" else load_run(dirs[0])[1]
    theta0 = anchor.state_dict()
    calibration = _calibration(Path(run_dir), cfg, cont, recalibrate)
    out = []
    for alpha in alphas:
        model.load_state_dict(interpolate_weights(theta0, theta1, float(alpha)))
        if calibration is not None and 0.0 < alpha < 1.0:
            recalibrate_batchnorm(model, calibration)
        scores = _scores(model.eval(), pairs, cont.task, rows, batch_size)
        acc = task_accuracies(scores, labels[rows], stages, len(stages) - 1, candidates)
        out.append({"alpha": float(alpha), "accuracies": acc.tolist()})
    return out


def clean_json(x: Any) -> Any:
    """NaN → None, numpy → Python: strict JSON."""
    if isinstance(x, dict):
        return {k: clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [clean_json(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(float(x)) else float(x)
    return x


def continual_summary(
    run_dir: str | Path,
    split: str = "test",
    candidates: str = "seen",
    wise: Sequence[float] = (),
    n: int | None = None,
    recalibrate: int = 512,
    wise_from: str = "initial",
) -> dict[str, Any]:
    """One run: its accuracy matrix, :func:`continual_metrics`, and each WiSE-FT α's row with its
    own average accuracy and forgetting (the run's earlier stages, then the WiSE-FT model)."""
    cfg, cont, _ = _run(run_dir)
    a = accuracy_matrix(run_dir, split, candidates, n)
    rows = []
    ws = (
        wise_accuracies(run_dir, wise, split, candidates, n, recalibrate, wise_from=wise_from) if wise else []
    )
    for w in ws:
        metrics = continual_metrics(np.vstack([a[:-1], np.asarray(w["accuracies"])[None]]))
        rows.append({**w, **metrics, "wise_from": wise_from})
    name = Path(run_dir).resolve().name
    return {
        "run": str(Path(run_dir)),  # as given: a relative path stays relative in the report
        "setting": re.sub(r"-s\d+$", "", name),
        "seed": cfg.train.seed,
        "method": cont.method,
        "stages": [list(s) for s in cont.stages],
        "split": split,
        "candidates": candidates,
        "matrix": a.tolist(),
        **continual_metrics(a),
        "wise": rows,
    }
