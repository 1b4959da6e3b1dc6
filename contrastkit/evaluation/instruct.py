"""E-INSTRUCT — instruction-conditioned retrieval: "find an image with the same colour as: <caption>".

Papers: VLM2Vec / MMEB (Jiang et al. 2024, "VLM2Vec: Training Vision-Language Models for Massive
Multimodal Embedding Tasks"): every MMEB query is an instruction plus an input, and the same
embedder must follow the instruction. This task measures it on any pair set whose images carry
class labels (``PairSet.tasks``: Shapes has ``shape``, ``color`` and ``shape+color``).

Protocol (task ``instruct``), per selected class task ``a`` (sub-task ``same_<a>``, a ``+`` in the
name written ``_and_``):

* gallery: the images labelled in ``a`` (label ≥ 0), less the *excluded* ones: with ``exclude:
  identical`` (default) every image whose labels equal the query image's in every labelled class
  task of the pair set (its own image and its exact duplicates: for Shapes, the same shape *and*
  colour), with ``exclude: own`` only the query's own image. A gallery item is relevant iff its
  label in ``a`` equals the query image's. Why exclude duplicates: a caption "a red circle" alone
  already retrieves red circles first, which share every attribute, so without the exclusion the
  caption-only baseline is saturated and the instruction cannot help (measured: P@1 ≥ 0.98 on
  the demo); with it, the ranking must choose between "red, another shape" and "circle, another
  colour", which only the instruction decides;
* queries: every caption of every image labelled in ``a`` that has at least one relevant item
  (others are left out; a class task that is the conjunction of the others, Shapes'
  ``shape+color``, has none under ``exclude: identical`` and reports nothing);
* query text: ``instruction.format(attribute=<a, "+" → " and ">)`` + caption, default
  ``"Find an image with the same color as: a small red circle"``. A text tower with an instruction
  slot (``decoder_llm``: ``system_prompt + prefix + task_prompt + text + suffix``) gets the
  instruction as its ``task_prompt`` (it replaces the configured one, through the tower's own
  template; :attr:`Encoders.instructed`); any other tower reads the concatenated string;
* ranking: cosine similarity (MaxSim for token sets), descending; equal scores rank the lower
  gallery index first (the project's tie rule);
* metrics, each a mean over queries with per-query arrays: ``precision@1`` (the top item is
  relevant) and ``map@k`` with ``AP@k = (1/min(k, R)) Σ_{i≤k} rel_i · P@i`` (R = relevant items
  in the gallery); ``chance@1`` = mean R / gallery size (precision@1 of a random ranking);
  ``n_queries``, ``n_gallery`` (labelled items, excluded ones included);
* baseline ``instruct/same_<a>/no_instruction/<metric>``: the same queries, caption only (the
  evaluated split's caption embeddings: a ``decoder_llm`` tower keeps its configured
  ``task_prompt``); ``instruct/same_<a>/gain/<metric>`` = with − without, per query (paired);
* text target (``targets`` holds ``"text"``): the gallery is the captions of the labelled images
  (caption only; the same exclusion, by image), the instruction ``text_instruction``; keys
  ``instruct/same_<a>/text/…``.

Options (``ctx.options["instruct"]``): ``tasks`` (null: every class task with labels),
``instruction`` (``"Find an image with the same {attribute} as: "``), ``text_instruction``
(``"Find a caption with the same {attribute} as: "``), ``targets`` (``["image", "text"]``),
``exclude`` (``identical`` or ``own``), ``k`` (10), ``chunk`` (1024 queries per score block).
Unknown keys raise ConfigError; a pair set with no query that has a relevant item (no class
labels, or no label shared outside a duplicate group) raises InputError.
Exactness: exact (no sampling). TEST ORACLES: an encoder whose instructed query is the one-hot of
the named attribute scores precision 1; an encoder that ignores the instruction scores the same
with and without it; metrics equal a brute-force loop. Related: ``composed`` (image + text query),
``zeroshot`` (the same labels as classes), :mod:`contrastkit.models.llm_embed`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.evaluation.encoders import Encoders
from contrastkit.evaluation.late_interaction import is_token_set, similarity
from contrastkit.evaluation.tasks import EVAL_TASKS, EvalContext, TaskResult

__all__ = ["INSTRUCT_DEFAULTS", "instruct_task", "instructed_texts", "instruction_metrics"]

INSTRUCT_DEFAULTS: dict[str, Any] = {
    "tasks": None,
    "instruction": "Find an image with the same {attribute} as: ",
    "text_instruction": "Find a caption with the same {attribute} as: ",
    "targets": ["image", "text"],
    "exclude": "identical",
    "k": 10,
    "chunk": 1024,
}
TARGETS = ("image", "text")


def instructed_texts(enc: Encoders, instruction: str, texts: list[str]) -> torch.Tensor:
    """L2-normalised embeddings of ``texts`` under ``instruction``: through the text tower's
    instruction slot when it has one (``enc.instructed``), else of ``instruction + text``."""
    if enc.instructed is not None:
        out = enc.instructed(instruction, list(texts))
    else:
        out = enc.texts([instruction + t for t in texts])
    return F.normalize(out.float(), dim=-1)


def _scores(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """``[Q, G]`` query–gallery scores: cosine of rows, MaxSim when either side is a token set."""
    if is_token_set(queries) or is_token_set(gallery):
        return similarity(gallery, queries).T
    return F.normalize(queries.float(), dim=-1) @ F.normalize(gallery.float(), dim=-1).T


def instruction_metrics(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_label: np.ndarray,
    gallery_label: np.ndarray,
    query_group: np.ndarray,
    gallery_group: np.ndarray,
    k: int = 10,
    chunk: int = 1024,
) -> dict[str, np.ndarray]:
    """Per-query ``precision@1``, ``map@k``, ``relevant`` (R) and ``gallery`` (items not excluded).
    Gallery items of the query's group (its own image, or its duplicates) are excluded; an item is
    relevant iff its label equals the query's; ties rank the lower gallery index first."""
    q_lab, g_lab = np.asarray(query_label), np.asarray(gallery_label)
    q_own, g_own = np.asarray(query_group), np.asarray(gallery_group)
    if len(q_lab) != len(queries) or len(q_own) != len(queries):
        raise InputError(f"{len(queries)} queries but {len(q_lab)} labels and {len(q_own)} groups")
    if len(g_lab) != len(gallery) or len(g_own) != len(gallery):
        raise InputError(f"{len(gallery)} gallery items but {len(g_lab)} labels and {len(g_own)} groups")
    if k < 1 or chunk < 1:
        raise ConfigError(f"k and chunk must be >= 1, got k={k}, chunk={chunk}")
    gl, go = torch.as_tensor(g_lab), torch.as_tensor(g_own)
    kk = min(k, len(gallery))
    out: dict[str, list[np.ndarray]] = {"precision@1": [], f"map@{k}": [], "relevant": [], "gallery": []}
    for s in range(0, len(queries), chunk):
        e = min(s + chunk, len(queries))
        own = go[None, :] == torch.as_tensor(q_own[s:e])[:, None]
        rel = (gl[None, :] == torch.as_tensor(q_lab[s:e])[:, None]) & ~own
        sc = _scores(queries[s:e], gallery).masked_fill(own, float("-inf"))
        order = torch.sort(sc, dim=1, descending=True, stable=True).indices[:, :kk]
        hits = rel.gather(1, order).double()  # excluded items sit last (−inf), never relevant
        n_rel = rel.sum(1).double()
        prec_at = hits.cumsum(1) / torch.arange(1, kk + 1, dtype=torch.float64)
        ap = (hits * prec_at).sum(1) / n_rel.clamp(max=k).clamp_min(1)
        out["precision@1"].append(hits[:, 0].numpy())
        out[f"map@{k}"].append(ap.numpy())
        out["relevant"].append(n_rel.numpy())
        out["gallery"].append((~own).sum(1).double().numpy())
    return {key: np.concatenate(v) for key, v in out.items()}


def _options(raw: dict[str, Any], available: list[str]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(INSTRUCT_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown instruct option(s) {unknown}; valid: {sorted(INSTRUCT_DEFAULTS)}")
    o = {**INSTRUCT_DEFAULTS, **raw}
    for key in ("instruction", "text_instruction"):
        if not isinstance(o[key], str):
            raise ConfigError(f"instruct option {key} must be a string, got {o[key]!r}")
        try:
            o[key].format(attribute="x")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"instruct option {key} may hold only the field {{attribute}}: {err}") from err
    bad = [t for t in o["targets"] if t not in TARGETS] if isinstance(o["targets"], list | tuple) else [1]
    if bad or not o["targets"]:
        raise ConfigError(f"instruct option targets must be a non-empty subset of {list(TARGETS)}")
    if o["exclude"] not in ("identical", "own"):
        raise ConfigError(f"instruct option exclude must be 'identical' or 'own', got {o['exclude']!r}")
    if int(o["k"]) < 1 or int(o["chunk"]) < 1:
        raise ConfigError(f"instruct options k and chunk must be >= 1, got {o['k']}, {o['chunk']}")
    tasks = available if o["tasks"] is None else list(o["tasks"])
    missing = [t for t in tasks if t not in available]
    if missing:
        raise InputError(f"instruct: {missing} not labelled class task(s) of the pair set: {available}")
    return {**o, "tasks": tasks}


def _subtask(name: str) -> tuple[str, str]:
    """(key, attribute word) of a class task: ``shape+color`` → ``same_shape_and_color``,
    ``shape and color``."""
    return "same_" + name.replace("+", "_and_"), name.replace("+", " and ")


def _record(out: dict, examples: dict, base: str, m: dict, plain: dict, k: int, n_gallery: int) -> None:
    for metric in ("precision@1", f"map@{k}"):
        for key, value in (
            (f"{base}/{metric}", m[metric]),
            (f"{base}/no_instruction/{metric}", plain[metric]),
            (f"{base}/gain/{metric}", m[metric] - plain[metric]),
        ):
            examples[key] = value
            out[key] = float(value.mean())
    out[f"{base}/chance@1"] = float((m["relevant"] / m["gallery"]).mean())
    out[f"{base}/n_queries"] = float(len(m["relevant"]))
    out[f"{base}/n_gallery"] = float(n_gallery)  # the labelled items, the query's own included


def _gallery(
    ctx: EvalContext, target: str, labels: np.ndarray, group: np.ndarray
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(embeddings, labels, exclusion group) of the ``target`` gallery: the labelled images, or
    the captions of the labelled images (caption only)."""
    owner = np.asarray(ctx.captions[1])
    if target == "image":
        items = np.flatnonzero(labels >= 0)
        return ctx.image_emb[torch.as_tensor(items)], labels[items], group[items]
    rows = np.flatnonzero(labels[owner] >= 0)
    return ctx.text_emb[torch.as_tensor(rows)], labels[owner[rows]], group[owner[rows]]


def _relevant_images(labels: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Per image, how many labelled images share its label outside its exclusion group."""
    lab = np.where(labels >= 0, labels, -1)
    same = np.unique(lab, return_inverse=True, return_counts=True)
    both = np.unique(np.stack([lab, group], 1), axis=0, return_inverse=True, return_counts=True)
    return same[2][same[1].ravel()] - both[2][both[1].ravel()]


@EVAL_TASKS.register("instruct")
def instruct_task(ctx: EvalContext) -> TaskResult:
    """Instruction-conditioned retrieval (VLM2Vec/MMEB): "Find an image with the same color as:
    <caption>" against the other labelled images (exact duplicates left out), per class task,
    with and without the instruction (precision@1, MAP@10; the tower's instruction slot if any)."""
    labelled = {n: np.asarray(t.labels) for n, t in ctx.pairs.tasks.items() if (t.labels >= 0).any()}
    o = _options(dict(ctx.options.get("instruct", {})), sorted(labelled))
    k, chunk = int(o["k"]), int(o["chunk"])
    texts, owner = ctx.captions[0], np.asarray(ctx.captions[1])
    if o["exclude"] == "own" or not labelled:
        group = np.arange(len(ctx.pairs))
    else:  # images with equal labels in every labelled class task form one group
        group = np.unique(np.stack(list(labelled.values()), 1), axis=0, return_inverse=True)[1].ravel()
    out: dict[str, float] = {}
    examples: dict[str, np.ndarray] = {}
    for name in o["tasks"]:
        labels = labelled[name]
        keep = (labels >= 0) & (_relevant_images(labels, group) > 0)
        rows = np.flatnonzero(keep[owner])
        if len(rows) == 0:
            continue  # no query with a relevant item in this split
        key, attribute = _subtask(name)
        q_lab, q_grp, caps = labels[owner[rows]], group[owner[rows]], [texts[i] for i in rows]
        plain = ctx.text_emb[torch.as_tensor(rows)]  # caption only: the baseline queries
        for target in o["targets"]:
            gallery, g_lab, g_grp = _gallery(ctx, target, labels, group)
            base = f"instruct/{key}" + ("" if target == "image" else "/text")
            instruction = o["instruction" if target == "image" else "text_instruction"]
            query = instructed_texts(ctx.enc, instruction.format(attribute=attribute), caps)
            m = instruction_metrics(query, gallery, q_lab, g_lab, q_grp, g_grp, k, chunk)
            p = instruction_metrics(plain, gallery, q_lab, g_lab, q_grp, g_grp, k, chunk)
            _record(out, examples, base, m, p, k, len(g_lab))
    if not out:
        raise InputError(
            "task 'instruct' needs class labels on the evaluated images (PairSet.tasks, e.g. Shapes' "
            "shape/color) where a query image shares a label with an image that is not its duplicate "
            f"(exclude: {o['exclude']}); {ctx.pairs.name or 'the pair set'} has none in "
            f"{o['tasks'] or 'its class tasks (it has none)'}"
        )
    return out, examples
