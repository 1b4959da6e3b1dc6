"""M-MAXSIM scoring: the tiled MaxSim equals the naive loop (values and gradients, float64), and
its defining properties: one token each = cosine, padding never changes a score, the two padding
modes on all-negative similarities, fully masked sets refused."""

import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import InputError
from contrastkit.losses.maxsim import FILL, maxsim, maxsim_pairs, tile_for, token_set


def _naive(q, d, qm, dm, mode):
    """Σ_a max_b over Python loops (autograd through torch.stack/max)."""
    rows = []
    for i in range(q.shape[0]):
        row = []
        for j in range(d.shape[0]):
            total = q.new_zeros(())
            for a in range(q.shape[1]):
                if not qm[i, a]:
                    continue
                if mode == "v2":
                    sims = [q[i, a] @ d[j, b] for b in range(d.shape[1]) if dm[j, b]]
                else:  # v1: padding vectors are zero vectors
                    sims = [q[i, a] @ (d[j, b] * dm[j, b]) for b in range(d.shape[1])]
                total = total + torch.stack(sims).max()
            row.append(total)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def _data(gen, nq=5, nd=7, tq=3, td=6, dim=4):
    q = F.normalize(torch.randn(nq, tq, dim, generator=gen, dtype=torch.float64), dim=-1).requires_grad_()
    d = F.normalize(torch.randn(nd, td, dim, generator=gen, dtype=torch.float64), dim=-1).requires_grad_()
    qm = torch.rand(nq, tq, generator=gen) > 0.3
    dm = torch.rand(nd, td, generator=gen) > 0.4
    qm[:, 0] = dm[:, -1] = True  # every set keeps a token
    return q, d, qm, dm


@pytest.mark.parametrize("mode", ["v2", "zero_vector"])
@pytest.mark.parametrize("tile", [None, 1, 2, 3])
def test_maxsim_equals_the_naive_loop_values_and_gradients(rng, mode, tile):
    q, d, qm, dm = _data(rng)
    s = maxsim(q, d, qm, dm, doc_mask_mode=mode, tile=tile)
    ref = _naive(q, d, qm, dm, mode)
    torch.testing.assert_close(s, ref, rtol=0, atol=1e-12)
    w = torch.randn(s.shape, generator=rng, dtype=torch.float64)
    got = torch.autograd.grad((s * w).sum(), (q, d))
    want = torch.autograd.grad((ref * w).sum(), (q, d))
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


def test_one_token_each_is_the_cosine(rng):
    x = torch.randn(6, 8, generator=rng, dtype=torch.float64)
    y = torch.randn(4, 8, generator=rng, dtype=torch.float64)
    xn, yn = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    s = maxsim(xn[:, None], yn[:, None])
    torch.testing.assert_close(s, xn @ yn.T, rtol=0, atol=1e-15)
    t, m = token_set(x)  # [N, d] reads as one-token sets
    assert t.shape == (6, 1, 8) and bool(m.all())


@pytest.mark.parametrize("tile", [None, 2])
def test_appended_padding_never_changes_scores_or_gradients(rng, tile):
    q, d, qm, dm = _data(rng)
    s = maxsim(q, d, qm, dm, tile=tile)
    gq, gd = torch.autograd.grad(s.sum(), (q, d))
    # padding positions with arbitrary (even large) vectors, masked out
    junk_d = torch.randn(d.shape[0], 5, d.shape[2], generator=rng, dtype=torch.float64) * 100
    junk_q = torch.randn(q.shape[0], 2, q.shape[2], generator=rng, dtype=torch.float64) * 100
    d2 = torch.cat([d.detach(), junk_d], 1).requires_grad_()
    q2 = torch.cat([q.detach(), junk_q], 1).requires_grad_()
    dm2 = torch.cat([dm, torch.zeros(d.shape[0], 5, dtype=torch.bool)], 1)
    qm2 = torch.cat([qm, torch.zeros(q.shape[0], 2, dtype=torch.bool)], 1)
    s2 = maxsim(q2, d2, qm2, dm2, tile=tile)
    # equal up to the matrix product's rounding (BLAS kernels depend on the matrix shape)
    torch.testing.assert_close(s2, s, rtol=0, atol=1e-14)
    gq2, gd2 = torch.autograd.grad(s2.sum(), (q2, d2))
    torch.testing.assert_close(gq2[:, : q.shape[1]], gq, rtol=0, atol=1e-14)
    torch.testing.assert_close(gd2[:, : d.shape[1]], gd, rtol=0, atol=1e-14)
    assert not gq2[:, q.shape[1] :].any() and not gd2[:, d.shape[1] :].any()  # exactly none


def test_all_negative_similarities_the_two_padding_modes():
    q = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)  # 2 queries, 1 token
    # one document: two real tokens pointing away from both queries, one padding position
    d = F.normalize(torch.tensor([[[-1.0, -0.2], [-0.3, -1.0], [0.0, 0.0]]], dtype=torch.float64), dim=-1)
    dm = torch.tensor([[True, True, False]])
    true_max = (q[:, 0] @ d[0, :2].T).max(1).values
    assert bool((true_max < 0).all())
    v2 = maxsim(q, d, d_mask=dm, doc_mask_mode="v2")[:, 0]
    v1 = maxsim(q, d, d_mask=dm, doc_mask_mode="zero_vector")[:, 0]
    torch.testing.assert_close(v2, true_max, rtol=0, atol=0)  # −9999 never wins: the true max
    assert torch.equal(v1, torch.zeros(2, dtype=torch.float64))  # the zero vector wins with 0
    assert FILL == -9999.0


def test_fully_masked_sets_are_refused(rng):
    q, d, qm, dm = _data(rng)
    dm[3] = False
    with pytest.raises(InputError, match="document 3 has every position masked"):
        maxsim(q, d, qm, dm)
    with pytest.raises(InputError, match="document 3 has every position masked"):
        maxsim(q, d, qm, dm, doc_mask_mode="zero_vector")
    dm[3, 0] = True
    qm[1] = False
    with pytest.raises(InputError, match="query 1 has every position masked"):
        maxsim(q, d, qm, dm)
    zero_doc = torch.zeros(2, 3, 4)
    zero_doc[0, 0, 0] = 1.0
    qt, qm1 = token_set(torch.ones(1, 4))
    dt, dm1 = token_set(zero_doc)  # a packed set of zero rows reads as fully masked
    with pytest.raises(InputError, match="document 1 has every position masked"):
        maxsim(qt, dt, qm1, dm1)


def test_bad_inputs():
    with pytest.raises(InputError, match="token dimension mismatch"):
        maxsim(torch.randn(2, 3, 4), torch.randn(2, 3, 5))
    with pytest.raises(InputError, match="doc_mask_mode"):
        maxsim(torch.randn(2, 3, 4), torch.randn(2, 3, 4), doc_mask_mode="v3")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="mask must be bool"):
        maxsim(torch.randn(2, 3, 4), torch.randn(2, 3, 4), d_mask=torch.ones(2, 3))
    with pytest.raises(InputError, match="token set"):
        token_set(torch.randn(2, 3, 4, 5))
    with pytest.raises(InputError, match="non-finite|NaN"):
        token_set(torch.full((2, 3), float("nan")))


def test_tile_size_bounds_the_similarities_held_at_once():
    assert tile_for(32, 180) == 26  # 26² · 32 · 180 ≤ 2^22 < 27² · 32 · 180
    assert tile_for(1, 1) == 2048 and tile_for(8, 16, tile=5) == 5
    with pytest.raises(InputError, match="tile"):
        tile_for(8, 16, tile=0)


def test_pairs_equal_the_matrix_diagonal_blocks(rng):
    q, d, qm, dm = _data(rng, nq=4, nd=8)
    docs, masks = d.detach().view(4, 2, 6, 4), dm.view(4, 2, 6)  # query i gets docs 2i, 2i+1
    for mode in ("v2", "zero_vector"):
        full = maxsim(q.detach(), d.detach(), qm, dm, doc_mask_mode=mode)
        pairs = maxsim_pairs(q.detach(), docs, qm, masks, doc_mask_mode=mode)
        want = torch.stack([full[i, 2 * i : 2 * i + 2] for i in range(4)])
        torch.testing.assert_close(pairs, want, rtol=0, atol=1e-12)
