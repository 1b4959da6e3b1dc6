"""Teacher embeddings for the ``b3`` sampler (S-B3): load a teacher, embed the training items, cache.

The data layer cannot load models, so the trainer does this before it builds the training loader:
``data.sampler: {name: b3, params: {teacher: T, ...}}`` with ``T`` one of

* a contrastkit run folder (its newest checkpoint; any towers it trained),
* ``hf:DIR`` — a local transformers CLIPModel/SiglipModel folder (a bare folder with
  ``config.json`` is read the same way),
* ``open_clip:NAME:CHECKPOINT`` or ``open_clip:DIR`` — a local open_clip model.

Every training item ``i`` gets a query embedding ``q_i`` = the teacher's image embedding and a
target embedding ``t_i`` = the L2-normalised mean of the teacher's (normalised) embeddings of the
item's captions; both are L2-normalised, float32 ``[n, d]``. They are written once to
``RUN/b3_teacher.npz`` (``query``, ``target``, and the ``teacher`` they came from; rank 0 writes,
the others wait) and reused on resume; the sampler reads the file through the ``embeddings``
parameter the trainer adds to the run's data config. Images are the evaluation transform's (a
file source is decoded once, whole: every training row must decode, or the rows would not line up).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.data.config import DataConfig
from contrastkit.data.pairs import PairSet
from contrastkit.models.dual_encoder import DualEncoder, ModelConfig, build_model
from contrastkit.train.config import RunConfig
from contrastkit.train.distributed import DistContext

__all__ = [
    "CACHE_NAME",
    "b3_data",
    "check_frozen_run",
    "check_samplers",
    "frozen_run",
    "load_teacher",
    "teacher_embeddings",
]

CACHE_NAME = "b3_teacher.npz"


def _spec(teacher: str) -> tuple[str, str]:
    """``("run" | "from", spec)`` of a teacher string."""
    path = Path(teacher).expanduser()
    if path.is_dir() and (path / "config.yaml").is_file():
        return "run", str(path)
    if path.is_dir() and (path / "config.json").is_file():
        return "from", f"hf:{path}"
    if teacher.startswith(("hf:", "open_clip:")):
        return "from", teacher
    if path.is_dir():
        raise ConfigError(f"b3 teacher {teacher}: neither a contrastkit run (config.yaml) nor a model folder")
    raise MissingFileError(
        f"b3 teacher {teacher!r}: no such run folder; give a contrastkit run folder, hf:DIR or open_clip:..."
    )


def check_samplers(cfg: RunConfig) -> None:
    """Before any data is read: a ``b3`` sampler needs exactly one of ``teacher`` / ``embeddings``,
    and it must exist; ``unpaired_labels`` with a loss that ignores its label vectors
    (``image_labels``, ``text_labels``) trains on random image–text pairs (the naive use of
    unpaired data): a warning."""
    if cfg.data.sampler.name == "unpaired_labels":
        from contrastkit.losses.base import declared_fields

        if cfg.loss.terms or "image_labels" not in declared_fields(cfg.loss.name):
            warnings.warn(
                f"data.sampler unpaired_labels with loss {cfg.loss.name!r}: the loss ignores the "
                "label-overlap targets (batch fields image_labels, text_labels) and treats random "
                "image-text pairs as "
                "positives; train with medclip unless that naive baseline is what you want",
                stacklevel=2,
            )
        return
    if cfg.data.sampler.name != "b3":
        return
    params = cfg.data.sampler.params
    teacher, emb = params.get("teacher"), params.get("embeddings")
    if (teacher is None) == (emb is None):
        raise ConfigError(
            "data.sampler b3 needs its teacher: set data.sampler.params.teacher to a contrastkit run "
            "folder, hf:DIR or open_clip:... (or embeddings to a cached .npz), not both"
        )
    if teacher is not None:
        kind, spec = _spec(str(teacher))
        if kind == "from":
            ModelConfig(from_=spec)  # checks the folder / checkpoint exists (loads nothing)
    elif not Path(str(emb)).expanduser().is_file():
        raise MissingFileError(f"data.sampler b3: no embeddings file at {emb}")


def load_teacher(teacher: str) -> DualEncoder:
    """The teacher model of a run folder, ``hf:DIR`` or ``open_clip:...``, in eval mode."""
    from contrastkit.train.checkpoint import latest_checkpoint, load_weights
    from contrastkit.train.setup import load_run_config

    kind, spec = _spec(teacher)
    if kind == "run":
        cfg = load_run_config(spec)
        model = build_model(cfg.model, assets_dir=Path(spec) / "assets")
        load_weights(latest_checkpoint(spec, fallback=False), model, None)
    else:
        model = build_model(ModelConfig(from_=spec))
    return model.eval()


def check_frozen_run(cfg: RunConfig, folder: str, key: str, why: str) -> None:
    """Refuse, before any data is read, a frozen companion run (``key``: ``model.teacher``,
    ``model.previous``) that is not a trained contrastkit run folder, or a run that would need its
    fields chunked or tiled (``why`` names the dense loss that reads them)."""
    from contrastkit.train.checkpoint import latest_checkpoint

    path = Path(folder).expanduser()
    if not (path / "config.yaml").is_file():
        raise MissingFileError(f"{key}: {folder} is not a contrastkit run folder (no config.yaml)")
    latest_checkpoint(path, fallback=False)  # a one-line error if it has no intact checkpoint
    if cfg.scale.chunk_size is not None or cfg.scale.tile_size is not None:
        raise ConfigError(f"{why} runs the dense loss: unset scale.chunk_size and scale.tile_size")


def frozen_run(
    folder: str,
    key: str,
    model: DualEncoder,
    needed: Sequence[str],
    captions: Sequence[Sequence[str]] | None,
    device: torch.device,
    tokenizer_hint: str = "",
) -> DualEncoder:
    """The run of ``folder`` (config key ``key``) on ``device``, frozen (no parameter requires
    gradient) and in eval mode; it must encode the trained modalities ``needed`` and, when text is
    among them, tokenise this run's ``captions`` (the first 128 rows) to the same ids, since it
    reads the batch's token ids."""
    frozen = load_teacher(str(Path(folder).expanduser())).to(device)
    frozen.requires_grad_(False)
    if any(not frozen.can_encode(m) for m in needed):
        raise ConfigError(f"{key} encodes {list(frozen.modalities)}; this run trains {list(needed)}")
    if any(m.partition("@")[0] == "text" for m in needed) and captions:
        sample = [c for caps in list(captions)[:128] for c in caps]
        if not torch.equal(model.tokenize(sample), frozen.tokenize(sample)):
            raise ConfigError(
                f"{key} {folder} tokenizes this run's captions differently; it reads this run's token "
                f"ids, so it needs the same tokenizer (same vocabulary){tokenizer_hint}"
            )
    return frozen.eval()


@torch.no_grad()
def teacher_embeddings(
    model: DualEncoder, pairs: PairSet, batch_size: int = 256, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """``(query, target)``: normalised image embeddings and mean caption embeddings ``[n, d]``."""
    if not {"image", "text"} <= set(model.towers):
        raise InputError(f"a b3 teacher needs image and text towers; it has {list(model.towers)}")
    model = model.to(device)
    images = [
        F.normalize(model.encode("image", pairs.images[a : a + batch_size].to(device)).float(), dim=-1).cpu()
        for a in range(0, len(pairs), batch_size)
    ]
    texts, owner = pairs.flat_captions()
    caps = [
        F.normalize(
            model.encode("text", model.tokenize(texts[a : a + batch_size]).to(device)).float(), dim=-1
        ).cpu()
        for a in range(0, len(texts), batch_size)
    ]
    cap = torch.cat(caps)
    target = torch.zeros(len(pairs), cap.shape[1]).index_add_(0, torch.from_numpy(owner), cap)
    return torch.cat(images).numpy(), F.normalize(target, dim=-1).numpy()


def _pairs_of(train_set: object, cfg: DataConfig) -> PairSet:
    if isinstance(train_set, PairSet):
        return train_set
    pairset = getattr(train_set, "pairset", None)
    if pairset is None:
        raise ConfigError(f"data.sampler b3 needs an indexed source, not {type(train_set).__name__}")
    pairs, skips = pairset(cfg.image)
    if len(pairs) != len(train_set.captions):  # type: ignore[attr-defined]
        raise InputError(
            f"b3: {sum(skips.values())} training rows do not decode ({dict(skips)}); fix or drop them"
        )
    return pairs


def b3_data(
    cfg: RunConfig, train_set: object, run_dir: Path, ctx: DistContext, device: torch.device
) -> DataConfig:
    """``cfg.data`` with the b3 sampler's ``embeddings`` set to the cached teacher embeddings
    (computed first if the run folder has none for this teacher); any other sampler: unchanged."""
    sampler = cfg.data.sampler
    teacher = sampler.params.get("teacher")
    if sampler.name != "b3" or teacher is None:
        return cfg.data
    path = Path(run_dir) / CACHE_NAME
    if ctx.main and not _cached(path, str(teacher)):
        pairs = _pairs_of(train_set, cfg.data)
        model = load_teacher(str(teacher))
        batch = int(sampler.params.get("teacher_batch", 256))
        query, target = teacher_embeddings(model, pairs, batch, device)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, query=query, target=target, teacher=np.array(str(teacher)))
        tmp.replace(path)  # atomic: a crash leaves no half-written cache
    ctx.barrier()
    params = {**sampler.params, "embeddings": str(path)}
    return dataclasses.replace(cfg.data, sampler=dataclasses.replace(sampler, params=params))


def _cached(path: Path, teacher: str) -> bool:
    if not path.is_file():
        return False
    with np.load(path) as z:
        return "teacher" in z and str(z["teacher"]) == teacher
