"""What one training step computes before its backward pass: the embeddings of a batch (the
towers, chunked with gradient caching when ``scale.chunk_size`` asks for it) and the objective on
them.

A pair loss gets the model's first two modalities (``loss(x, y, **aux)``; a one-tower model: the
modality and its view 1, or views 0 and 1 when the batch carries views only); a
:class:`~contrastkit.losses.base.MultiLoss` gets every embedding the model produced as
``loss(emb, **aux)``, with ``aux`` the batch fields it ``accepts``. Extra embeddings join the batch's
when their data asks for them: hard-negative captions, relation texts, long captions' other
positives, a continual stage's teacher features; with ``data.jigsaw`` the loss gets the image
tower's cell embeddings alone. Missing modalities reduce a pair loss to the rows that have both.
Called by :mod:`contrastkit.train.trainer`; the loss never sees ranks, chunks or the model.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import torch

from contrastkit.core.errors import ConfigError
from contrastkit.data.long_captions import LONG_KEY, encode_positives, long_caption_loss, owner_rows
from contrastkit.data.negatives import NEG_KEY
from contrastkit.data.relations import RELATION_KEY
from contrastkit.data.signals import present_masks
from contrastkit.losses.base import MultiLoss
from contrastkit.losses.class_prompts import CLASSES_KEY
from contrastkit.losses.present import graph_zero, pair_sub_batch
from contrastkit.models.aux import pop_aux_losses
from contrastkit.scale import chunks_to_keep, embed_in_chunks
from contrastkit.train.jigsaw import cell_embeddings
from contrastkit.train.session import Session

__all__ = ["compute_loss", "embed_batch", "loss_pair", "with_aux_losses"]


def _report(line: str) -> None:
    print(f"scale.graph_memory: {line}", file=sys.stderr, flush=True)


def embed_batch(s: Session, batch: dict[str, torch.Tensor]):
    """Embeddings of the batch; with ``scale.chunk_size`` below this rank's batch, the towers
    run chunk by chunk with gradient caching (same loss and gradients, one chunk's memory)."""
    chunk = s.cfg.scale.chunk_size
    amp = s.cfg.train.precision == "bf16"
    with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=amp), s.towers.step():
        if chunk is not None and chunk < len(next(iter(batch.values()))):
            sc = s.cfg.scale  # graphs of the chunks that fit are kept, not re-run (scale.grad_cache)
            if s.class_ids is not None:  # class_prompts reads the images, not the captions
                batch = {"image": batch["image"]}
            with s.towers.no_sync():  # DDP/FSDP: chunks accumulate; chunk 0's re-run syncs (pass 2)
                report = _report if s.dist.main else None
                plan = chunks_to_keep(
                    s.model, batch, chunk, sc.keep_chunks, sc.graph_bytes(), sc.partial_chunks, report
                )
                cached = embed_in_chunks(
                    s.model, batch, chunk, plan.full, keep_first=not s.towers.wrapped, partial=plan.partial
                )
            if s.class_ids is None:
                return cached.reps, cached
            # loss class_prompts: the K prompts run once, with an ordinary graph that the loss's
            # backward goes through (one small batch: not chunked). Outside no_sync: the text tower
            # runs nothing else this step, so under DDP that backward is the one that synchronises it
            return {**cached.reps, CLASSES_KEY: s.model.encode("text", s.class_ids)}, cached
        if s.cfg.data.jigsaw is not None:  # data.jigsaw: the montages' cell embeddings [B·G, d] alone
            return {"image": cell_embeddings(s.model, batch["image"], s.cfg.data.jigsaw.grid)}, None
        emb = s.model(batch)
        if s.teacher is not None:  # continual stage: the previous stage's features of the rehearsal rows
            emb.update(s.teacher.embed(batch))
        if NEG_KEY in batch:  # hard-negative captions (data.text_negatives): the text tower's too
            emb[NEG_KEY] = s.model.encode("text", batch[NEG_KEY])
        if RELATION_KEY in batch and RELATION_KEY not in emb:  # data.relations: texts, so the text tower
            emb[RELATION_KEY] = s.model.encode("text", batch[RELATION_KEY])
        if LONG_KEY in batch:  # data.long_captions: the image's other positive captions [B, M-1, d]
            emb[LONG_KEY] = encode_positives(s.model.encode, batch[LONG_KEY])
        if s.class_ids is not None:  # loss class_prompts: every class's prompt, every step [K, d]
            emb[CLASSES_KEY] = s.model.encode("text", s.class_ids)
        return emb, None


def compute_loss(s: Session, emb: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The objective on this step's embeddings: every key for a :class:`MultiLoss`, the model's
    first two modalities for a pair loss; ``aux`` = the batch fields the loss accepts, and
    ``text_ids`` = the caption token ids for a loss that accepts it (captioning, CoCa)."""
    accepts = s.objective.accepts
    aux = {k: v for k, v in batch.items() if k in accepts}
    if "negatives" in accepts and NEG_KEY in emb:  # one negative caption per pair: K = 1
        aux["negatives"] = emb[NEG_KEY].float()[:, None, :]
    if "text_ids" in accepts and "text_ids" not in aux and "text" in batch:
        aux["text_ids"] = batch["text"]
    masks = present_masks(batch)  # missing modalities: the loss uses only the rows that have them
    if isinstance(s.loss, MultiLoss):  # the objective may be a cross-rank wrapper of it
        if masks:
            aux["present"] = masks
        return s.objective({k: v.float() for k, v in emb.items()}, **aux)
    if s.cfg.data.jigsaw is not None:  # the cells alone: the jigsaw loss's second view is optional
        return s.objective(emb["image"].float(), None, **aux)
    pair = loss_pair(s, emb)
    missing = [m for m in pair if m not in emb]
    if missing:
        raise ConfigError(
            f"{type(s.objective).__name__} is a pair loss over the model's modalities {list(pair)}, "
            f"but the batch has no {missing} (data.modalities = {list(s.cfg.data.modalities)})"
        )
    a, b = (emb[m] for m in pair)
    if masks:  # exactly the loss of the sub-batch where both modalities are present
        own = [masks.get(m.partition("@")[0]) for m in pair]
        a, b, aux, keep = pair_sub_batch(a, b, aux, own)
        if keep < 2:  # nothing to contrast in this batch: a zero that keeps the graph
            return graph_zero(a, b)
    if LONG_KEY in emb:  # M captions per image: multi-positive (labels = global rows) or column mean
        rows = owner_rows(len(a), s.dist.rank)  # positions in the gathered batch: unique on any source
        return long_caption_loss(s.objective, a.float(), b.float(), emb[LONG_KEY].float(), rows, aux)
    return s.objective(a.float(), b.float(), **aux)


def loss_pair(s: Session, keys: Mapping[str, object]) -> tuple[str, ...]:
    """The two keys a pair loss contrasts: the model's first two modalities; one tower (text pairs,
    image views): the modality against its view 1, or view 0 against view 1 when ``keys`` (the
    embeddings or the batch) have views only (SimCLR: data.modalities [])."""
    pair = s.model.modalities[:2]
    if len(pair) == 1:
        m = pair[0]
        pair = (m, f"{m}@1") if m in keys else (f"{m}@0", f"{m}@1")
    return pair


def with_aux_losses(s: Session, loss: torch.Tensor) -> torch.Tensor:
    """``loss`` plus the auxiliary terms the towers recorded in this step's forward (LIMoE's routing
    entropies, FuseLIP's masked modelling: :mod:`contrastkit.models.aux`), each logged as ``aux/<name>``."""
    aux = pop_aux_losses(s.model)
    s.aux_log = {f"aux/{k}": float(v.detach()) for k, v in aux.items()}
    return loss + sum(v.float() for v in aux.values()) if aux else loss
