"""``curate``: run filters in sequence over a data source and write the kept rows as a new source.

:func:`curate` reads a source (a csv/tsv/parquet table, an ImageFolder, a Hugging Face
``save_to_disk`` folder or a built-in set ``NAME:SPLIT``), builds every filter first (a bad name or
parameter fails before anything is read), then applies them in order, each to the rows the
previous ones kept (a ``keep`` fraction is a fraction of those rows). Embeddings come from the
curation model — a contrastkit run folder, a local Hugging Face CLIP/SigLIP folder, or any
:class:`~contrastkit.evaluation.Encoders` — computed once, when the first filter needs them, for
the rows still in: images in chunks (never the whole set in memory), every caption of a row.

Rows no filter can use are removed with their reason under the step ``read``: a row whose captions
are all empty (before the first filter) and, when a filter needs images, a missing file or an
undecodable image (the reasons the loaders count). Output (:mod:`contrastkit.curation.output`):
``pairs.csv`` (kept rows, readable by the ``csv`` source), ``removed.csv``, ``curation.json``,
``curation.md`` and one score histogram per filter.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.core.errors import ConfigError, MissingFileError
from contrastkit.core.io import check_writable_dir
from contrastkit.core.progress import progress_bar, progress_default
from contrastkit.core.registry import PositiveInt
from contrastkit.curation.filters import FILTERS, Filter, FilterInput
from contrastkit.curation.output import StepRecord, write_outputs
from contrastkit.data import ImageConfig, PairSet, PairTable
from contrastkit.data.images import SkipSample
from contrastkit.evaluation.encoders import Encoders, model_encoders
from contrastkit.evaluation.eval_data import run_image
from contrastkit.evaluation.external import HFEncoders, file_sha256, hf_encoders

__all__ = ["CurationModel", "FilterStep", "build_steps", "curate", "load_curation_model"]

IMAGE_CHUNK = 256  # rows decoded and embedded at a time: memory stays flat on large sources


@dataclass(frozen=True)
class FilterStep:
    """One filter of a curation: a name in ``FILTERS`` and its parameters, as on the command line
    ``--filter NAME --param KEY=VALUE``."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CurationModel:
    """Encoders, the image decoding they expect, and a JSON-able record of the model."""

    encoders: Encoders
    image: ImageConfig
    record: dict[str, Any]


def build_steps(
    steps: Sequence[FilterStep | Filter | str | tuple[str, dict[str, Any]]],
) -> list[tuple[str, Filter]]:
    """``(name, filter)`` for each step: a :class:`FilterStep`, a ``(name, params)`` pair, a bare
    name (default parameters) or a built :class:`Filter` (its registered name is looked up)."""
    if not steps:
        raise ConfigError("curate needs at least one filter (available: " + ", ".join(FILTERS.names()) + ")")
    out = []
    for step in steps:
        if isinstance(step, Filter):
            name = next((n for n in FILTERS.names() if FILTERS.get(n) is type(step)), type(step).__name__)
            out.append((name, step))
            continue
        if isinstance(step, str):
            step = FilterStep(step)
        elif isinstance(step, tuple):
            step = FilterStep(*step)
        out.append((step.name, FILTERS.build(step.name, **step.params)))
    return out


def load_curation_model(
    model: str | Path | Encoders,
    batch_size: PositiveInt | None = None,
    device: str = "auto",
    image: ImageConfig | None = None,
) -> CurationModel:
    """The curation model: a run folder (``config.yaml``; newest checkpoint), a Hugging Face
    CLIP/SigLIP folder (``config.json``) or :class:`Encoders` (decoded with ``image``, default
    ``ImageConfig(size=224)``). Images of file sources are decoded as the model expects: a run as it
    trained, a Hugging Face model at its processor's resize size."""
    from contrastkit.core.runtime import resolve_device

    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(model, Encoders):
        record = dict(model.info) if isinstance(model, HFEncoders) else {"kind": "callables"}
        return CurationModel(model, image or ImageConfig(size=224), record)
    path = Path(model).expanduser()
    dev = resolve_device(device, "--device")
    if (path / "config.yaml").is_file():
        from contrastkit.train import load_run  # imported only when a run is asked for

        cfg, net, _, ckpt = load_run(path)
        net.to(dev)
        record: dict[str, Any] = {
            "kind": "contrastkit-run",
            "path": str(path.resolve()),
            "checkpoint": ckpt.name,
        }
        weights = ckpt / "model.safetensors"
        if weights.is_file():
            record["weights_sha256"] = {weights.name: file_sha256(weights)}
        enc = model_encoders(net, batch_size=batch_size or 256, device=str(dev))
        return CurationModel(enc, image or run_image(cfg.data), record)
    if (path / "config.json").is_file():
        hf = hf_encoders(path, batch_size=batch_size or 64, device=str(dev))
        resize = (hf.info.get("image_preprocessing") or {}).get("resize") or {}
        size = int(resize.get("shortest_edge") or resize.get("height") or 224)
        return CurationModel(hf, image or ImageConfig(size=size), dict(hf.info))
    raise MissingFileError(
        f"--model {model}: not a contrastkit run (no config.yaml) nor a Hugging Face CLIP/SigLIP folder "
        "(no config.json)"
    )


def _embed_images(
    source: PairSet | PairTable, rows: np.ndarray, model: CurationModel
) -> tuple[np.ndarray, dict[int, str]]:
    """Image embeddings of ``rows`` (float32, a zero row where unusable) and the unusable rows'
    reasons; decoded and embedded :data:`IMAGE_CHUNK` rows at a time."""
    out: np.ndarray | None = None
    bad: dict[int, str] = {}
    bar = progress_bar(None, "embed images", total=len(rows), unit="img")
    for start in range(0, len(rows), IMAGE_CHUNK):
        chunk = rows[start : start + IMAGE_CHUNK]
        if isinstance(source, PairSet):
            pos, images = list(range(len(chunk))), source.images[torch.as_tensor(chunk)]
        else:
            pos, decoded = [], []
            for p, i in enumerate(chunk):
                try:
                    decoded.append(source.read(int(i), model.image))
                    pos.append(p)
                except SkipSample as err:
                    bad[int(i)] = err.reason
            images = torch.stack(decoded) if decoded else None
        if images is not None:
            emb = model.encoders.images(images).float().numpy()
            if out is None:
                out = np.zeros((len(rows), emb.shape[1]), dtype=np.float32)
            out[start + np.asarray(pos)] = emb
        bar.update(len(chunk))
    bar.close()
    return (out if out is not None else np.zeros((len(rows), 1), dtype=np.float32)), bad


class _State:
    """The rows still in, their captions, and embeddings computed so far (indexed by source row)."""

    def __init__(self, source: PairSet | PairTable) -> None:
        self.source = source
        self.captions = [tuple(c for c in caps if c.strip()) for caps in source.captions]
        self.alive = np.arange(len(source))
        self.image_emb: dict[int, np.ndarray] = {}
        self.text_emb: dict[int, np.ndarray] = {}

    def drop(self, removed: dict[int, str]) -> None:
        self.alive = np.asarray([i for i in self.alive if int(i) not in removed], dtype=np.int64)

    def need(self, needs: frozenset[str], model: CurationModel | None) -> dict[int, str]:
        """Compute the missing embeddings of the live rows; returns rows whose image is unusable."""
        bad: dict[int, str] = {}
        if not needs:
            return bad
        assert model is not None
        if "image" in needs:
            todo = np.asarray([i for i in self.alive if int(i) not in self.image_emb], dtype=np.int64)
            if len(todo):
                emb, bad = _embed_images(self.source, todo, model)
                self.image_emb.update({int(i): e for i, e in zip(todo, emb) if int(i) not in bad})
        if "text" in needs:
            todo = [int(i) for i in self.alive if int(i) not in self.text_emb and int(i) not in bad]
            if todo:
                flat = [c for i in todo for c in self.captions[i]]
                emb = model.encoders.texts(flat).float().numpy()
                ends = np.cumsum([len(self.captions[i]) for i in todo])
                for i, part in zip(todo, np.split(emb, ends[:-1])):
                    self.text_emb[i] = part
        return bad

    def inputs(self, needs: frozenset[str]) -> FilterInput:
        caps = tuple(self.captions[int(i)] for i in self.alive)
        if not needs:
            return FilterInput(caps)
        img = np.stack([self.image_emb[int(i)] for i in self.alive]) if "image" in needs else None
        txt = owner = None
        if "text" in needs:
            txt = np.concatenate([self.text_emb[int(i)] for i in self.alive])
            owner = np.repeat(np.arange(len(self.alive)), [len(c) for c in caps])
        return FilterInput(caps, img, txt, owner)


def _read_step(removed: dict[int, str], rows_in: int) -> StepRecord:
    return StepRecord("read", {}, rows_in, dict(removed))


def _open_source(
    src: str | PairSet | PairTable, split: str, params: dict[str, Any] | None
) -> tuple[PairSet | PairTable, dict[str, Any]]:
    """The source and how the report names it (``NAME:SPLIT`` of a built-in set names its split)."""
    from contrastkit.data.inspect import resolve_source, source_label

    if not isinstance(src, str):
        return src, {"source": src.name or type(src).__name__, "split": split}
    source = resolve_source(src, split, params)
    _, sep, own = src.partition(":")
    if sep and own and not Path(src).expanduser().exists():  # shapes:test reads test, not --split
        split = own
    if not isinstance(source, PairSet | PairTable):
        raise ConfigError(
            f"curate reads tables, folders and built-in sets; {src} is WebDataset shards "
            "(filter the table they were written from)"
        )
    return source, {"source": src, "label": source_label(src), "split": split}


def _apply(state: _State, filters: list[tuple[str, Filter]], cm: CurationModel | None) -> list[StepRecord]:
    """Run ``filters`` in order on the live rows of ``state``; one record per step."""
    records: list[StepRecord] = []
    empty = {i: "empty caption" for i, c in enumerate(state.captions) if not c}
    if empty:
        records.append(_read_step(empty, len(state.alive)))
        state.drop(empty)
    for name, filt in filters:
        if len(state.alive) == 0:
            raise ConfigError(f"no rows left before filter {name}: every row was removed")
        bad = state.need(filt.needs, cm)
        if bad:
            records.append(_read_step(bad, len(state.alive)))
            state.drop(bad)
        res = filt.apply(state.inputs(filt.needs))
        rows = state.alive
        removed = {int(rows[k]): r for k, r in enumerate(res.reasons) if not res.keep[k]}
        partner = None
        if res.partner is not None:
            partner = {int(rows[k]): int(rows[p]) for k, p in enumerate(res.partner) if p >= 0}
        records.append(
            StepRecord(
                name,
                asdict(filt),  # type: ignore[call-overload]
                len(rows),
                removed,
                res.scores,
                res.keep,
                res.threshold,
                res.score_name,
                rows=rows,
                partner=partner,
                details=res.details,
                rule=res.rule,
            )
        )
        state.drop(removed)
    if len(state.alive) == 0:
        raise ConfigError("every row was removed: nothing to write (loosen the filters)")
    return records


def curate(
    src: str | PairSet | PairTable,
    steps: Sequence[FilterStep | Filter | str | tuple[str, dict[str, Any]]],
    out_dir: str | Path,
    model: str | Path | Encoders | None = None,
    split: str = "train",
    data_params: dict[str, Any] | None = None,
    batch_size: PositiveInt | None = None,
    device: str = "auto",
    copy_images: bool = False,
    image: ImageConfig | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Filter ``src`` with ``steps`` in order and write the kept rows to ``out_dir`` (module
    docstring); returns the report written as ``curation.json``. ``model`` is required when a
    filter needs embeddings; ``copy_images`` copies image files into ``out_dir/images`` (default:
    ``pairs.csv`` points at the original files by absolute path; in-memory and byte images are
    always written there). ``progress``: progress bars (``None``: the ambient default)."""
    t0 = time.perf_counter()
    filters = build_steps(steps)
    needs = frozenset().union(*(f.needs for _, f in filters))
    if needs and model is None:
        name = next(n for n, f in filters if f.needs)
        raise ConfigError(
            f"filter {name} needs a model: a contrastkit run or a Hugging Face CLIP/SigLIP folder"
        )
    out = check_writable_dir(out_dir, "--out")
    for existing in ("pairs.csv", "curation.json"):
        if (out / existing).exists():
            raise ConfigError(f"--out {out} already holds a curation ({existing}): choose another folder")
    with progress_default(progress):
        cm = load_curation_model(model, batch_size, device, image) if needs and model is not None else None
        source, info = _open_source(src, split, data_params)
        state = _State(source)
        records = _apply(state, filters, cm)
        return write_outputs(
            source, state.alive, records, out, info, cm.record if cm else None, copy_images, t0
        )
