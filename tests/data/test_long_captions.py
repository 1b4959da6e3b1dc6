"""Long captions (DreamLIP, ``data.long_captions``): the sentence splitter on hand cases, K draws per
image (distinct, with replacement, filled), determinism and rank-split invariance, the batch keys
from Shapes and from a CSV, the loss against a direct float64 multi-positive InfoNCE (values and
gradients) and the column mean, config checks, and a tiny training run that resumes exactly."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from contrastkit.core.config import from_dict
from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import DataConfig, make_shapes, open_split, train_loader
from contrastkit.data.long_captions import (
    FILLED,
    LongCaptionConfig,
    draw_indices,
    long_caption_loss,
    owner_rows,
    sample_sub_captions,
    split_caption,
)
from contrastkit.data.shapes import ShapeObject, long_caption
from contrastkit.data.skips import SKIPS_KEY
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.soft_targets import MultiPositiveLoss
from tests.data._write import exact, source_config, take, write_pngs, write_table


@pytest.mark.parametrize(
    "text,merge,pieces",
    [
        ("A dog. A cat.\nGrass</s>sky", 1, ["A dog", "A cat", "Grass", "sky"]),  # the spec's oracle
        ("  one.  two  ..three. ", 1, ["one", "two", "three"]),  # stripped, empty pieces dropped
        ("no full stop", 1, ["no full stop"]),
        ("...\n</s>", 1, []),
        ("a. b. c. d", 2, ["a. b", "b. c", "c. d"]),  # windows of 2 consecutive pieces
        ("a. b", 3, []),
    ],
)
def test_split_caption_on_hand_cases(text, merge, pieces):
    assert split_caption(text, merge) == pieces


def test_draw_indices_distinct_with_replacement_exclude_last_and_empty():
    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = draw_indices(7, 3, rng)
        assert len(idx) == 3 and len(set(idx.tolist())) == 3 and idx.min() >= 0 and idx.max() < 7
    small = np.concatenate([draw_indices(2, 5, rng) for _ in range(200)])  # p < K: with replacement
    assert set(small.tolist()) == {0, 1}
    never_last = np.concatenate([draw_indices(4, 2, rng, exclude_last=True) for _ in range(10_000)])
    assert never_last.max() == 2 and set(never_last.tolist()) == {0, 1, 2}
    assert draw_indices(1, 3, rng, exclude_last=True) is None and draw_indices(0, 1, rng) is None


def test_k_per_image_full_column_and_fill():
    caps = ["s1. s2. s3. s4", "only one", "", "x. y"]
    rows, filled = sample_sub_captions(caps, LongCaptionConfig(k=3, full=True), (0, 5, 0))
    assert [len(r) for r in rows] == [4] * 4 and [r[0] for r in rows] == caps
    assert len(set(rows[0][1:])) == 3 and set(rows[0][1:]) <= {"s1", "s2", "s3", "s4"}
    assert rows[1][1:] == ["only one"] * 3  # one sentence: drawn with replacement
    assert rows[2][1:] == [""] * 3 and filled == 1  # no sentence: the whole caption, counted
    assert set(rows[3][1:]) == {"x", "y"}  # two sentences, K = 3: with replacement, both appear or not
    rows, filled = sample_sub_captions(
        ["a. b"], LongCaptionConfig(k=2, full=False, exclude_last=True), (1, 0, 0)
    )
    assert rows == [["a", "a"]] and filled == 0


def test_draws_depend_on_seed_step_and_global_row_only():
    caps = [f"a{i}. b{i}. c{i}. d{i}. e{i}" for i in range(8)]
    cfg = LongCaptionConfig(k=2, full=False)
    whole, _ = sample_sub_captions(caps, cfg, (3, 10, 0))
    assert whole == sample_sub_captions(caps, cfg, (3, 10, 0))[0]  # deterministic
    halves = (
        sample_sub_captions(caps[:4], cfg, (3, 10, 0))[0] + sample_sub_captions(caps[4:], cfg, (3, 10, 4))[0]
    )
    assert halves == whole  # two ranks (offsets 0 and 4) draw what one rank draws
    assert sample_sub_captions(caps, cfg, (3, 11, 0))[0] != whole  # another step, other draws


def test_shapes_long_captions_keep_images_and_read_as_sentences():
    plain, long = make_shapes("train", n=24), make_shapes("train", n=24, long_captions=True)
    assert torch.equal(plain.images, long.images) and torch.equal(plain.attributes, long.attributes)
    assert all(len(c) == 1 and c[0].endswith(".") for c in long.captions)
    assert all(len(split_caption(c[0])) == 3 for c in long.captions)
    one = [ShapeObject("circle", "orange", "small", 0, 0, 1)]
    assert (
        long_caption(one, "on the left")
        == "a small orange circle. the circle is on the left. the orange circle is small."
    )
    two = [ShapeObject("star", "red", "large", 0, 0, 1), ShapeObject("ring", "orange", "small", 0, 0, 1)]
    assert (
        long_caption(two, "above")
        == "a large red star. a small orange ring. the red star is above the orange ring."
    )


def _long_cfg(k: int = 3, full: bool = False) -> DataConfig:
    tiny = DataConfig.tiny()
    params = {**tiny.params, "long_captions": True}
    return dataclasses.replace(tiny, params=params, long_captions=LongCaptionConfig(k=k, full=full))


def test_batches_carry_k_sub_captions_and_resume_draws_the_same():
    cfg = _long_cfg(k=3)
    src = open_split(cfg, "train")
    raw = take(train_loader(src, cfg, list, 8, seed=0), 3)  # tokenize = list: keeps the strings
    for batch in raw:
        assert len(batch["text"]) == 8 and [len(r) for r in batch["text_pos"]] == [2] * 8
        assert "text_row" not in batch  # the owners come from the trainer (owner_rows), not the data
        for first, rest in zip(batch["text"], batch["text_pos"]):
            assert len({first, *rest}) == 3  # three distinct sentences of a three-sentence caption
    again = take(train_loader(src, cfg, list, 8, seed=0, start=2), 1)[0]
    assert again["text"] == raw[2]["text"] and again["text_pos"] == raw[2]["text_pos"]
    two = [take(train_loader(src, cfg, list, 8, seed=0, shard=(r, 2)), 1)[0] for r in range(2)]
    assert two[0]["text_pos"] + two[1]["text_pos"] == raw[0]["text_pos"]  # rank split: same draws
    tok = take(train_loader(src, cfg, lambda t: torch.arange(len(t) * 2).reshape(len(t), 2), 8, seed=0), 1)[0]
    assert tok["text"].shape == (8, 2) and tok["text_pos"].shape == (8, 2, 2)


def test_any_table_source_and_fills_are_counted(tmp_path):
    pairs = make_shapes("train", n=16)
    names = write_pngs(pairs, tmp_path / "png")
    captions = [f"{c[0]}. picture {i}. done" if i else "" for i, c in enumerate(pairs.captions)]
    captions[0] = "..."  # no sentence at all: its slots hold the caption, counted
    table = write_table(
        tmp_path / "png" / "pairs.csv", ["image", "caption"], [[n, c] for n, c in zip(names, captions)]
    )
    lc = LongCaptionConfig(k=2, full=True)
    cfg = source_config(
        "csv", {"path": str(table), "caption_columns": ["caption"]}, exact(32), long_captions=lc
    )
    batches = take(train_loader(open_split(cfg, "train"), cfg, list, 16, seed=0), 1)
    b = batches[0]
    for text, rest in zip(b["text"], b["text_pos"]):
        assert text in captions and (text == "..." or set(rest) <= set(split_caption(text)))
    assert b[SKIPS_KEY] == {FILLED: 1} and b["text_pos"][b["text"].index("...")] == ["...", "..."]


def _direct_multi_positive(x, cols, scale):
    """Float64 loops of the module docstring's formula: images vs all B·M texts."""
    b, m = cols.shape[:2]
    x = x / x.norm(dim=1, keepdim=True)
    y = cols / cols.norm(dim=2, keepdim=True)
    logit = lambda i, j, c: scale * (x[i] @ y[j, c])  # noqa: E731
    rows = []
    for i in range(b):
        num = torch.logsumexp(torch.stack([logit(i, i, c) for c in range(m)]), 0)
        den = torch.logsumexp(torch.stack([logit(i, j, c) for j in range(b) for c in range(m)]), 0)
        rows.append(den - num)
    cols_terms = []
    for j in range(b):
        for c in range(m):
            den = torch.logsumexp(torch.stack([logit(i, j, c) for i in range(b)]), 0)
            cols_terms.append(den - logit(j, j, c))
    return 0.5 * (torch.stack(rows).mean() + torch.stack(cols_terms).mean())


@pytest.mark.parametrize("b,m", [(2, 2), (4, 3), (5, 1)])
def test_multi_positive_path_equals_the_direct_formula_values_and_grads(b, m):
    g = torch.Generator().manual_seed(b * 10 + m)
    x = torch.randn(b, 6, generator=g, dtype=torch.float64, requires_grad=True)
    cols = torch.randn(b, m, 6, generator=g, dtype=torch.float64, requires_grad=True)
    loss = MultiPositiveLoss().double()
    rows = torch.arange(100, 100 + b)  # global rows: any distinct values
    got = long_caption_loss(loss, x, cols[:, 0], cols[:, 1:], rows, {})
    scale = float(loss.log_scale.detach().exp())  # the module's float32-initialised scale, exactly
    want = _direct_multi_positive(x, cols, scale)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    g1 = torch.autograd.grad(got, (x, cols))
    g2 = torch.autograd.grad(_direct_multi_positive(x, cols, scale), (x, cols))
    for a, w in zip(g1, g2):
        torch.testing.assert_close(a, w, rtol=1e-9, atol=1e-12)


def test_other_pair_losses_take_the_column_mean():
    g = torch.Generator().manual_seed(0)
    x, cols = (
        torch.randn(4, 5, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 5, generator=g, dtype=torch.float64),
    )
    fn = lambda a, y: clip_loss(a, y, 10.0)  # noqa: E731
    got = long_caption_loss(fn, x, cols[:, 0], cols[:, 1:], torch.arange(4), {})
    want = sum(clip_loss(x, cols[:, c], 10.0) for c in range(3)) / 3
    torch.testing.assert_close(got, want)


def test_config_checks():
    with pytest.raises(ConfigError, match="k must be an integer >= 1"):
        LongCaptionConfig(k=0)
    with pytest.raises(ConfigError, match="merge"):
        LongCaptionConfig(merge=0)
    with pytest.raises(ConfigError):
        from_dict(DataConfig, {"long_captions": {"k": 2, "sentences": 3}})  # unknown key
    assert from_dict(DataConfig, {"long_captions": {"k": 2}}).long_captions == LongCaptionConfig(k=2)
    with pytest.raises(ConfigError, match="text_negatives"):
        DataConfig(long_captions=LongCaptionConfig(), text_negatives="swap")
    with pytest.raises(ConfigError, match="'text' in data.modalities"):
        DataConfig(long_captions=LongCaptionConfig(), modalities=("image", "attributes"))


def _run_cfg(tmp_path, name, loss="multi_positive", **train):
    """A tiny run config written as a config dict (what a YAML file holds), with long captions."""
    from contrastkit.core.config import to_dict
    from contrastkit.train import RunConfig

    d = to_dict(RunConfig.tiny(out_dir=str(tmp_path / "runs")))
    d["name"], d["loss"] = name, {"name": loss, "params": {}}
    d["data"]["params"]["long_captions"] = True
    d["data"]["long_captions"] = {"k": 3, "full": False}
    d["train"].update({"steps": 4, "batch_size": 16, "log_every": 1, **train})
    return from_dict(RunConfig, d)


def test_the_trainer_refuses_what_long_captions_cannot_serve(tmp_path):
    from contrastkit.train import train

    cfg = _run_cfg(tmp_path, "supcon", loss="supcon")
    with pytest.raises(ConfigError, match="only multi_positive"):
        train(cfg)
    chunked = dataclasses.replace(
        cfg, loss=_run_cfg(tmp_path, "x").loss, scale=dataclasses.replace(cfg.scale, chunk_size=4)
    )
    with pytest.raises(ConfigError, match="chunk_size"):
        train(chunked)


def test_tiny_training_runs_from_a_config(tmp_path):
    from contrastkit.train import read_metrics, train

    for loss in ("multi_positive", "clip"):  # clip: any other pair loss takes the column mean
        run = train(_run_cfg(tmp_path, loss, loss=loss, steps=2))
        assert [r["step"] for r in read_metrics(run.run_dir) if "loss" in r] == [1, 2]
        assert np.isfinite(run.last_loss)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:checkpoint .* does not exist")
def test_training_resumes_exactly(tmp_path):
    from contrastkit.train import load_run, resume, train

    a = train(_run_cfg(tmp_path, "a", ckpt_every=2))
    b = train(_run_cfg(tmp_path, "b", ckpt_every=2))
    shutil.rmtree(b.run_dir / "checkpoints" / "step_00000004")  # b stopped after step 2
    assert resume(b.run_dir).step == 4
    wa, wb = load_run(a.run_dir)[1].state_dict(), load_run(b.run_dir)[1].state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_owner_rows_are_positions_in_the_global_batch():
    assert owner_rows(3).tolist() == [0, 1, 2]
    assert torch.cat([owner_rows(4, r) for r in range(3)]).tolist() == list(range(12))
    with pytest.raises(InputError):
        owner_rows(4, -1)


_L, _DIM = 20, 5


def _char_ids(texts: list[str]) -> torch.Tensor:
    """A stand-in tokenizer: character codes, padded to ``_L`` (picklable, no vocabulary file)."""
    return torch.tensor([[ord(c) % 61 for c in t[:_L].ljust(_L)] for t in texts], dtype=torch.long)


def _shard_batch(shards: str, rank: int, world: int) -> dict:
    """Rank ``rank``'s first long-caption batch (k = 2, whole caption first) of 4 rows from shards."""
    cfg = source_config(
        "webdataset",
        {"urls": f"{shards}/shard-{{000000..000003}}.tar", "shuffle_buffer": 4},
        exact(16),
        long_captions=LongCaptionConfig(k=2, full=True),
    )
    batch = take(train_loader(open_split(cfg, "train"), cfg, _char_ids, 4 * world, 0, shard=(rank, world)), 1)
    return {k: batch[0][k] for k in ("image", "text", "text_pos")}


def _towers() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    w = torch.randn(3 * 16 * 16, _DIM, generator=g, dtype=torch.float64) / 30
    e = torch.randn(61, _DIM, generator=g, dtype=torch.float64)
    return w.requires_grad_(), e.requires_grad_()


def _loss_and_grads(batch: dict, rank: int, objective) -> dict:
    """The long-caption multi-positive loss of ``batch`` with linear stand-in towers (what the
    trainer computes: owners = ``owner_rows(b, rank)``), and the towers' gradients."""
    w, e = _towers()
    x = batch["image"].flatten(1).double() @ w
    y = e[batch["text"]].mean(1)
    pos = e[batch["text_pos"]].mean(2)
    value = long_caption_loss(objective, x, y, pos, owner_rows(len(x), rank), {})
    value.backward()
    return {"loss": value.detach(), "w": w.grad, "e": e.grad}


def _two_rank_shards(shards: str) -> dict:
    import torch.distributed as dist

    from contrastkit.scale.gather_all import GatherAllLoss

    rank, world = dist.get_rank(), dist.get_world_size()
    batch = _shard_batch(shards, rank, world)
    got = _loss_and_grads(batch, rank, GatherAllLoss(MultiPositiveLoss().double()))
    for k in ("w", "e"):  # DDP's average of the towers' gradients
        dist.all_reduce(got[k])
        got[k] /= world
    owners = [torch.empty(4, dtype=torch.long) for _ in range(world)]
    dist.all_gather(owners, owner_rows(4, rank))
    return {**got, "owners": torch.cat(owners), "batch": batch}


def test_two_processes_on_shards_give_distinct_owners_and_the_one_process_loss(tmp_path):
    from contrastkit.data.convert import write_shards
    from contrastkit.scale.launch import spawn_gloo

    write_shards(
        make_shapes("train", n=32, image_size=16, seed=4, long_captions=True), tmp_path, shard_size=8
    )
    ranks = spawn_gloo(_two_rank_shards, 2, str(tmp_path), timeout_s=120)
    assert ranks[0]["owners"].tolist() == list(range(8))  # one label per image of the global batch
    texts = [t for r in ranks for t in r["batch"]["text"].tolist()]
    assert len({tuple(t) for t in texts}) == 8  # the ranks read different images (disjoint shards)
    whole = {k: torch.cat([r["batch"][k] for r in ranks]) for k in ("image", "text", "text_pos")}
    want = _loss_and_grads(whole, 0, MultiPositiveLoss().double())  # one process, the global batch
    for got in ranks:
        for k in ("loss", "w", "e"):
            torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-12, msg=k)
