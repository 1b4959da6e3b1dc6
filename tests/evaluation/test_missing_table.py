"""The missing-modality table on synthetic embeddings whose answer is known: labels readable from
every single modality (MultiModN and prompts stay at ~1.0 with two modalities removed), or from one
modality only (removing it drops the mean baseline to chance); determinism; the MMP head."""

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.evaluation.missing import MMPHead, missing_modality_table, removal_patterns

MODS = ("attributes", "image", "text")
C, D = 4, 16


def data(n, seed, informative=MODS, noise=0.3):
    """Class centres seen through a different rotation per modality (+ noise); non-informative
    modalities are pure noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(C, D, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, C, (n,), generator=g)
    emb = {}
    for i, m in enumerate(MODS):
        rot = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(7 + i)))[0]
        base = centres[y] @ rot if m in informative else torch.randn(n, D, generator=g)
        emb[m] = base + noise * torch.randn(n, D, generator=g)
    return emb, y


def by(rows, head, kind, key):
    return {r[key]: r["accuracy"] for r in rows if r["head"] == head and r["kind"] == kind}


def test_any_single_modality_suffices_for_multimodn_and_prompts():
    (tr, ytr), (te, yte) = data(256, 0), data(300, 1)
    rows = missing_modality_table(tr, ytr, te, yte, heads=("multimodn", "prompts"), seeds=(0,), epochs=15)
    for head in ("multimodn", "prompts"):
        per_k = by(rows, head, "n_missing", "n_missing")
        assert set(per_k) == {0, 1, 2} and min(per_k.values()) >= 0.97, (head, per_k)
        per_pattern = by(rows, head, "pattern", "removed")
        assert set(per_pattern) == {
            "",
            "attributes",
            "image",
            "text",
            "attributes+image",
            "attributes+text",
            "image+text",
        }
        assert min(per_pattern.values()) >= 0.95, (head, per_pattern)


def test_removing_the_only_informative_modality_drops_the_mean_baseline_to_chance():
    (tr, ytr), (te, yte) = data(512, 0, informative=("image",)), data(400, 1, informative=("image",))
    rows = missing_modality_table(tr, ytr, te, yte, heads=("mean",), seeds=(0,), epochs=20)
    acc = by(rows, "mean", "pattern", "removed")
    assert acc["attributes+text"] >= 0.95  # the image alone
    for removed in ("image", "attributes+image", "image+text"):
        assert abs(acc[removed] - 1 / C) < 0.1, (removed, acc[removed])
    per_k = by(rows, "mean", "n_missing", "n_missing")
    want = (acc["attributes+image"] + acc["attributes+text"] + acc["image+text"]) / 3
    assert per_k[2] == pytest.approx(want, abs=1e-12)


def test_the_table_is_deterministic_given_the_seeds_and_keeps_the_global_rng():
    (tr, ytr), (te, yte) = data(128, 0), data(64, 1)
    kw = {"heads": ("mean", "mmp"), "seeds": (0, 1), "epochs": 3, "batch_size": 32}
    torch.manual_seed(5)
    a = missing_modality_table(tr, ytr, te, yte, **kw)
    after = torch.rand(1)
    b = missing_modality_table(tr, ytr, te, yte, **kw)
    assert a == b
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))  # the table drew nothing from the global RNG
    assert all(r["n_seeds"] == 2 for r in a) and len(a) == 2 * (7 + 3)
    c = missing_modality_table(tr, ytr, te, yte, **{**kw, "seeds": (2, 3)})
    assert [r["accuracy"] for r in c] != [r["accuracy"] for r in a]


def test_mmp_head_completes_missing_modalities_and_trains_with_alignment(rng):
    torch.manual_seed(0)
    head = MMPHead(MODS, D, C).double()
    emb = {m: torch.randn(5, D, generator=rng, dtype=torch.float64) for m in MODS}
    present = {"image": torch.tensor([True, False, True, True, False])}
    scrambled = {m: v.clone() for m, v in emb.items()}
    scrambled["image"][~present["image"]] = float("nan")
    torch.testing.assert_close(head(scrambled, present), head(emb, present), rtol=0, atol=0)
    y = torch.arange(5) % C
    keep = {"text": torch.tensor([False, True, True, True, True])}
    loss = head.loss(emb, None, y, keep=keep)  # text of row 0 masked, its real embedding the target
    ce = torch.nn.functional.cross_entropy(head(emb, keep), y)
    _, align = head.projection.replace(
        {m: torch.nn.functional.normalize(v, dim=-1) for m, v in emb.items()},
        torch.tensor([[False, False, True]] + [[False] * 3] * 4),
        torch.ones(5, 3, dtype=torch.bool),
    )
    assert align.item() > 0
    torch.testing.assert_close(loss, ce + align, rtol=1e-12, atol=1e-14)
    nothing_masked = torch.nn.functional.cross_entropy(head(emb), y)  # no alignment term
    torch.testing.assert_close(head.loss(emb, None, y), nothing_masked, rtol=0, atol=0)


def test_patterns_and_errors():
    assert removal_patterns(("a", "b", "c"), 1) == [(), ("a",), ("b",), ("c",)]
    (tr, ytr), (te, yte) = data(16, 0), data(8, 1)
    with pytest.raises(ConfigError, match="max_missing"):
        missing_modality_table(tr, ytr, te, yte, max_missing=3)
    with pytest.raises(ConfigError, match="unknown fusion head 'sum'"):
        missing_modality_table(tr, ytr, te, yte, heads=("sum",), epochs=0)
    with pytest.raises(ConfigError, match="head_params for heads not evaluated"):
        missing_modality_table(tr, ytr, te, yte, heads=("mean",), head_params={"mmp": {}})
    with pytest.raises(InputError, match=r"test embeddings lack \['text'\]"):
        missing_modality_table(tr, ytr, {m: te[m] for m in ("attributes", "image")}, yte)
    with pytest.raises(InputError, match="test embedding 'image' has shape"):
        missing_modality_table(tr, ytr, {**te, "image": te["image"][:3]}, yte)
