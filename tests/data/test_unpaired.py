"""unpaired_labels sampler (D-MEDCLIP-SAMPLER, independent mode): disjoint image-only / text-only
sets, per-sample label vectors whose overlap A Uᵀ gives the soft targets, labels matched by name
across two sources, determinism, resume, rank split, the loader path and errors."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data import SAMPLERS, ClassTask, SamplerContext
from contrastkit.data.collate import Collate
from contrastkit.data.pairs import PairDataset, PairSet
from contrastkit.data.unpaired import UnpairedSampler, label_vectors, matched_label_vectors, split_items
from contrastkit.losses.soft_targets import medclip_loss, medclip_targets

N = 40
SHAPE = np.arange(N) % 3  # 3 shapes
COLOR = np.where(np.arange(N) % 10 == 9, -1, np.arange(N) % 4)  # 4 colours, every 10th unknown
CAPTIONS = tuple(tuple(f"item {i} caption {j}" for j in range(i % 2 + 1)) for i in range(N))
TASKS = {
    "shape": ClassTask(("a", "b", "c"), ("{}",), SHAPE),
    "color": ClassTask(("r", "g", "b", "y"), ("{}",), COLOR),
}


def ctx(batch: int = 8, start: int = 0, shard=(0, 1), **kw) -> SamplerContext:
    n_caps = [len(c) for c in CAPTIONS]
    return SamplerContext.single(
        n_caps, batch, 5, start=start, shard=shard, tasks=TASKS, captions=(CAPTIONS,), **kw
    )


def build(**kw) -> UnpairedSampler:
    c = kw.pop("context", None) or ctx(**{k: kw.pop(k) for k in ("batch", "start", "shard") if k in kw})
    return SAMPLERS.build("unpaired_labels", context=c, tasks=("shape", "color"), **kw)  # type: ignore[return-value]


def take(sampler, n: int) -> list[list[tuple[int, int]]]:
    return [list(b) for b in itertools.islice(iter(sampler), n)]


def test_label_vectors_by_hand():
    a = label_vectors(TASKS, ("shape", "color"))
    assert a.shape == (N, 7)
    assert a[0].tolist() == [1, 0, 0, 1, 0, 0, 0]  # shape 0, colour 0
    assert a[5].tolist() == [0, 0, 1, 0, 1, 0, 0]  # shape 2, colour 1
    assert a[9].tolist() == [1, 0, 0, 0, 0, 0, 0]  # shape 0, colour unknown
    with pytest.raises(ConfigError, match="no class task 'size'"):
        label_vectors(TASKS, ("size",))


def test_halves_are_disjoint_and_cover():
    img, txt = split_items(N, 0.5, 5)
    assert len(img) == len(txt) == 20 and not set(img) & set(txt)
    assert sorted([*img, *txt]) == list(range(N))
    assert split_items(N, 0.25, 5)[0].size == 10


def test_batches_cross_the_halves_with_hand_targets():
    s = build()
    images, texts = set(s.image_items.tolist()), set(s.text_items.tolist())
    for k, keys in enumerate(take(s, 6)):
        img, txt, cap = s.transform.rows(k, 0, 8)
        assert [i for i, _ in keys] == img.tolist() and set(img) <= images and set(txt) <= texts
        assert len(set(img)) == len(set(txt)) == 8
        batch = s.transform({"text": ["placeholder"] * 8}, (5, k, 0))
        assert batch["text"] == [CAPTIONS[t][c] for t, c in zip(txt, cap)]
        assert batch["image_labels"].shape == batch["text_labels"].shape == (8, 7)
        g = batch["image_labels"] @ batch["text_labels"].T  # what the medclip loss forms
        for i in range(8):  # G_ij = tasks on which image i and caption j agree (unknown: never)
            for j in range(8):
                a, u = img[i], txt[j]
                want = int(SHAPE[a] == SHAPE[u]) + int(COLOR[a] == COLOR[u] and COLOR[a] >= 0)
                assert g[i, j] == want
        t_img, t_txt = medclip_targets(g.double())
        assert torch.allclose(t_img.sum(1), torch.ones(8, dtype=torch.double))
        assert torch.allclose(t_txt, torch.softmax(g.double().T, 1))


def test_hand_computed_matrix():
    tasks = {"t": ClassTask(("x", "y"), ("{}",), np.array([0, 1, 0, 1]))}
    caps = (("c0",), ("c1",), ("c2",), ("c3",))
    c = SamplerContext.single([1] * 4, 2, 0, tasks=tasks, captions=(caps,))
    s = SAMPLERS.build("unpaired_labels", context=c, tasks=("t",))
    img, txt, _ = s.transform.rows(0, 0, 2)
    batch = s.transform({"text": ["", ""]}, (0, 0, 0))
    g = batch["image_labels"] @ batch["text_labels"].T
    lab = [0, 1, 0, 1]
    assert g.tolist() == [[float(lab[a] == lab[b]) for b in txt] for a in img]


def test_determinism_resume_rank_split():
    full = take(build(), 12)  # 20 image items, batch 8: epochs of 2 batches
    assert full == take(build(), 12)
    texts = [build().transform.rows(k, 0, 8)[1].tolist() for k in range(12)]
    assert take(build(start=7), 5) == full[7:]
    shards = [build(shard=(r, 2)) for r in range(2)]
    got = [take(s, 12) for s in shards]
    assert [got[0][k] + got[1][k] for k in range(12)] == full
    for k in range(12):  # each rank's transform takes its own rows of the same text chunk
        parts = [shards[r].transform.rows(k, 4 * r, 4)[1].tolist() for r in range(2)]
        assert parts[0] + parts[1] == texts[k]
    reseeded = SamplerContext.single([1] * N, 8, 6, tasks=TASKS, captions=(CAPTIONS,))
    assert take(SAMPLERS.build("unpaired_labels", context=reseeded, tasks=("shape",)), 3) != full[:3]


def test_through_the_dataset_and_collate():
    images = torch.randint(0, 256, (N, 3, 8, 8), dtype=torch.uint8)
    pairs = PairSet(images, CAPTIONS, tasks=TASKS)
    s = build()
    keys = next(iter(s))
    batch = Collate(lambda texts: torch.tensor([[len(t)] for t in texts]), transform=s.transform)(
        PairDataset(pairs).__getitems__(keys)
    )
    img, txt, cap = s.transform.rows(0, 0, 8)
    assert torch.equal(batch["image"], images[torch.from_numpy(img)])
    assert batch["text"][:, 0].tolist() == [len(CAPTIONS[t][c]) for t, c in zip(txt, cap)]
    for key, items in (("image_labels", img), ("text_labels", txt)):
        assert batch[key].dtype == torch.float32
        assert batch[key].tolist() == label_vectors(TASKS, ("shape", "color"))[items].tolist()


def test_errors():
    with pytest.raises(ConfigError, match="unset data.label_task"):
        build(context=ctx(label_task="shape"))
    with pytest.raises(ConfigError, match="fewer than one batch"):
        build(batch=24)
    with pytest.raises(ConfigError, match="missing required parameter"):
        SAMPLERS.build("unpaired_labels", context=ctx())
    with pytest.raises(ConfigError, match="image_fraction"):
        build(image_fraction=0.0)
    with pytest.raises(ConfigError, match="image_source names one of two data.sources"):
        build(image_source=1)
    caps = (CAPTIONS, CAPTIONS)
    two = SamplerContext((np.ones(N), np.ones(N)), 8, 0, weights=(1.0, 1.0), captions=caps)
    with pytest.raises(ConfigError, match="each source's class tasks"):
        SAMPLERS.build("unpaired_labels", context=two, tasks=("shape",))
    with pytest.raises(ConfigError, match="image_fraction splits one source"):
        SAMPLERS.build("unpaired_labels", context=two, tasks=("shape",), image_fraction=0.5)
    three = SamplerContext((np.ones(N),) * 3, 8, 0, weights=(1.0,) * 3, captions=(CAPTIONS,) * 3)
    with pytest.raises(ConfigError, match="one source or two data.sources, got 3"):
        SAMPLERS.build("unpaired_labels", context=three, tasks=("shape",))
    lone = {"color": TASKS["color"]}
    two = SamplerContext(
        (np.ones(N), np.ones(N)), 8, 0, weights=(1.0, 1.0), captions=caps, source_tasks=(TASKS, lone)
    )
    with pytest.raises(ConfigError, match="no class task 'shape' in the text source"):
        SAMPLERS.build("unpaired_labels", context=two, tasks=("shape",))


def test_clip_on_unpaired_batches_warns():
    from contrastkit.core.config import from_dict
    from contrastkit.train.config import RunConfig
    from contrastkit.train.teacher import check_samplers

    sampler = {"name": "unpaired_labels", "params": {"tasks": ["shape"]}}
    with pytest.warns(UserWarning, match="naive baseline"):
        check_samplers(from_dict(RunConfig, {"data": {"sampler": sampler}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_samplers(from_dict(RunConfig, {"data": {"sampler": sampler}, "loss": {"name": "medclip"}}))


def test_labels_of_two_sources_are_matched_by_task_and_class_name():
    image = {"t": ClassTask(("cat", "dog"), ("{}",), np.array([0, 1, -1]))}
    text = {"t": ClassTask(("bird", "cat"), ("{}",), np.array([1, 0, 1, -1])), "x": TASKS["shape"]}
    a, u = matched_label_vectors(image, text, ("t",))  # columns: cat, dog, bird
    assert a.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert u.tolist() == [[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]]
    assert (a @ u.T).tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]  # cat meets cat only


def test_two_sources_pair_every_image_of_one_with_captions_of_the_other():
    n_img, n_txt = 12, 20
    image_tasks = {"shape": ClassTask(("a", "b", "c"), ("{}",), np.arange(n_img) % 3)}
    text_tasks = {"shape": ClassTask(("c", "b", "a"), ("{}",), np.arange(n_txt) % 3)}  # reversed
    caps = (tuple(("",) for _ in range(n_img)), tuple((f"t{i}", f"u{i}") for i in range(n_txt)))
    for image_source in (0, 1):
        order = (0, 1) if image_source == 0 else (1, 0)
        c = SamplerContext(
            tuple(np.array([len(x) for x in caps[k]]) for k in order), 4, 3, weights=(1.0, 1.0),
            captions=tuple(caps[k] for k in order),
            source_tasks=tuple((image_tasks, text_tasks)[k] for k in order),
        )  # fmt: skip
        s = SAMPLERS.build("unpaired_labels", context=c, tasks=("shape",), image_source=image_source)
        seen = set()
        for k, keys in enumerate(take(s, 6)):  # 3 batches of images per epoch
            img, txt, cap = s.transform.rows(k, 0, 4)
            assert keys == [(image_source, i, 0) for i in img.tolist()]
            batch = s.transform({"text": [""] * 4}, (3, k, 0))
            assert batch["text"] == [caps[1][t][j] for t, j in zip(txt, cap)]
            names = [("a", "b", "c")[i % 3] for i in img], [("c", "b", "a")[t % 3] for t in txt]
            g = batch["image_labels"] @ batch["text_labels"].T
            assert g.tolist() == [[float(p == q) for q in names[1]] for p in names[0]]
            seen.update(img.tolist())
        assert seen == set(range(n_img))  # every image item is drawn; none is split off


def test_per_sample_labels_give_the_loss_of_the_weights_matrix():
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(6, 4, generator=g, dtype=torch.float64),
        torch.randn(6, 4, generator=g, dtype=torch.float64),
    )
    a = torch.randint(0, 2, (6, 5), generator=g).double()
    u = torch.randint(0, 2, (6, 5), generator=g).double()
    got = medclip_loss(x, y, 10.0, image_labels=a, text_labels=u)
    assert float(got) == pytest.approx(float(medclip_loss(x, y, 10.0, weights=a @ u.T)), rel=1e-14)
    with pytest.raises(InputError, match="together"):
        medclip_loss(x, y, 10.0, image_labels=a)
    with pytest.raises(InputError, match="not both weights and image_labels/text_labels"):
        medclip_loss(x, y, 10.0, image_labels=a, text_labels=u, weights=a @ u.T)
    with pytest.raises(InputError, match="same C"):
        medclip_loss(x, y, 10.0, image_labels=a, text_labels=u[:, :4])
    with pytest.raises(InputError, match=r"shape \[N, C\]"):
        medclip_loss(x, y, 10.0, image_labels=a[:5], text_labels=u)
