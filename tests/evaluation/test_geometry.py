"""E-MODGAP, E-ALIGNUNIF, E-RANK and neural-collapse oracles, plus the registered task."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.pairs import ClassTask, PairSet
from contrastkit.evaluation import EvalContext
from contrastkit.evaluation.encoders import Encoders
from contrastkit.evaluation.geometry import (
    alignment,
    covariance_spectrum,
    cross_uniformity,
    dense_alignment_uniformity,
    effective_rank,
    geometry_task,
    modality_gap,
    modality_separability,
    neural_collapse,
    numerical_rank,
    plot_modality_projection,
    plot_spectrum,
    uniformity,
)


def unit(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)


def rotation(d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]


def naive_uniformity(z, t=2.0):
    z = z.double()
    terms = [
        math.exp(-t * float((z[i] - z[j]).pow(2).sum())) for i, j in itertools.combinations(range(len(z)), 2)
    ]
    return math.log(sum(terms) / len(terms))


# ---- E-MODGAP --------------------------------------------------------------------------------------


def test_modality_gap_oracles():
    x = unit(50, 8, 0)
    assert modality_gap(x, x.clone())["gap"] == pytest.approx(0.0, abs=1e-12)
    m = modality_gap(x, -x)
    assert m["gap"] == pytest.approx(2 * float(x.mean(0).norm()), rel=1e-12)
    assert m["gap_cos"] == pytest.approx(-1.0)
    y = unit(70, 8, 1)  # different sizes: each set's own mean
    q = rotation(8, 2)
    a, b = modality_gap(x, y), modality_gap(x @ q, y @ q)
    assert a["gap"] == pytest.approx(b["gap"], rel=1e-10) and a["gap_cos"] == pytest.approx(b["gap_cos"])
    assert a["gap"] == pytest.approx(float((x.mean(0) - y.mean(0)).norm()))
    assert math.isnan(modality_gap(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), x[:, :2])["gap_cos"])


def test_separability_chance_and_perfect():
    x, y = unit(600, 4, 3), unit(600, 4, 4)
    assert modality_separability(x, y) == pytest.approx(0.5, abs=0.08)  # same distribution
    shift = torch.tensor([3.0, 0, 0, 0], dtype=torch.float64)
    assert modality_separability(F.normalize(x + shift, dim=-1), F.normalize(y - shift, dim=-1)) == 1.0
    with pytest.raises(InputError, match="at least 2"):
        modality_separability(x[:1], y)


# ---- E-ALIGNUNIF -----------------------------------------------------------------------------------


def test_alignment_hand_values_with_owners():
    x = torch.eye(3, dtype=torch.float64)
    y = torch.tensor([[1.0, 0, 0], [0, -1.0, 0], [0, 1.0, 0], [0, 0, 1.0]], dtype=torch.float64)
    a = alignment(x, y, np.array([0, 1, 1, 2]))
    torch.testing.assert_close(a, torch.tensor([0.0, 4.0, 0.0, 0.0], dtype=torch.float64))
    x2, y2 = unit(30, 5, 0), unit(30, 5, 1)
    cos = (x2 * y2).sum(1)
    torch.testing.assert_close(alignment(x2, y2).mean(), 2 - 2 * cos.mean())  # α = 2 on unit vectors
    torch.testing.assert_close(alignment(x2, y2, alpha=1), (x2 - y2).norm(dim=1))
    with pytest.raises(InputError, match="owner"):
        alignment(x, y, np.array([0, 1, 5, 2]))


def test_uniformity_spec_oracles():
    antipodal = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(antipodal) == pytest.approx(-8.0, abs=1e-5)
    simplex = torch.tensor(
        [[1.0, 0.0], [-0.5, math.sqrt(3) / 2], [-0.5, -math.sqrt(3) / 2]], dtype=torch.float64
    )
    assert uniformity(simplex) == pytest.approx(-6.0, abs=1e-12)
    assert uniformity(torch.ones(5, 3) / math.sqrt(3)) == pytest.approx(0.0, abs=1e-6)
    assert uniformity(simplex, t=1.0) == pytest.approx(-3.0, abs=1e-12)
    with pytest.raises(InputError, match="at least 2"):
        uniformity(antipodal[:1])


def test_uniformity_chunked_equals_dense_naive():
    z = unit(40, 6, 5)
    ref = naive_uniformity(z)
    for chunk in (1, 7, 40, 1000):
        assert uniformity(z, chunk=chunk) == pytest.approx(ref, rel=1e-12)
    assert uniformity(z.float(), chunk=9) == pytest.approx(ref, rel=1e-5)  # float32 path


def test_cross_uniformity_equals_naive_off_diagonal_mean():
    x, y = unit(7, 4, 6), unit(12, 4, 7)
    owner = np.array([0, 0, 1, 2, 3, 3, 4, 5, 6, 6, -1, 2])  # caption 10 has no image in x
    terms = [
        math.exp(-2 * float((x[i] - y[k]).pow(2).sum())) for i in range(7) for k in range(12) if owner[k] != i
    ]
    ref = math.log(sum(terms) / len(terms))
    assert len(terms) == 7 * 12 - 11
    for chunk in (1, 3, 100):
        assert cross_uniformity(x, y, owner, chunk=chunk) == pytest.approx(ref, rel=1e-12)
    paired = [math.exp(-2 * float((x[i] - x[k]).pow(2).sum())) for i in range(7) for k in range(7) if i != k]
    assert cross_uniformity(x, x) == pytest.approx(math.log(sum(paired) / len(paired)), rel=1e-12)


def test_dense_alignment_uniformity_on_patch_tokens():
    g = torch.Generator().manual_seed(8)
    px = torch.randn(3, 4, 5, generator=g, dtype=torch.float64) * 3  # not normalised: tokens are
    py = px + 0.1 * torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    out = dense_alignment_uniformity(px, py)
    fx, fy = F.normalize(px.reshape(12, 5), dim=-1), F.normalize(py.reshape(12, 5), dim=-1)
    assert out["alignment"] == pytest.approx(float((fx - fy).pow(2).sum(1).mean()))
    assert out["uniformity_x"] == pytest.approx(naive_uniformity(fx), rel=1e-12)
    assert out["uniformity_y"] == pytest.approx(naive_uniformity(fy), rel=1e-12)
    assert out["n_tokens"] == 12
    assert dense_alignment_uniformity(px, px)["alignment"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InputError, match=r"\[N, P, D\]"):
        dense_alignment_uniformity(px, py[:, :3])


# ---- E-RANK ----------------------------------------------------------------------------------------


def test_effective_rank_oracles():
    q = torch.linalg.qr(
        torch.randn(200, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )[0]
    assert effective_rank(q) == pytest.approx(16.0, rel=1e-4)  # orthonormal columns: equal σ
    rank1 = torch.outer(torch.arange(1.0, 51.0), torch.randn(16, generator=torch.Generator().manual_seed(1)))
    assert effective_rank(rank1) == pytest.approx(1.0, abs=1e-3)
    z = unit(100, 16, 2)
    assert effective_rank(z @ rotation(16, 3)) == pytest.approx(effective_rank(z), rel=1e-10)
    diag = torch.diag(torch.tensor([3.0, 1.0])).double()  # σ = (3, 1): p = (.75, .25) + 1e-7
    p = np.array([0.75, 0.25]) + 1e-7
    assert effective_rank(diag) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)
    with pytest.raises(InputError, match="all-zero"):
        effective_rank(torch.zeros(3, 2))


def test_spectrum_shows_the_planted_rank():
    g = torch.Generator().manual_seed(4)
    low = torch.randn(300, 3, generator=g, dtype=torch.float64) @ torch.randn(
        3, 20, generator=g, dtype=torch.float64
    )
    z = low + 1e-5 * torch.randn(300, 20, generator=g, dtype=torch.float64)
    ev = covariance_spectrum(z)
    np.testing.assert_allclose(
        ev, np.sort(np.linalg.eigvalsh(np.cov(z.numpy().T, bias=True)))[::-1], atol=1e-12
    )
    assert np.all(np.diff(ev) <= 0) and numerical_rank(ev, 1e-5) == 3
    assert numerical_rank(ev, 1e-14) == 20 and numerical_rank(np.zeros(4)) == 0
    assert int(torch.linalg.matrix_rank(low)) == 3


# ---- neural collapse -------------------------------------------------------------------------------


def simplex_etf(c, d, seed):
    """C unit vectors in R^d with pairwise cosine −1/(C−1), randomly rotated."""
    m = np.sqrt(c / (c - 1)) * (np.eye(c) - np.ones((c, c)) / c)
    return np.pad(m, ((0, 0), (0, d - c))) @ rotation(d, seed).numpy()


def planted(c, d, n_per, sigma, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(c), n_per)
    h = simplex_etf(c, d, seed)[labels] + sigma * rng.normal(size=(len(labels), d))
    return torch.from_numpy(h), labels


def naive_nc(h, labels):
    h = h.numpy()
    cls = np.unique(labels)
    means = np.stack([h[labels == k].mean(0) for k in cls])
    mu_g = h.mean(0)  # Papyan's global mean (balanced classes: = mean of class means)
    sw = sum(np.outer(v, v) for v in h - means[np.searchsorted(cls, labels)]) / len(h)
    sb = sum(np.outer(v, v) for v in means - mu_g) / len(cls)
    nc1 = np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10)) / len(cls)
    cen = means - mu_g
    norms = np.linalg.norm(cen, axis=1)
    cos = [cen[a] @ cen[b] / norms[a] / norms[b] for a, b in itertools.combinations(range(len(cls)), 2)]
    return nc1, norms.std() / norms.mean(), np.std(cos), np.mean(np.abs(np.array(cos) + 1 / (len(cls) - 1)))


def test_neural_collapse_on_a_planted_simplex_etf():
    h, labels = planted(5, 8, 40, 0.0, 0)
    nc = neural_collapse(h, labels)
    assert nc["nc1"] == pytest.approx(0.0, abs=1e-20) and nc["n_classes"] == 5
    for key in ("equinorm", "equiangular", "maxangle"):
        assert nc[key] == pytest.approx(0.0, abs=1e-12), key
    values = [neural_collapse(*planted(5, 8, 40, s, 1))["nc1"] for s in (0.1, 0.01, 0.001)]
    assert values[0] > values[1] > values[2] > 0
    assert values[1] / values[0] == pytest.approx(1e-2, rel=0.3)  # NC1 ∝ σ² → 0


def test_neural_collapse_equals_naive_formulas_and_ignores_unlabelled():
    h, labels = planted(4, 6, 30, 0.4, 2)
    h = h * torch.from_numpy(np.repeat([1.0, 1.5, 0.7, 1.2], 30))[:, None]  # unequal norms
    nc = neural_collapse(h, labels)
    ref = naive_nc(h, labels)
    for key, r in zip(("nc1", "equinorm", "equiangular", "maxangle"), ref):
        assert nc[key] == pytest.approx(r, rel=1e-8), key
    assert nc["equinorm"] > 0.05 and nc["equiangular"] > 0.01
    extra = torch.cat([h, torch.full((3, 6), 9.0, dtype=torch.float64)])
    nc2 = neural_collapse(extra, np.r_[labels, [-1, -1, -1]])
    assert nc2["nc1"] == pytest.approx(nc["nc1"], rel=1e-12)
    with pytest.raises(InputError, match="at least 2 classes"):
        neural_collapse(h, np.zeros(len(h), int))


# ---- the registered task and plots -----------------------------------------------------------------


def toy_context(n, options, seed=0):
    rng = np.random.default_rng(seed)
    emb = F.normalize(torch.from_numpy(rng.normal(size=(n, 6))), dim=-1).float()
    img = torch.arange(n, dtype=torch.int64).reshape(n, 1, 1, 1).expand(n, 3, 1, 1).to(torch.uint8)
    caps = tuple((f"{i} a", f"{i} b") for i in range(n))
    shift = torch.tensor([0.5, 0, 0, 0, 0, 0])
    table = {c: F.normalize(emb[i] + shift + 0.3 * torch.randn(6), dim=0) for i in range(n) for c in caps[i]}
    labels = np.where(np.arange(n) % 7 == 6, -1, np.arange(n) % 3)
    task = ClassTask(("a", "b", "c"), ("{}",), labels)
    enc = Encoders(lambda x: emb[x[:, 0, 0, 0].long()], lambda t: torch.stack([table[s] for s in t]))
    return EvalContext(enc, PairSet(img, caps, {"k": task}, name="toy/test"), None, options)


def test_task_metrics_match_the_functions(tmp_path):
    torch.manual_seed(0)
    ctx = toy_context(60, {"plot_dir": str(tmp_path), "geometry": {"max_uniformity": 25}})
    m, ex = geometry_task(ctx)
    x, y, owner = ctx.image_emb, ctx.text_emb, ctx.captions[1]
    assert m["geometry/n_pairs"] == 120 and ex["geometry/alignment"].shape == (120,)
    assert m["geometry/alignment"] == pytest.approx(float(alignment(x, y, owner).mean()))
    assert m["geometry/alignment"] == pytest.approx(ex["geometry/alignment"].mean())
    # subsample: 25 seeded images and 25 seeded texts; captions keep their image if it was drawn
    xi = np.sort(np.random.default_rng(0).choice(60, 25, replace=False))
    yi = np.sort(np.random.default_rng(1).choice(120, 25, replace=False))
    sub_owner = np.array([int(np.flatnonzero(xi == o)[0]) if o in xi else -1 for o in owner[yi]])
    assert m["geometry/uniformity_n_image"] == 25 and m["geometry/uniformity_n_text"] == 25
    assert m["geometry/image_uniformity"] == pytest.approx(naive_uniformity(x[xi]), rel=1e-5)
    assert m["geometry/text_uniformity"] == pytest.approx(naive_uniformity(y[yi]), rel=1e-5)
    assert m["geometry/cross_uniformity"] == pytest.approx(
        cross_uniformity(x[xi], y[yi], sub_owner), rel=1e-6
    )
    assert m["geometry/modality_gap"] == pytest.approx(float((x.mean(0) - y.mean(0)).norm()), rel=1e-5)
    assert (
        m["geometry/image/erank"] == pytest.approx(effective_rank(x)) and m["geometry/image/matrix_rank"] == 6
    )
    assert m["geometry/nc/k/nc1"] == pytest.approx(neural_collapse(x, ctx.pairs.tasks["k"].labels)["nc1"])
    assert 0 <= m["geometry/modality_separability"] <= 1
    for name in ("geometry_toy_test_spectrum.png", "geometry_toy_test_gap.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_plots_and_option_errors(tmp_path):
    x, y = unit(30, 5, 0), unit(40, 5, 1)
    p = plot_spectrum({"a": covariance_spectrum(x), "b": covariance_spectrum(y)}, tmp_path / "s.png")
    assert p.read_bytes()[:4] == b"\x89PNG"
    assert plot_modality_projection(x, y, tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="all zero"):
        plot_spectrum({"z": np.zeros(3)}, tmp_path / "z.png")
    with pytest.raises(ConfigError, match="max_uniformty"):
        geometry_task(toy_context(10, {"geometry": {"max_uniformty": 5}}))


def test_dense_metrics_in_the_task_use_mirrored_token_grids():
    """Raw pixels as the token grid are exactly flip-equivariant: the mirrored grid, mirrored back,
    equals the original, so dense alignment is 0; dense uniformity is the naive one over all tokens."""
    from contrastkit.data import make_shapes
    from contrastkit.evaluation.geometry import geometry_task

    pairs = make_shapes("test", 12, image_size=16)
    emb = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))

    def pixels(x):
        return x.float().permute(0, 2, 3, 1) + 1.0  # +1: no all-zero token to normalise

    enc = Encoders(lambda x: emb[: len(x)], lambda t: torch.ones(len(t), 4), image_patches=pixels)
    out, _ = geometry_task(EvalContext(enc, pairs, options={"geometry": {"max_dense": 3}}))
    assert out["geometry/dense/alignment"] == pytest.approx(0.0, abs=1e-12)
    tokens = F.normalize(pixels(pairs.images[:3]).reshape(-1, 3).double(), dim=1)
    sq = torch.cdist(tokens, tokens).square()
    off = ~torch.eye(len(tokens), dtype=torch.bool)
    naive = math.log(torch.exp(-2.0 * sq[off]).mean().item())
    assert out["geometry/dense/uniformity"] == pytest.approx(naive, abs=1e-6)
    assert out["geometry/dense/n_tokens"] == 3 * 16 * 16
    off_out, _ = geometry_task(EvalContext(enc, pairs, options={"geometry": {"max_dense": 0}}))
    assert not any("dense" in k for k in off_out)


@pytest.mark.parametrize(
    "arch,kwargs,grid",
    [
        ("resnet18", {"layers": [1, 1, 1, 1], "channels": [8, 8, 8, 8], "stem_width": 8}, (2, 2, 8)),
        (
            "vit_tiny_patch16_224",
            {"img_size": 64, "patch_size": 16, "depth": 1, "embed_dim": 16, "num_heads": 2},
            (4, 4, 16),
        ),
    ],
)
def test_image_towers_expose_their_token_grid_and_model_encoders_pass_it_on(arch, kwargs, grid):
    from contrastkit.evaluation import model_encoders
    from contrastkit.models import ModelConfig, TowerConfig, build_model

    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    base = ModelConfig.tiny()
    cfg = ModelConfig(
        towers={**base.towers, "image": TowerConfig("timm", {"arch": arch, "kwargs": kwargs})}, embed_dim=8
    )
    model = build_model(cfg, texts=["a red circle", "a blue square"]).eval()
    tokens = model.towers["image"].patch_tokens(images)
    assert tuple(tokens.shape) == (3, *grid)
    enc = model_encoders(model)
    torch.testing.assert_close(enc.image_patches(images), tokens.detach())
