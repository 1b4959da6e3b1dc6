"""R-ERRORS — per-example error analysis: zero-shot confusions, retrieval failures, run disagreements.

Three views of what a model gets wrong on the evaluated split (evaluation only):

* Confusions, per labelled class task (Shapes: ``shape``, ``color``, ``shape+color``): the zero-shot
  predictions of the ``zeroshot`` task — the same classifier (:func:`~contrastkit.evaluation.zeroshot.
  zero_shot_classifier`) and the same top-1 rule — counted in ``M[true, pred]`` over the labelled
  images. ``error_rate = 1 − trace(M)/n`` (= 1 − ``zeroshot/<task>/top1``); the hardest confusions
  are the off-diagonal cells with count > 0, by count (desc), then true and predicted class index;
  ``top_confusion_rate = M[a, b]/n`` of the first (the share of all labelled images lost to the
  single most frequent confusion; 0 without errors).
* Retrieval failures, image→text (the query is the image, so its thumbnail shows the failure): the
  images whose best own caption is not ranked first — the ``retrieval`` task's exact 0-based ranks
  (ties: lower index; dense path). ``failure_rate`` = their share (= 1 − image→text R@1); the worst
  ``n_failures`` (rank desc, then image index) are listed with their best own caption, its 1-based
  rank and the 5 highest-scoring captions (score desc, then caption index; identical captions of
  other images have identical embeddings, so a "failure" may be a tie lost to a lower index).
* Disagreements with another run (``compare``: a run folder, loaded with :func:`~contrastkit.
  evaluation.multistage.run_encoders` as ``contrastkit eval`` does, or an :class:`Encoders`): per
  class task, the share of labelled images whose top-1 predictions differ. Each run's margin on image
  i is ``m = s(true) − max_{c ≠ true} s(c)`` (cosines; > 0: right with room to spare); pairs are
  ordered by ``|m_this − m_other|`` (desc), then image index.

Metrics (floats): ``errors/<task>/error_rate``, ``errors/<task>/top_confusion_rate``, ``errors/<task>
/n``, ``errors/retrieval/failure_rate``, ``errors/retrieval/n_failures``; with ``compare``:
``errors/compare/<task>/disagreement`` and ``errors/compare/disagreement`` (pooled over the tasks'
labelled images). Per-example: ``error_rate`` (0/1 per labelled image), ``failure_rate`` (per
image), ``disagreement`` (per labelled image). Files in ``plot_dir``: ``confusion_<task>.png``
(row-normalised), ``errors/confusion_<task>.json`` (class names, counts, top confusions),
``errors/failures.json`` — ``{"retrieval": [{"image", "caption", "rank", "top5"}], "confusions":
{"<task>": [{"true", "pred", "count"}]}}``, ``image`` a PNG thumbnail in ``errors/`` —, and
``errors/compare.json``. Options (``ctx.options["errors"]``): ``tasks`` (all labelled), ``top_confusions``
(10), ``n_failures`` (20), ``thumbnail`` (80 px), ``compare`` (None), ``n_compare`` (20),
``batch_size`` (256, the compared run's encoders). TEST ORACLES: a planted confusion gives the
expected matrix; planted retrieval failures are listed with their ranks; a run against itself
disagrees on 0 images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.core.io import atomic_path, atomic_write_json, save_png
from contrastkit.data.pairs import ClassTask
from contrastkit.evaluation.encoders import Encoders
from contrastkit.evaluation.late_interaction import is_token_set
from contrastkit.evaluation.retrieval import retrieval_ranks
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult
from contrastkit.evaluation.zeroshot import zero_shot_classifier

__all__ = [
    "ERROR_DEFAULTS",
    "confusion_matrix",
    "errors_task",
    "image_failures",
    "plot_confusion",
    "top_confusions",
    "zero_shot_scores",
]

ERROR_DEFAULTS: dict[str, Any] = {
    "tasks": None,
    "top_confusions": 10,
    "n_failures": 20,
    "thumbnail": 80,
    "compare": None,
    "n_compare": 20,
    "batch_size": 256,
}


def zero_shot_scores(
    image_emb: torch.Tensor, enc: Encoders, task: ClassTask
) -> tuple[torch.Tensor, np.ndarray]:
    """``(scores [N, C], top-1 [N])``: the ``zeroshot`` task's cosines and prediction (its classifier,
    its ``topk`` rule) for every image, labelled or not."""
    w = zero_shot_classifier(enc.texts, task.prompts())
    scores = F.normalize(image_emb.float(), dim=-1) @ F.normalize(w.float(), dim=-1).T
    pred = scores.topk(min(5, scores.shape[1]), dim=1).indices[:, 0]
    return scores, pred.numpy()


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """int64 ``[C, C]`` counts of ``(labels[i], pred[i])`` over the labelled rows (label ≥ 0)."""
    pred, labels = np.asarray(pred, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if pred.shape != labels.shape:
        raise InputError(f"pred {pred.shape} and labels {labels.shape} must have the same shape")
    keep = labels >= 0
    if (labels[keep] >= n_classes).any() or (pred[keep] < 0).any() or (pred[keep] >= n_classes).any():
        raise InputError(f"a label or prediction lies outside the {n_classes} classes")
    return np.bincount(labels[keep] * n_classes + pred[keep], minlength=n_classes**2).reshape(n_classes, -1)


def top_confusions(
    cm: np.ndarray, classnames: tuple[str, ...] | list[str], k: int = 10
) -> list[dict[str, Any]]:
    """The ``k`` largest off-diagonal cells with count > 0 as ``{"true", "pred", "count"}``, by
    count (desc), then true class, then predicted class (index order)."""
    off = np.array(cm, dtype=np.int64, copy=True)
    np.fill_diagonal(off, 0)
    t, p = np.nonzero(off)
    order = np.lexsort((p, t, -off[t, p]))[:k]
    return [
        {"true": classnames[t[i]], "pred": classnames[p[i]], "count": int(off[t[i], p[i]])} for i in order
    ]


def image_failures(
    image_emb: torch.Tensor, text_emb: torch.Tensor, owner: np.ndarray, n: int, chunk: int = 4096
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``(0-based image→text ranks [I], worst n failures)``; a failure ``{"index", "rank" (1-based),
    "caption" (index of its best own caption), "top5" (caption indices)}``, worst first."""
    _, i2t = retrieval_ranks(image_emb, text_emb, owner, chunk=chunk, backend="dense")
    failed = np.flatnonzero(i2t > 0)
    worst = failed[np.lexsort((failed, -i2t[failed]))][:n]
    x, t = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)
    owner = np.asarray(owner)
    out = []
    for i in worst:
        s = (x[i] @ t.T).numpy()
        own = np.flatnonzero(owner == i)
        best = own[
            s[own] == s[own].max()
        ].min()  # retrieval's rule: lowest-index own caption at the best score
        top = np.lexsort((np.arange(len(s)), -s))[:5]
        out.append({"index": int(i), "rank": int(i2t[i]) + 1, "caption": int(best), "top5": top.tolist()})
    return i2t, out


def plot_confusion(cm: np.ndarray, classnames: tuple[str, ...] | list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted; a row without images
    is blank), class names on both axes, the count in each cell when C ≤ 16."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = len(classnames)
    rows = cm.sum(1, keepdims=True)
    norm = np.where(rows > 0, cm / np.maximum(rows, 1), np.nan)
    side = max(4.0, 0.22 * c + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    font = 8 if c <= 16 else 6 if c <= 40 else 5
    ax.set_xticks(range(c), classnames, rotation=90, fontsize=font)
    ax.set_yticks(range(c), classnames, fontsize=font)
    ax.set_xlabel("predicted class", fontsize=8)
    ax.set_ylabel("true class", fontsize=8)
    if c <= 16:
        for i, j in zip(*np.nonzero(cm)):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=6,
                color="k" if norm[i, j] < 0.6 else "w",
            )
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="share of the true class's images")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def _thumbnail(image: torch.Tensor, path: Path, size: int) -> None:
    """A uint8 ``[3, H, W]`` image as a PNG with its longer side ``size`` px (nearest neighbour when
    enlarging, so small synthetic images stay sharp)."""
    from PIL import Image

    im = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    scale = size / max(im.size)
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def _options(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(ERROR_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown errors option(s) {unknown}; valid: {sorted(ERROR_DEFAULTS)}")
    o = {**ERROR_DEFAULTS, **raw}
    if isinstance(o["tasks"], str):
        o["tasks"] = [o["tasks"]]
    counts = ("top_confusions", "n_failures", "thumbnail", "n_compare", "batch_size")
    if any(isinstance(o[k], bool) or not isinstance(o[k], int) or o[k] < 1 for k in counts):
        raise ConfigError(f"errors options {list(counts)} must be integers >= 1, got {o}")
    return o


def _other_encoders(compare: Any, batch_size: int) -> tuple[Encoders, str]:
    if isinstance(compare, Encoders):
        return compare, "encoders given in the options"
    from contrastkit.evaluation.multistage import run_encoders

    path = Path(compare).expanduser()
    if not (path / "config.yaml").is_file():
        raise InputError(f"errors.compare: {path} is not a contrastkit run folder (no config.yaml)")
    return run_encoders(path, batch_size)[3], str(path.resolve())


def _margins(scores: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """``s(true) − max_{c ≠ true} s(c)`` per labelled row (float64)."""
    s = scores.double()
    y = torch.as_tensor(labels, dtype=torch.long)
    true = s.gather(1, y[:, None])[:, 0]
    return (true - s.scatter(1, y[:, None], float("-inf")).max(1).values).numpy()


def _compare(
    ctx: EvalContext, o: dict[str, Any], tasks: dict[str, ClassTask], mine: dict
) -> tuple[dict, dict, dict]:
    """Disagreement metrics, per-example arrays and the compare.json record against ``o["compare"]``."""
    enc, where = _other_encoders(o["compare"], o["batch_size"])
    img = F.normalize(enc.images(ctx.pairs.image_tensor()).float(), dim=-1)
    out: dict[str, float] = {}
    ex: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {"other": where, "disagreement": {}, "pairs": {}}
    for name, task in tasks.items():
        keep = np.flatnonzero(np.asarray(task.labels) >= 0)
        labels = np.asarray(task.labels)[keep]
        (s_a, p_a), (s_b, p_b) = mine[name], zero_shot_scores(img, enc, task)
        differ = p_a[keep] != p_b[keep]
        rows = torch.from_numpy(keep)
        m_a, m_b = _margins(s_a[rows], labels), _margins(s_b[rows], labels)
        key = f"errors/compare/{name}/disagreement"
        ex[key] = differ.astype(np.float64)
        out[key] = record["disagreement"][name] = float(differ.mean())
        idx = np.flatnonzero(differ)
        gap = np.abs(m_a - m_b)[idx]
        names = task.classnames
        record["pairs"][name] = [
            {
                "index": int(keep[j]),
                "true": names[labels[j]],
                "pred": names[p_a[keep[j]]],
                "pred_other": names[p_b[keep[j]]],
                "margin": float(m_a[j]),
                "margin_other": float(m_b[j]),
            }
            for j in idx[np.lexsort((idx, -gap))][: o["n_compare"]]
        ]
    pooled = np.concatenate(list(ex.values())) if ex else np.zeros(0)
    out["errors/compare/disagreement"] = float(pooled.mean()) if len(pooled) else float("nan")
    return out, ex, record


def _confusions(
    ctx: EvalContext, tasks: dict[str, ClassTask], o: dict[str, Any], folder: Path | None
) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Per task: metrics, per-example errors, (scores, predictions), top confusions; figures."""
    out: dict[str, float] = {}
    ex: dict[str, np.ndarray] = {}
    mine, confusions = {}, {}
    for name, task in tasks.items():
        _, pred = mine[name] = zero_shot_scores(ctx.image_emb, ctx.enc, task)
        labels = np.asarray(task.labels)
        keep = labels >= 0
        cm = confusion_matrix(pred, labels, len(task.classnames))
        top = confusions[name] = top_confusions(cm, task.classnames, o["top_confusions"])
        n = int(keep.sum())
        ex[f"errors/{name}/error_rate"] = (pred[keep] != labels[keep]).astype(np.float64)
        out[f"errors/{name}/error_rate"] = float(ex[f"errors/{name}/error_rate"].mean())
        out[f"errors/{name}/top_confusion_rate"] = top[0]["count"] / n if top else 0.0
        out[f"errors/{name}/n"] = float(n)
        if folder is not None:
            title = f"{ctx.pairs.name}: zero-shot confusions, task {name} (rows normalised)"
            plot_confusion(cm, task.classnames, folder.parent / f"confusion_{name}.png", title)
            record = {"classnames": list(task.classnames), "counts": cm.tolist(), "top": top}
            atomic_write_json(folder / f"confusion_{name}.json", record)
    return out, ex, mine, confusions


def _write_failures(
    ctx: EvalContext, worst: list[dict[str, Any]], confusions: dict, folder: Path, size: int
) -> None:
    """``failures.json`` and the failed images' thumbnails (earlier thumbnails removed first)."""
    for old in folder.glob("image_*.png"):  # from an earlier evaluation into the same folder
        old.unlink()
    texts = ctx.captions[0]
    retrieval = []
    for f in worst:
        png = f"image_{f['index']:06d}.png"
        _thumbnail(ctx.pairs.image_tensor()[f["index"]], folder / png, size)
        top5 = [texts[j] for j in f["top5"]]
        retrieval.append({"image": png, "caption": texts[f["caption"]], "rank": f["rank"], "top5": top5})
    atomic_write_json(folder / "failures.json", {"retrieval": retrieval, "confusions": confusions})


@EVAL_TASKS.register("errors")
def errors_task(ctx: EvalContext) -> TaskResult:
    """Error analysis: zero-shot confusions, image→text retrieval failures, disagreements with another
    run. Per labelled class task, the zeroshot task's top-1 predictions counted in a
    confusion matrix M[true, pred]: error_rate = 1 − trace(M)/n, top_confusion_rate = largest
    off-diagonal count / n. Image→text retrieval (retrieval's exact ranks, ties by lower index):
    failure_rate = share of images whose best own caption is not ranked first. With compare (another
    run): disagreement = share of labelled images whose top-1 predictions differ (per task; pooled).

    Files (confusion figures, failures.json with thumbnails, compare.json): the module docstring."""
    o = _options(dict(ctx.options.get("errors", {})))
    if is_token_set(ctx.image_emb) or is_token_set(ctx.text_emb):
        raise InputError("the errors task needs one embedding per image and text, not token sets")
    labelled = {k: t for k, t in ctx.pairs.tasks.items() if (np.asarray(t.labels) >= 0).any()}
    wanted = list(labelled) if o["tasks"] is None else list(o["tasks"])
    missing = sorted(set(wanted) - set(labelled))
    if missing:
        raise ConfigError(f"errors.tasks names {missing}; labelled class tasks: {sorted(labelled)}")
    tasks = {k: labelled[k] for k in wanted}
    plot_dir = ctx.options.get("plot_dir")
    folder = Path(plot_dir) / "errors" if plot_dir else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    out, ex, mine, confusions = _confusions(ctx, tasks, o, folder)
    i2t, worst = image_failures(ctx.image_emb, ctx.text_emb, ctx.captions[1], o["n_failures"])
    ex["errors/retrieval/failure_rate"] = (i2t > 0).astype(np.float64)
    out["errors/retrieval/failure_rate"] = float(ex["errors/retrieval/failure_rate"].mean())
    out["errors/retrieval/n_failures"] = float((i2t > 0).sum())
    if o["compare"] is not None:
        metrics, arrays, record = _compare(ctx, o, tasks, mine)
        out |= metrics
        ex |= arrays
        if folder is not None:
            atomic_write_json(folder / "compare.json", record)
    if folder is not None:
        _write_failures(ctx, worst, confusions, folder, o["thumbnail"])
    return out, ex
