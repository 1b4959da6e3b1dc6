"""JEST: pair losses and blocked joint selection against a loop-based float64 oracle written from
the formulas, the exact sequential distribution on a brute-force case, edge cases, config checks,
and exact resume of a tiny run with a reference."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from contrastkit.core.config import from_dict
from contrastkit.core.errors import ConfigError, InputError, MissingFileError
from contrastkit.train import RunConfig, read_metrics, resume, train
from contrastkit.train.config import CurationConfig
from contrastkit.train.jest import (
    Jest,
    JestConfig,
    check_jest,
    chunk_sizes,
    gumbel_draws,
    joint_select,
    score_matrix,
    sigmoid_pair_losses,
    super_batch_size,
)
from contrastkit.train.noisy import NoisyPairsConfig

# ---------------------------------------------------------------- the naive oracle (loops, float64)


def naive_pair_losses(x, y, t, b):
    """ℓ_ij = softplus(−z_ij (t x̂_i·ŷ_j + b)), z = +1 iff i = j."""
    n = len(x)
    out = np.zeros((n, n))
    for i in range(n):
        xi = x[i] / math.sqrt(sum(v * v for v in x[i]))
        for j in range(n):
            yj = y[j] / math.sqrt(sum(v * v for v in y[j]))
            a = -(1.0 if i == j else -1.0) * (t * sum(p * q for p, q in zip(xi, yj)) + b)
            out[i, j] = max(a, 0.0) + math.log1p(math.exp(-abs(a)))
    return out


def batch_score(s, subset):
    return sum(s[i, j] for i in subset for j in subset)


def naive_select(s, b, n_chunks, gumbel, first_chunk="diag"):
    """Chunk k: with A the rows chosen in earlier chunks, logit λ_c = score(A ∪ {c}) − score(A)
    (uniform: 0 for chunk 1); then repeatedly take the unchosen c with the largest λ_c + g_kc —
    sequential Gumbel-max, i.e. sampling without replacement ∝ softmax(λ)."""
    n = s.shape[0]
    sizes = [b // n_chunks + (1 if k < b % n_chunks else 0) for k in range(n_chunks)]
    chosen = []
    for k, size in enumerate(sizes):
        base = list(chosen)
        lam = {}
        for c in range(n):
            if c in base:
                continue
            gain = batch_score(s, [*base, c]) - batch_score(s, base)
            lam[c] = 0.0 if (k == 0 and first_chunk == "uniform") else gain
        for _ in range(size):
            c = max((c for c in lam if c not in chosen), key=lambda c: lam[c] + gumbel[k, c])
            chosen.append(c)
    return chosen


def embeddings(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(
        n, d, generator=g, dtype=torch.float64
    )


# ---------------------------------------------------------------- scoring and selection


def test_pair_losses_and_scores_equal_the_loop_oracle():
    (xl, yl), (xr, yr) = embeddings(7, 5, 0), embeddings(7, 5, 1)
    learn = sigmoid_pair_losses(xl, yl, 3.5, -1.2)
    ref = sigmoid_pair_losses(xr, yr, 10.0, 0.0)
    nl = naive_pair_losses(xl.numpy(), yl.numpy(), 3.5, -1.2)
    nr = naive_pair_losses(xr.numpy(), yr.numpy(), 10.0, 0.0)
    np.testing.assert_allclose(learn.numpy(), nl, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        score_matrix(learn, ref, "learnability").numpy(), nl - nr, rtol=1e-12, atol=1e-13
    )
    np.testing.assert_allclose(score_matrix(learn, None, "hard_learner").numpy(), nl, rtol=1e-12)
    np.testing.assert_allclose(score_matrix(None, ref, "easy_reference").numpy(), -nr, rtol=1e-12)
    with pytest.raises(InputError, match="learnability needs"):
        score_matrix(learn, None, "learnability")


@pytest.mark.parametrize(
    ("n", "b", "chunks", "first"), [(12, 6, 3, "diag"), (10, 7, 3, "diag"), (9, 4, 2, "uniform")]
)
def test_selection_equals_the_naive_scoring_and_sampling_for_the_same_draws(n, b, chunks, first):
    (xl, yl), (xr, yr) = embeddings(n, 4, n), embeddings(n, 4, n + 100)
    s = score_matrix(
        sigmoid_pair_losses(xl, yl, 5.0, -2.0), sigmoid_pair_losses(xr, yr, 8.0, -3.0), "learnability"
    )
    oracle = naive_pair_losses(xl.numpy(), yl.numpy(), 5.0, -2.0) - naive_pair_losses(
        xr.numpy(), yr.numpy(), 8.0, -3.0
    )
    np.testing.assert_allclose(s.numpy(), oracle, rtol=1e-12, atol=1e-13)  # the learnability values
    for draw in range(5):
        g = gumbel_draws(chunks, n, torch.Generator().manual_seed(draw))
        got = joint_select(s, b, chunks, g, first).tolist()
        assert got == naive_select(oracle, b, chunks, g.numpy(), first)
        assert len(set(got)) == b


def test_blocked_sampling_follows_the_exact_sequential_distribution():
    """B=6, b=2, n=2: P(i then j) = softmax(diag S)_i · softmax_{c≠i}(S_cc + S_ic + S_ci)_j."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(6, 6, generator=g, dtype=torch.float64)
    exact = {}
    first = torch.softmax(s.diagonal(), 0)
    for i in range(6):
        lam = torch.tensor([s[c, c] + s[i, c] + s[c, i] if c != i else -math.inf for c in range(6)])
        second = torch.softmax(lam, 0)
        for j in range(6):
            if j != i:
                exact[(i, j)] = float(first[i] * second[j])
    draws = 6_000
    counts = dict.fromkeys(exact, 0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(draws):
        i, j = joint_select(s, 2, 2, gumbel_draws(2, 6, gen)).tolist()
        counts[(i, j)] += 1
    for key, p in exact.items():
        sd = math.sqrt(p * (1 - p) / draws)
        assert abs(counts[key] / draws - p) < 4.5 * sd + 1e-4, (key, counts[key] / draws, p)


def test_one_chunk_is_gumbel_top_k_on_the_diagonal_and_zero_scores_are_uniform():
    s = torch.randn(8, 8, dtype=torch.float64)
    g = gumbel_draws(1, 8, torch.Generator().manual_seed(1))
    assert joint_select(s, 3, 1, g).tolist() == torch.topk(s.diagonal() + g[0], 3).indices.tolist()
    gen, counts = torch.Generator().manual_seed(2), np.zeros(8)
    for _ in range(2000):
        counts[joint_select(torch.zeros(8, 8), 2, 2, gumbel_draws(2, 8, gen)).numpy()] += 1
    assert abs(counts / 4000 - 1 / 8).max() < 0.025  # S ≡ 0: every row equally likely


def test_sizes_and_bad_parameters():
    assert super_batch_size(64, 0.5) == 128 and super_batch_size(64, 0.8) == 320
    assert super_batch_size(64, 0.0) == 64  # filter_ratio 0: every row
    assert chunk_sizes(10, 4) == [3, 3, 2, 2] and chunk_sizes(5, 5) == [1] * 5
    s, g = torch.zeros(6, 6), gumbel_draws(2, 6, torch.Generator())
    assert sorted(joint_select(s, 6, 2, g).tolist()) == list(range(6))  # b = B: all rows
    with pytest.raises(InputError, match="n_chunks"):
        chunk_sizes(3, 4)
    with pytest.raises(InputError, match="cannot select"):
        joint_select(s, 7, 2, g)
    with pytest.raises(InputError, match="square"):
        joint_select(torch.zeros(6, 5), 2, 2, g)
    with pytest.raises(InputError, match="gumbel"):
        joint_select(s, 4, 3, g)
    with pytest.raises(InputError, match="finite"):
        joint_select(torch.full((6, 6), math.nan), 2, 2, g)
    with pytest.raises(InputError, match="filter_ratio"):
        super_batch_size(64, 1.0)
    for bad, match in (
        ({"reference": ""}, "required"),
        ({"reference": "r", "filter_ratio": 1.0}, "filter_ratio"),
        ({"reference": "r", "filter_ratio": -0.1}, "filter_ratio"),
        ({"reference": "r", "n_chunks": 0}, "n_chunks"),
        ({"reference": "r", "score": "loss"}, "score"),
        ({"reference": "r", "first_chunk": "max"}, "first_chunk"),
    ):
        with pytest.raises(ConfigError, match=match):
            JestConfig(**bad)


# ---------------------------------------------------------------- in a run


def tiny(tmp_path, name, **train_changes):
    base = RunConfig.tiny(name=name, out_dir=str(tmp_path))
    return dataclasses.replace(base, train=dataclasses.replace(base.train, **train_changes))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    return train(tiny(out, "ref", steps=6, seed=100, ckpt_every=6)).run_dir


def jest_run(tmp_path, name, reference, filter_ratio=0.5, n_chunks=4, **train_changes):
    cfg = tiny(tmp_path, name, **train_changes)
    return dataclasses.replace(
        cfg, curation=CurationConfig(jest=JestConfig(str(reference), filter_ratio, n_chunks))
    )


def test_the_step_trains_on_the_selected_rows_of_a_super_batch(tmp_path, reference):
    from contrastkit.data import make_shapes
    from contrastkit.train.jest import load_reference

    cfg = jest_run(tmp_path, "j", reference)
    model, loss = load_reference(reference)  # a stand-in learner: any model and loss
    pairs = make_shapes("train", n=64, seed=0)
    jest = Jest.for_run(cfg, model, pairs, 0, 1)
    assert jest.super_batch == 64 and jest.keep == 32
    caps = [c[0] for c in pairs.captions]
    batch = {"image": pairs.images, "text": model.tokenize(caps), "labels": torch.arange(64)}
    out = jest.select(model, loss, batch, step=3)
    again = jest.select(model, loss, batch, step=3)
    assert out["labels"].tolist() == again["labels"].tolist()  # a function of (seed, step)
    assert len(set(out["labels"].tolist())) == 32
    learn = jest.pair_losses(model, loss, batch)
    s = score_matrix(learn, jest.pair_losses(jest.reference, jest.reference_loss, batch), "learnability")
    expect = joint_select(s, 32, 4, gumbel_draws(4, 64, jest.generator(3)))
    assert out["labels"].tolist() == expect.tolist()
    assert torch.equal(out["image"], pairs.images[expect])


def test_resumed_jest_run_equals_the_uninterrupted_one(tmp_path, reference):
    full = train(jest_run(tmp_path / "full", "r", reference, steps=12, log_every=1, ckpt_every=100))
    cut = train(jest_run(tmp_path / "cut", "r", reference, steps=12, log_every=1, ckpt_every=6))
    (cut.run_dir / "checkpoints" / "latest.json").write_text(json.dumps({"step": 6, "path": "step_00000006"}))
    assert resume(cut.run_dir).step == 12

    def losses(run_dir):
        return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}

    a, b = losses(full.run_dir), losses(cut.run_dir)
    assert [b[k] for k in range(7, 13)] == [a[k] for k in range(7, 13)]


def test_configs_jest_cannot_serve_are_refused_before_any_data(tmp_path, reference):
    cfg = jest_run(tmp_path, "bad", tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match="curation.jest.reference: no run folder"):
        train(cfg)
    assert not (tmp_path / "bad").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a trained contrastkit run"):
        check_jest(jest_run(tmp_path, "bad", tmp_path / "empty"))
    with pytest.raises(ConfigError, match="n_chunks=64 is above"):
        check_jest(jest_run(tmp_path, "bad", reference, n_chunks=64))
    with pytest.raises(ConfigError, match="divide by the 3 processes"):
        check_jest(jest_run(tmp_path, "bad", reference), world=3)
    check_jest(jest_run(tmp_path, "ok", reference), world=2)
    cfg = jest_run(tmp_path, "bad", reference)
    with pytest.raises(ConfigError, match="not drop"):
        check_jest(
            dataclasses.replace(
                cfg, curation=dataclasses.replace(cfg.curation, noisy_pairs=NoisyPairsConfig(mode="drop"))
            )
        )
    raw = {"curation": {"jest": {"reference": str(reference), "filter_ratio": 0.5}}}
    assert from_dict(RunConfig, raw).curation.jest == JestConfig(str(reference), 0.5)
    with pytest.raises(ConfigError):
        from_dict(RunConfig, {"curation": {"jest": {"reference": str(reference), "ratio": 0.5}}})
    with pytest.raises(ConfigError, match="curation.jest"):  # no reference
        from_dict(RunConfig, {"curation": {"jest": {"filter_ratio": 0.5}}})


def test_filter_ratio_zero_keeps_every_row(tmp_path, reference):
    cfg = jest_run(tmp_path, "all", reference, filter_ratio=0.0)
    from contrastkit.train.jest import load_reference

    model, loss = load_reference(reference)
    jest = Jest(cfg.curation.jest, 32, 0, model, loss)
    batch = {"labels": torch.arange(32)}
    assert jest.super_batch == 32 and jest.select(model, loss, batch, 0) is batch


def _two_process_worker(out_dir: str, reference: str):
    import torch.distributed as dist

    from contrastkit.train.jest import Jest as JestState

    seen = []
    original = JestState.select

    def spy(self, model, loss, batch, step):  # what each rank gets and keeps
        out = original(self, model, loss, batch, step)
        seen.append([len(batch["image"]), len(out["image"])])
        return out

    JestState.select = spy
    cfg = jest_run(out_dir, "two", reference, steps=4, log_every=1, ckpt_every=4)
    result = train(cfg)
    losses = [r["loss"] for r in read_metrics(result.run_dir) if "loss" in r] if dist.get_rank() == 0 else []
    return [seen, losses]


@pytest.mark.slow
def test_two_processes_each_select_within_their_own_slice(tmp_path, reference):
    from contrastkit.scale.launch import spawn_gloo

    parts = spawn_gloo(_two_process_worker, 2, str(tmp_path), str(reference), timeout_s=300)
    for seen, _ in parts:  # super-batch 64 = 2 × 32 rows scored, 2 × 16 kept
        assert seen == [[32, 16]] * 4
    assert len(parts[0][1]) == 4 and all(math.isfinite(v) for v in parts[0][1])
