"""Signals (modalities beyond image/text), presence masks and the ``vectors`` source."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from contrastkit.core.errors import ConfigError, DataError, InputError, MissingFileError
from contrastkit.data import DataConfig, PairDataset, PairSet, build
from contrastkit.data.loading import open_split
from contrastkit.data.pairs import PairBatchSampler, SampledBatch
from contrastkit.data.signals import present_masks, variant_rows, with_missing
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.present import pair_sub_batch


def _set(n: int = 12, v: int = 3, images: bool = True) -> PairSet:
    g = torch.Generator().manual_seed(0)
    return PairSet(
        images=torch.randint(0, 255, (n, 3, 8, 8), dtype=torch.uint8, generator=g) if images else None,
        captions=tuple((f"caption {i}", f"other {i}") for i in range(n)),
        signals={"audio": torch.randn(n, v, 4, 5, generator=g)},
        present={"audio": torch.arange(n) % 4 != 0, "text": torch.arange(n) % 3 != 1},
    )


def test_pairset_signals_subset_and_modalities():
    ps = _set()
    assert ps.modalities == ("image", "text", "audio") and len(ps) == 12
    sub = ps.subset([1, 4, 5])
    assert torch.equal(sub.signals["audio"], ps.signals["audio"][[1, 4, 5]])
    assert sub.present["audio"].tolist() == [True, False, True]
    assert _set(images=False).modalities == ("text", "audio")
    with pytest.raises(InputError, match="no images"):
        _set(images=False).image_tensor()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"signals": {"audio": torch.zeros(12, 4)}}, r"is \[N, 1, D\]"),  # no variant axis: refused
        ({"signals": {"audio": torch.zeros(11, 1, 4)}}, "N=12"),
        ({"signals": {"audio": torch.full((12, 1, 4), float("nan"))}}, "non-finite"),
        ({"signals": {"labels": torch.zeros(12, 1, 4)}}, "must be a lower-case identifier"),
        ({"signals": {"image": torch.zeros(12, 1, 4)}}, "shadow"),
        ({"present": {"depth": torch.ones(12, dtype=torch.bool)}}, "no modality 'depth'"),
        ({"present": {"text": torch.ones(12)}}, "bool"),
    ],
)
def test_pairset_rejects_bad_signals(kwargs, match):
    caps = tuple((f"c{i}",) for i in range(12))
    with pytest.raises(InputError, match=match):
        PairSet(None, caps, **kwargs)


def test_variants_are_seeded_by_step_and_global_row():
    values = torch.arange(20 * 4, dtype=torch.float32).reshape(20, 4, 1)
    idx = torch.arange(8)
    assert torch.equal(variant_rows(values, idx, None), values[idx, 0])  # evaluation: variant 0
    whole = variant_rows(values, idx, (5, 3, 0))
    # rank 1 of 2 (offset 4) draws the same variants as rows 4..7 of the whole batch
    assert torch.equal(variant_rows(values, idx[4:], (5, 3, 4)), whole[4:])
    assert torch.equal(variant_rows(values, idx, (5, 3, 0)), whole)  # deterministic
    assert not torch.equal(variant_rows(values, idx, (5, 4, 0)), whole)  # another step, other voices
    picked = (whole[:, 0] - values[idx, 0, 0]).long()  # value offset = the variant index
    assert set(picked.tolist()) <= {0, 1, 2, 3} and len(set(picked.tolist())) > 1


def test_batches_blank_absent_rows_and_carry_masks():
    ps = _set()
    ds = PairDataset(ps, modalities=("image", "text", "audio"), seed=1)
    keys = SampledBatch([(i, 0) for i in range(12)], step=2, offset=0, total=12)
    batch = ds.__getitems__(keys)
    masks = present_masks(batch)
    assert set(masks) == {"audio", "text"}
    assert masks["audio"].tolist() == (torch.arange(12) % 4 != 0).tolist()
    assert (batch["audio"][~masks["audio"]] == 0).all() and (batch["audio"][masks["audio"]] != 0).any()
    assert [t == "" for t in batch["text"]] == (~masks["text"]).tolist()
    expected = variant_rows(ps.signals["audio"], torch.arange(12), (1, 2, 0))
    assert torch.equal(batch["audio"][masks["audio"]], expected[masks["audio"]])
    with pytest.raises(InputError, match="no modalities \\['depth'\\]"):
        PairDataset(ps, modalities=("image", "depth"))
    with pytest.raises(InputError, match="views need images"):
        PairDataset(_set(images=False), modalities=("audio",), views=2)


def test_with_missing_is_fixed_per_sample_and_counts():
    base = {"audio": torch.tensor([True] * 9 + [False])}
    out = with_missing(base, {"audio": 0.3, "text": 0.5}, 10, seed=7)
    assert int((~out["text"]).sum()) == 5
    assert not out["audio"][9] and int((~out["audio"]).sum()) in (3, 4)  # 3 drawn, maybe the absent one
    again = with_missing(base, {"audio": 0.3, "text": 0.5}, 10, seed=7)
    assert all(torch.equal(out[m], again[m]) for m in out)
    with pytest.raises(InputError, match=r"\[0, 1\)"):
        with_missing({}, {"text": 1.0}, 10, 0)


def test_pair_loss_on_present_rows_equals_the_sub_batch():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(10, 6, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(10, 6, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.arange(10)
    present = {"audio": torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)}
    x, y, aux, n = pair_sub_batch(a, b, {"labels": labels}, [present["audio"], None])
    keep = present["audio"]
    assert n == 8 and torch.equal(aux["labels"], labels[keep])
    cut = clip_loss(x, y, 10.0)
    ref = clip_loss(a.detach()[keep].requires_grad_(), b.detach()[keep].requires_grad_(), 10.0)
    assert torch.equal(cut, ref)
    ga = torch.autograd.grad(cut, a)[0]
    assert (ga[~keep] == 0).all()
    with pytest.raises(InputError, match=r"\[N, N\]"):
        pair_sub_batch(a, b, {"weights": torch.ones(10, 10)}, [present["audio"], None])


def test_data_config_missing_and_training_split_masks():
    with pytest.raises(ConfigError, match="data.missing names 'audio'"):
        DataConfig(missing={"audio": 0.2})
    with pytest.raises(ConfigError, match=r"fraction in \[0, 1\)"):
        DataConfig(modalities=("image", "text"), missing={"text": 1.5})
    cfg = DataConfig.tiny()
    cfg = DataConfig(**{**cfg.__dict__, "missing": {"text": 0.25}})
    train = open_split(cfg, cfg.train_split)
    assert int((~train.present["text"]).sum()) == round(0.25 * len(train))
    assert open_split(cfg, cfg.eval_splits[0]).present == {}  # evaluation splits stay whole


def _parquet(path, vectors, captions, labels=None):
    cols = {"vector": vectors, "caption": captions}
    if labels is not None:
        cols["label"] = labels
    pq.write_table(pa.table(cols), path)


def test_vectors_source_parquet_and_npy(tmp_path):
    vecs = [[float(i), 1.0, 2.0] for i in range(6)]
    vecs[2] = None  # a sample without the vector
    vecs[4] = [1.0, float("nan"), 0.0]
    _parquet(tmp_path / "t.parquet", vecs, [f"a {c}" for c in "xyxyxy"], list("xyxyxy"))
    ps = build("vectors", "train", path=str(tmp_path / "t.parquet"), label_column="label", templates=["a {}"])
    assert ps.images is None and ps.modalities == ("text", "vectors")
    assert ps.signals["vectors"].shape == (6, 1, 3)
    assert ps.present["vectors"].tolist() == [True, True, False, True, False, True]
    assert (ps.signals["vectors"][~ps.present["vectors"]] == 0).all()
    assert ps.tasks["label"].classnames == ("x", "y") and ps.tasks["label"].labels.tolist() == [0, 1] * 3
    np.save(tmp_path / "v.npy", np.ones((3, 4), dtype=np.float32))
    (tmp_path / "c.txt").write_text("one\ntwo\nthree\n")
    ps = build(
        "vectors", "test", path=str(tmp_path / "v.npy"), captions=str(tmp_path / "c.txt"), modality="brain"
    )
    assert ps.modalities == ("text", "brain") and ps.present == {}
    (tmp_path / "c2.txt").write_text("one\ntwo\n")
    with pytest.raises(DataError, match="2 captions lines for 3 vectors"):
        build("vectors", "test", path=str(tmp_path / "v.npy"), captions=str(tmp_path / "c2.txt"))
    with pytest.raises(MissingFileError, match="no file"):
        build("vectors", "test", path=str(tmp_path / "none.parquet"))
    _parquet(tmp_path / "odd.parquet", [[1.0, 2.0], [1.0]], ["a", "b"])
    with pytest.raises(DataError, match="differ in length"):
        build("vectors", "train", path=str(tmp_path / "odd.parquet"))
    with pytest.raises(ConfigError, match="has no columns \\['vec'\\]"):
        build("vectors", "train", path=str(tmp_path / "t.parquet"), column="vec")


def test_sampler_stream_over_a_set_without_images():
    ps = _set(images=False)
    ds = PairDataset(ps, modalities=("text", "audio"), seed=0)
    sampler = PairBatchSampler([len(c) for c in ps.captions], 4, seed=0)
    batch = ds.__getitems__(next(iter(sampler)))
    assert set(batch) >= {"text", "audio", "present:audio", "present:text"} and "image" not in batch


def test_shared_signal_table_equals_the_materialised_signal():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(4, 3, 2, 5, generator=g)  # 4 distinct spoken captions, 3 voices
    index = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3, 2], dtype=torch.int64)
    caps = tuple((f"c{i}",) for i in range(10))
    shared = PairSet(None, caps, signals={"audio": table}, signal_index={"audio": index})
    full = PairSet(None, caps, signals={"audio": table[index]})
    rows = torch.tensor([9, 2, 4])
    for seed in (None, (0, 5, 0)):
        assert torch.equal(shared.signal("audio", rows, seed), full.signal("audio", rows, seed))
    sub = shared.subset([8, 0])
    assert torch.equal(sub.signal("audio"), table[[3, 0], 0]) and sub.signals["audio"] is table
    with pytest.raises(InputError, match="outside the 4 rows"):
        PairSet(None, caps, signals={"audio": table}, signal_index={"audio": index + 1})
    with pytest.raises(InputError, match="not signals"):
        PairSet(None, caps, signal_index={"speech": index})
