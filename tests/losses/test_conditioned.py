"""RCML (relation-conditioned contrast) and Hydra (class-pair gates) against naive float64 loops."""

import pytest
import torch

from contrastkit import losses
from contrastkit.core.errors import InputError
from contrastkit.losses.conditioned import gated_cosine, hydra_loss, pair_index, rcml_loss


def gcos(a, b, g):
    return ((a * g) @ (b * g)) / ((a * g).norm() * (b * g).norm())


def naive_multi_pos(sim, pos_sets, cand_sets):
    total, count = 0.0, 0
    for i, (pos, cand) in enumerate(zip(pos_sets, cand_sets)):
        if not pos:
            continue
        lse = torch.logsumexp(torch.stack([sim(i, a) for a in cand]), 0)
        total = total + sum(lse - sim(i, p) for p in pos) / len(pos)
        count += 1
    return total / max(count, 1)


def naive_rcml(x, y, g, labels, tau, lam):
    n = x.shape[0]
    lab = list(range(n)) if labels is None else labels.tolist()
    pos_inter = [[j for j in range(n) if lab[j] == lab[i]] for i in range(n)]
    pos_intra = [[j for j in range(n) if j != i and lab[j] == lab[i]] for i in range(n)]
    every = [list(range(n))] * n
    others = [[j for j in range(n) if j != i] for i in range(n)]

    def s(a, b):
        return lambda i, j: gcos(a[i], b[j], g[i]) / tau

    inter = 0.5 * (naive_multi_pos(s(x, y), pos_inter, every) + naive_multi_pos(s(y, x), pos_inter, every))
    intra = 0.5 * (naive_multi_pos(s(x, x), pos_intra, others) + naive_multi_pos(s(y, y), pos_intra, others))
    return inter + lam * intra


def naive_hydra(x, y, theta, labels, tau, c):
    z = torch.cat([x, y])
    lab = labels.tolist() * 2
    m = len(lab)
    total, count = 0.0, 0
    for i in range(m):
        a = lab[i]
        for b in sorted(set(lab)):
            lo, hi = min(a, b), max(a, b)
            g = torch.sigmoid(theta[lo * c - lo * (lo - 1) // 2 + hi - lo])
            pos = [p for p in range(m) if p != i and lab[p] == b]
            neg = [k for k in range(m) if lab[k] not in (a, b)]
            if not pos:
                continue
            ell = 0.0
            for p in pos:
                sp = gcos(z[i], z[p], g) / tau
                den = torch.exp(sp) + sum(torch.exp(gcos(z[i], z[k], g) / tau) for k in neg)
                ell = ell - torch.log(torch.exp(sp) / den)
            total = total + ell / len(pos)
            count += 1
    return total / count


def _data(n, d=4, seed=0, count=3):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(count)]


def test_gated_cosine_equals_explicit_loop():
    a, b, g = _data(3, seed=1)
    g = torch.sigmoid(g)
    want = torch.stack([torch.stack([gcos(a[i], b[j], g[i]) for j in range(3)]) for i in range(3)])
    torch.testing.assert_close(gated_cosine(a, b, g), want)


@pytest.mark.parametrize(("labels", "lam"), [(None, 1.0), ([0, 1, 0, 2, 1], 0.5), ([3, 3, 3, 3, 3], 2.0)])
def test_rcml_matches_naive_loop(labels, lam):
    x, y, r = _data(5, seed=2)
    g = torch.sigmoid(r)
    lab = None if labels is None else torch.tensor(labels)
    got = rcml_loss(x, y, g, labels=lab, temperature=0.3, intra_weight=lam)
    want = naive_rcml(x, y, g, lab, 0.3, lam)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad(got, (x, y, r), retain_graph=True), torch.autograd.grad(want, (x, y, r))
    ):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_rcml_module_starts_unconditioned_and_reads_the_relation_key():
    x, y, r = _data(6, seed=3)
    loss = losses.build("rcml", dim=4).double()
    emb = {"image": x, "text": y, "relation": r}
    half = torch.full_like(x, 0.5)
    torch.testing.assert_close(loss(emb), rcml_loss(x, y, half))  # W = 0, b = 0 ⇒ g = ½ ⇒ no conditioning
    torch.testing.assert_close(rcml_loss(x, y, half), rcml_loss(x, y, torch.ones_like(x)))
    with torch.no_grad():
        loss.gate.weight.normal_()
    g = torch.sigmoid(loss.gate(r))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    torch.testing.assert_close(loss(emb, labels=labels), rcml_loss(x, y, g, labels=labels))
    with pytest.raises(InputError, match=r"needs embeddings \['relation'\]"):
        loss({"image": x, "text": y})


@pytest.mark.parametrize("labels", [[0, 1, 0, 2, 1], [2, 2, 0, 0, 1]])
def test_hydra_matches_naive_loop(labels):
    c = 3
    x, y = _data(5, seed=4, count=2)
    theta = torch.randn(c * (c + 1) // 2, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    theta.requires_grad_()
    lab = torch.tensor(labels)
    got = hydra_loss(x, y, theta, labels=lab, temperature=0.5)
    want = naive_hydra(x, y, theta, lab, 0.5, c)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (x, y, theta)), torch.autograd.grad(want, (x, y, theta))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_hydra_pair_table_and_limits():
    c = 4
    idx = [int(pair_index(torch.tensor(a), torch.tensor(b), c)) for a in range(c) for b in range(a, c)]
    assert idx == list(range(c * (c + 1) // 2))
    assert int(pair_index(torch.tensor(3), torch.tensor(1), c)) == int(
        pair_index(torch.tensor(1), torch.tensor(3), c)
    )
    # one class: every negative set is empty, so every term is −log 1 = 0
    x, y = _data(4, seed=6, count=2)
    theta = torch.zeros(10, 4, dtype=torch.float64)
    assert float(hydra_loss(x, y, theta, labels=torch.zeros(4, dtype=torch.long)).detach()) == 0.0
    loss = losses.build("hydra", num_classes=4, dim=4)
    assert loss.gate_logits.shape == (10, 4)
    lab = torch.tensor([0, 3, 3, 1])
    torch.testing.assert_close(
        loss(x.float(), y.float(), labels=lab), hydra_loss(x.float(), y.float(), loss.gate_logits, labels=lab)
    )
    with pytest.raises(InputError, match=r"labels must lie in \[0, C=4\)"):
        loss(x.float(), y.float(), labels=torch.tensor([0, 1, 2, 9]))
    plain = hydra_loss(x, y, theta, labels=lab)
    penalised = hydra_loss(x, y, theta, labels=lab, gate_l1=0.5)
    assert float((penalised - plain).detach()) == pytest.approx(0.25)  # all gates ½
