"""S-CLIP-RING (Inf-CL's ring for CLIP) against the plain single-process ``clip_loss`` (float64, gloo).

Oracle: ``clip_loss`` on the concatenated global batch, values and gradients w.r.t. x, y and the
log of the logit scale. Rank r takes rows [r·b, (r+1)·b); after backward the loss and the scale's
gradient are averaged over ranks (DDP's average), and each rank's x/y gradients divided by D and
concatenated in rank order are the full-batch gradients (a tower's averaged gradient is then the
full-batch one). One spawned group per world size runs every case; world 2 runs by default,
3 and 4 are marked slow. The exchanges are recorded to check the protocol: only ``[b, ·]`` blocks
travel, never an N-row gather.
"""

import dataclasses
import math

import pytest
import torch
import torch.distributed as dist

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.losses import CLIPLoss, PairLoss, SigLIPLoss, clip_loss
from contrastkit.losses.supcon import SupConLoss
from contrastkit.scale import ScaleConfig
from contrastkit.scale.distributed import GatherLoss, rank, world_size
from contrastkit.scale.launch import spawn_gloo
from contrastkit.scale.ring_clip import CLIPRingLoss, clip_ring_loss
from contrastkit.scale.ring_siglip import SigLIPRingLoss
from contrastkit.train.distributed import DistContext, wrap_loss

B_LOCAL, DIM = 4, 5
RTOL = 1e-10
TILES = (1, 3, 100)  # 100 > b: one tile per block pair
CASES = {f"tile{t}": (t, math.log(1 / 0.07)) for t in TILES}
CASES["large-scale"] = (3, math.log(1000.0))  # LSEs spread beyond the one-exp path: two-exp tiles


def _inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, n, DIM, generator=g, dtype=torch.float64)
    return x, y


def _oracle(n: int, log_scale: float) -> dict[str, torch.Tensor]:
    x, y = (t.requires_grad_() for t in _inputs(n))
    ls = torch.tensor(log_scale, dtype=torch.float64, requires_grad=True)
    loss = clip_loss(x, y, ls.exp())
    loss.backward()
    return {"loss": loss.detach(), "x": x.grad, "y": y.grad, "log_scale": ls.grad}


# ------------------------------------------------------------------------------------------------
# what each rank runs


def _rank_case(tile: int, log_scale: float) -> dict[str, torch.Tensor]:
    d, r = world_size(), rank()
    x, y = _inputs(B_LOCAL * d)
    rows = slice(r * B_LOCAL, (r + 1) * B_LOCAL)
    x, y = x[rows].clone().requires_grad_(), y[rows].clone().requires_grad_()
    ls = torch.tensor(log_scale, dtype=torch.float64, requires_grad=True)
    loss = clip_ring_loss(x, y, ls.exp(), tile_size=tile)
    loss.backward()
    out = {"loss": loss.detach().clone(), "log_scale": ls.grad.clone()}
    for value in out.values():
        dist.all_reduce(value)
        value /= d
    for name, grad in (("x", x.grad), ("y", y.grad)):
        parts = [torch.empty_like(grad) for _ in range(d)]
        dist.all_gather(parts, grad / d)
        out[name] = torch.cat(parts)
    return out


def _module_case() -> dict[str, torch.Tensor]:
    """CLIPRingLoss around a CLIP module with a bias: the module's parameters get the gradients."""
    d, r = world_size(), rank()
    x, y = _inputs(B_LOCAL * d)
    rows = slice(r * B_LOCAL, (r + 1) * B_LOCAL)
    module = CLIPLoss(init_bias=0.5).double()
    loss = CLIPRingLoss(module, tile_size=3)(x[rows], y[rows])
    loss.backward()
    out = {"loss": loss.detach().clone(), "log_scale": module.log_scale.grad.clone()}
    out["bias"] = module.bias.grad.clone()
    for value in out.values():
        dist.all_reduce(value)
        value /= d
    return out


def _recorded_exchanges() -> dict[str, list]:
    """Shapes of every point-to-point message and collective of one forward + backward."""
    sent: list[list[int]] = []
    gathered: list[list[int]] = []
    real_batch, real_gather = dist.batch_isend_irecv, dist.all_gather

    def batch(ops):
        sent.extend(list(op.tensor.shape) for op in ops if op.op is dist.isend)
        return real_batch(ops)

    def gather(parts, t, group=None):
        gathered.append(list(t.shape))
        return real_gather(parts, t, group=group)

    dist.batch_isend_irecv, dist.all_gather = batch, gather
    try:
        _rank_case(3, 2.0)
    finally:
        dist.batch_isend_irecv, dist.all_gather = real_batch, real_gather
    return {"sent": sent, "gathered": gathered[:-2]}  # the last two are _rank_case's own gathers


def _error_probes() -> dict[str, str]:
    r, out = rank(), {}
    uneven = torch.randn(2 + r, DIM, dtype=torch.float64)  # rank r has 2 + r pairs
    nan = torch.ones(3, DIM, dtype=torch.float64)
    if r == 1:
        nan[0, 0] = float("nan")  # only rank 1's input is malformed
    probes = {
        "uneven": lambda: clip_ring_loss(uneven, uneven, 10.0),
        "nan-on-rank-1": lambda: clip_ring_loss(nan, nan, 10.0),
    }
    for name, call in probes.items():
        try:
            call()
            out[name] = "no error"
        except InputError as err:
            out[name] = str(err)
    return out


def _worker() -> dict:
    results: dict = {name: _rank_case(*case) for name, case in CASES.items()}
    results["module"] = _module_case()
    results["exchanges"] = _recorded_exchanges()
    results["errors"] = _error_probes()
    return results


@pytest.fixture(
    scope="module",
    params=[2, pytest.param(3, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow)],
)
def spawned(request):
    n = request.param
    return n, spawn_gloo(_worker, n, timeout_s=180.0)


def _assert_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(
            got[key], want[key], rtol=RTOL, atol=1e-14, msg=lambda m, k=key: f"{k}: {m}"
        )


# ------------------------------------------------------------------------------------------------
# multi-process checks


@pytest.mark.parametrize("case", list(CASES))
def test_ring_equals_full_batch_clip(spawned, case):
    n, results = spawned
    log_scale = CASES[case][1]
    want = _oracle(B_LOCAL * n, log_scale)
    for res in results:  # averaged values identical on every rank
        _assert_close(res[case], want)


def test_large_scale_case_leaves_the_one_exp_range():
    x, y = (torch.nn.functional.normalize(t, dim=1) for t in _inputs(B_LOCAL * 2))
    logits = 1000.0 * x @ y.T
    lse = torch.cat([logits.logsumexp(1), logits.logsumexp(0)])
    assert float(lse.max() - lse.min()) > 0.5 * math.log(torch.finfo(torch.float64).max)


def test_module_gradients_reach_scale_and_bias(spawned):
    n, results = spawned
    x, y = _inputs(B_LOCAL * n)
    module = CLIPLoss(init_bias=0.5).double()
    loss = module(x, y)
    loss.backward()
    want = {
        "loss": loss.detach(),
        "log_scale": module.log_scale.grad,
        "bias": torch.zeros((), dtype=torch.float64),
    }
    _assert_close(results[0]["module"], want)


def test_only_local_blocks_travel(spawned):
    n, results = spawned
    b, d = B_LOCAL, DIM
    forward = [[b, d]] * (n - 1) + [[b]] * n  # text blocks D−1 hops; column LSEs D hops (home)
    backward = [[b, d + 2]] * (n - 1) + [[b, d]] * n  # block + its LSE and gradient; dy home
    for res in results:
        assert sorted(res["exchanges"]["sent"]) == sorted(forward + backward)
        assert res["exchanges"]["gathered"] == [[3]]  # the cross-rank input check only


def test_bad_inputs_raise_on_every_rank(spawned):
    n, results = spawned
    shapes = ", ".join(f"rank {r}: [{2 + r}, {DIM}]" for r in range(n))
    for r, res in enumerate(results):
        errors = res["errors"]
        assert shapes in errors["uneven"] and "same shape on every rank" in errors["uneven"]
        nan_msg = errors["nan-on-rank-1"]
        assert ("non-finite" in nan_msg) if r == 1 else ("rank(s) [1] rejected" in nan_msg), nan_msg


# ------------------------------------------------------------------------------------------------
# one process: the same computation (tiled CLIP), refusals, configuration


@pytest.mark.parametrize("tile", [1, 3, 100])
@pytest.mark.parametrize("log_scale", [math.log(1 / 0.07), math.log(1000.0)])
def test_without_process_group_equals_clip_loss(tile, log_scale):
    n = 7
    want = _oracle(n, log_scale)
    x, y = (t.requires_grad_() for t in _inputs(n))
    ls = torch.tensor(log_scale, dtype=torch.float64, requires_grad=True)
    loss = clip_ring_loss(x, y, ls.exp(), tile_size=tile)
    loss.backward()
    _assert_close({"loss": loss.detach(), "x": x.grad, "y": y.grad, "log_scale": ls.grad}, want)


def test_bad_arguments_are_refused():
    x = _inputs(3)[0]
    with pytest.raises(InputError, match="tile_size"):
        clip_ring_loss(x, x, 10.0, tile_size=0)
    with pytest.raises(InputError, match="1 pair"):
        clip_ring_loss(x[:1], x[:1], 10.0)
    single = clip_ring_loss(x[:1], x[:1], 10.0, allow_single=True)  # LSE of one logit: itself
    assert float(single) == pytest.approx(0.0, abs=1e-14)
    with pytest.raises(InputError, match="logit_scale"):
        clip_ring_loss(x, x, torch.tensor(float("nan")))
    with pytest.raises(InputError):
        clip_ring_loss(x, x[:2], 10.0)


def test_module_refuses_other_losses_and_delegates():
    with pytest.raises(ConfigError, match="clip_loss"):
        CLIPRingLoss(SigLIPLoss())
    with pytest.raises(ConfigError, match="pure"):
        CLIPRingLoss(PairLoss())
    with pytest.raises(InputError, match="tile_size"):
        CLIPRingLoss(CLIPLoss(), tile_size=0)
    inner = CLIPLoss().double()
    wrapped = CLIPRingLoss(inner)
    assert list(wrapped.parameters()) == list(inner.parameters())
    assert wrapped.log_values() == inner.log_values()
    with torch.no_grad():
        inner.log_scale.fill_(10.0)
    wrapped.after_optimizer_step()  # the wrapped loss's clamp runs
    assert float(inner.log_scale.detach()) == pytest.approx(math.log(100.0))
    x, y = _inputs(5)
    assert torch.equal(wrapped(x, y), inner(x, y))  # no process group: the wrapped loss itself


def test_dist_loss_ring_selects_the_ring_of_the_loss():
    two = DistContext(rank=0, world=2)
    ring = ScaleConfig(dist_loss="ring")
    clip = wrap_loss(CLIPLoss(), ring, two)
    assert isinstance(clip, CLIPRingLoss) and clip.tile_size == 2048
    tiled = wrap_loss(CLIPLoss(), dataclasses.replace(ring, tile_size=64), two)
    assert isinstance(tiled, CLIPRingLoss) and tiled.tile_size == 64
    assert isinstance(wrap_loss(SigLIPLoss(), ring, two), SigLIPRingLoss)
    assert isinstance(wrap_loss(CLIPLoss(), ScaleConfig(), two), GatherLoss)
    with pytest.raises(ConfigError, match="CLIP only"):
        wrap_loss(SigLIPLoss(), dataclasses.replace(ring, tile_size=64), two)
    with pytest.raises(ConfigError, match="ring has a form for CLIP and SigLIP only, not SupConLoss"):
        wrap_loss(SupConLoss(), ring, two)
    with pytest.raises(ConfigError, match="needs scale.dist_loss=local"):
        wrap_loss(CLIPLoss(), ScaleConfig(dist_loss="global", tile_size=64), two)
    assert wrap_loss(CLIPLoss(), ring, DistContext()).__class__ is CLIPLoss  # one process: identity


# ------------------------------------------------------------------------------------------------
# training: two processes with the CLIP ring follow the gathered local form


def _train_worker(out_dir: str, dist_loss: str) -> list[float]:
    from contrastkit.train import read_metrics, train

    from ..train.test_guard_and_training import _vit_config

    cfg = _vit_config(out_dir, "multi")
    cfg = dataclasses.replace(
        cfg, scale=ScaleConfig(dist_loss=dist_loss, tile_size=5 if dist_loss == "ring" else None)
    )
    return [r["loss"] for r in read_metrics(train(cfg).run_dir)]


@pytest.mark.slow
def test_two_rank_training_with_the_clip_ring_matches_local(tmp_path):
    ring = spawn_gloo(_train_worker, 2, str(tmp_path / "ring"), "ring", timeout_s=300)
    local = spawn_gloo(_train_worker, 2, str(tmp_path / "local"), "local", timeout_s=300)
    assert ring[0] == ring[1] and len(ring[0]) == 4
    assert ring[0] == pytest.approx(local[0], rel=1e-6, abs=1e-6)
