"""Text pairs (the sentence-transformers format): a Hugging Face datasets folder of (anchor,
positive) columns trains a single text tower on `text` against its view `text@1`."""

from __future__ import annotations

import dataclasses

import datasets
import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError
from contrastkit.data import DataConfig, PairBatchSampler, make_shapes, open_split, train_loader
from contrastkit.models import ModelConfig, build_model
from contrastkit.train import RunConfig, load_run, read_metrics, train


def _pairs_folder(tmp_path, n: int, seed: int) -> str:
    """Paraphrase pairs: two captions of the same Shapes scene."""
    pairs = make_shapes("train", n=n, image_size=16, seed=seed)
    rows = [c for c in pairs.captions if len(c) >= 2]
    data = {"anchor": [c[0] for c in rows], "positive": [c[1] for c in rows]}
    path = tmp_path / f"pairs-{seed}"
    datasets.Dataset.from_dict(data).save_to_disk(str(path))
    return str(path)


def _data(path: str) -> DataConfig:
    return DataConfig(
        name="hf",
        params={"path": path, "image_column": None, "caption_columns": ["anchor"], "pair_column": "positive"},
        splits={"train": {}},
        eval_splits=(),
        modalities=("text",),
    )


def test_batches_hold_both_texts_tokenised_and_no_image(tmp_path):
    cfg = _data(_pairs_folder(tmp_path, 64, 0))
    table = open_split(cfg, "train")
    seen: list[list[str]] = []

    def tokenize(texts: list[str]) -> torch.Tensor:
        seen.append(list(texts))
        return torch.zeros(len(texts), 2, dtype=torch.long)

    batch = next(iter(train_loader(table, cfg, tokenize, batch_size=8, seed=0)))
    assert set(k for k in batch if not k.startswith("_")) == {"text", "text@1"}
    anchors, positives = seen[0], seen[1]
    rows = [i for i, _ in next(iter(PairBatchSampler([1] * len(table), 8, seed=0)))]
    assert anchors == [table.captions[i][0] for i in rows]
    assert positives == [table.extras["text@1"].values[i] for i in rows]
    assert tuple(batch["text"].shape) == tuple(batch["text@1"].shape) == (8, 2)


def test_a_text_tower_learns_to_match_paraphrases(tmp_path):
    train_path, test_path = _pairs_folder(tmp_path, 600, 0), _pairs_folder(tmp_path, 200, 1)
    base = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    model = ModelConfig(towers={"text": ModelConfig.tiny().towers["text"]}, embed_dim=32)
    cfg = dataclasses.replace(
        base,
        data=_data(train_path),
        model=model,
        train=dataclasses.replace(base.train, steps=60, batch_size=32, log_every=10),
    )
    rows = read_metrics(train(cfg).run_dir)
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    _, trained, _, _ = load_run(tmp_path / "runs" / "tiny")
    untrained = build_model(model, assets_dir=tmp_path / "runs" / "tiny" / "assets").eval()
    test = open_split(_data(test_path), "train")
    anchors = [c[0] for c in test.captions][:64]
    positives = list(test.extras["text@1"].values)[:64]

    def top1(m) -> float:  # held-out paraphrase retrieval, 64-way (chance 1/64)
        with torch.no_grad():
            a = F.normalize(m.encode("text", m.tokenize(anchors)), dim=-1)
            p = F.normalize(m.encode("text@1", m.tokenize(positives)), dim=-1)
        return (a @ p.T).argmax(1).eq(torch.arange(len(anchors))).float().mean().item()

    before, after = top1(untrained), top1(trained)
    print(f"paraphrase top-1: untrained {before:.3f}, trained {after:.3f}")
    assert after > 0.7 and after > before + 0.3  # measured: 0.34 → 0.88


def test_a_missing_pair_column_lists_the_columns(tmp_path):
    cfg = _data(_pairs_folder(tmp_path, 16, 0))
    bad = dataclasses.replace(cfg, params={**cfg.params, "pair_column": "positve"})
    with pytest.raises(ConfigError, match="positve"):
        open_split(bad, "train")
