"""S-GATHER and S-SIGLIP-RING against the plain single-process losses (float64, gloo on CPU).

Oracle: a toy two-tower "model" (one linear layer per modality, replicated on every rank like a
DDP tower) embeds fixed global inputs; rank r takes rows [r·b, (r+1)·b). After each rank's
backward, the gradients of the replicated parameters (towers, log-scale, bias) are all-reduced
and divided by D (= DDP's average) and compared with one process running the plain loss on the
whole batch. One spawned group per world size runs every combination (spawning costs seconds);
world sizes 2 and 3 run by default (3 covers the ring's 'bidir' round), 4 is marked slow.
"""

import math

import pytest
import torch
import torch.distributed as dist

from contrastkit.core.errors import ConfigError, ContrastkitError, InputError
from contrastkit.losses import CLIPLoss, PairLoss, SigLIPLoss, clip_loss, siglip_loss
from contrastkit.scale.distributed import GatherLoss, all_gather_with_grad, is_distributed, rank, world_size
from contrastkit.scale.launch import spawn_gloo
from contrastkit.scale.ring_siglip import (  # _RingBidir: probed directly, see _bidir_probe
    SigLIPRingLoss,
    _RingBidir,
    siglip_ring_loss,
)

B_LOCAL, D_IN, DIM = 4, 6, 5  # per-rank pairs, tower input size, embedding size
RTOL = 1e-10

CLIP_CASES = {  # name → GatherLoss options
    "clip/local": {"local_loss": True, "gather_with_grad": True},
    "clip/global": {"local_loss": False, "gather_with_grad": True},
    "clip/global-nograd": {"local_loss": False, "gather_with_grad": False},
    "clip/local-tiled": {"local_loss": True, "gather_with_grad": True, "tile_size": 3},
}
SIGLIP_CASES = {
    "siglip/local": ("gather", {"local_loss": True, "gather_with_grad": True}),
    "siglip/global": ("gather", {"local_loss": False, "gather_with_grad": True}),
    "siglip/global-nograd": ("gather", {"local_loss": False, "gather_with_grad": False}),
    "siglip/ring-shift": ("ring", {"variant": "shift"}),
    "siglip/ring-bidir": ("ring", {"variant": "bidir"}),
    "siglip/local-tiled": ("gather", {"local_loss": True, "gather_with_grad": True, "tile_size": 3}),
}


# ------------------------------------------------------------------------------------------------
# the toy model, identical in every process


def _inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images, texts = torch.randn(2, n, D_IN, generator=g, dtype=torch.float64)
    return images, texts


def _towers() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    wx = torch.randn(D_IN, DIM, generator=g, dtype=torch.float64).requires_grad_()
    wy = torch.randn(D_IN, DIM, generator=g, dtype=torch.float64).requires_grad_()
    return wx, wy


def _loss_module(kind: str) -> PairLoss:
    # SigLIP with a milder bias than −10 so that negatives carry visible gradient
    module = CLIPLoss() if kind == "clip" else SigLIPLoss(init_scale=5.0, init_bias=-2.0)
    return module.double()


def _grads(wx: torch.Tensor, wy: torch.Tensor, module: PairLoss) -> dict[str, torch.Tensor]:
    out = {"wx": wx.grad, "wy": wy.grad, "log_scale": module.log_scale.grad}
    if getattr(module, "bias", None) is not None:
        out["bias"] = module.bias.grad
    return {k: v.detach().clone() for k, v in out.items()}


def _oracle(kind: str, n: int) -> dict[str, torch.Tensor]:
    """Plain single-process loss on the whole batch: value and gradients."""
    a, b = _inputs(n)
    wx, wy = _towers()
    module = _loss_module(kind)
    loss = module(a @ wx, b @ wy)
    loss.backward()
    return {"loss": loss.detach(), **_grads(wx, wy, module)}


# ------------------------------------------------------------------------------------------------
# what each rank runs


def _ddp_case(kind: str, wrap) -> dict[str, torch.Tensor]:
    """One rank's forward/backward, then DDP's average of the replicated parameters' grads."""
    d, r = world_size(), rank()
    a, b = _inputs(B_LOCAL * d)
    rows = slice(r * B_LOCAL, (r + 1) * B_LOCAL)
    wx, wy = _towers()
    module = _loss_module(kind)
    loss = wrap(module)(a[rows] @ wx, b[rows] @ wy)
    loss.backward()
    out = {"loss": loss.detach().clone(), **_grads(wx, wy, module)}
    for value in out.values():
        dist.all_reduce(value)
        value /= d
    return out


def _gather_probe() -> dict[str, torch.Tensor]:
    """all_gather_with_grad on rank-specific data with a rank-specific linear loss."""
    r, d = rank(), world_size()
    x = (torch.arange(3 * 2, dtype=torch.float64).reshape(3, 2) + 100 * r).requires_grad_()
    gathered = all_gather_with_grad(x)
    weights = torch.randn(3 * d, 2, generator=torch.Generator().manual_seed(10 + r), dtype=torch.float64)
    (gathered * weights).sum().backward()
    return {"gathered": gathered.detach(), "grad": x.grad}


def _bidir_probe() -> dict[str, torch.Tensor]:
    """The two-neighbour exchange with *distinct* blocks and rank-specific weights: inside the
    ring its inputs are both the local texts at D ≤ 4, which would hide swapped gradients."""
    r, d = rank(), world_size()
    to_left = torch.full((2, 2), 10.0 * r + 1, dtype=torch.float64, requires_grad=True)
    to_right = torch.full((2, 2), 10.0 * r + 2, dtype=torch.float64, requires_grad=True)
    from_left, from_right = _RingBidir.apply(to_left, to_right, (r - 1) % d, (r + 1) % d, None)
    w_left, w_right = _probe_weights(r)
    ((from_left * w_left).sum() + (from_right * w_right).sum()).backward()
    return {
        "from_left": from_left.detach(),
        "from_right": from_right.detach(),
        "g_left": to_left.grad,
        "g_right": to_right.grad,
    }


def _probe_weights(r: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(20 + r)
    w_left, w_right = torch.randn(2, 2, 2, generator=g, dtype=torch.float64)
    return w_left, w_right


def _error_probes() -> dict[str, str]:
    """Inputs that must fail on every rank (never hang in a collective)."""
    r = rank()
    out = {}
    uneven = torch.randn(2 + r, DIM, dtype=torch.float64)  # rank r has 2 + r pairs
    probes = {
        "gather": lambda: all_gather_with_grad(uneven),
        "clip": lambda: GatherLoss(CLIPLoss())(uneven, uneven),
        "ring": lambda: siglip_ring_loss(uneven, uneven, 10.0, -10.0),
    }
    nan = torch.ones(3, DIM, dtype=torch.float64)
    if r == 1:
        nan[0, 0] = float("nan")  # only rank 1's input is malformed
    probes["nan-on-rank-1"] = lambda: GatherLoss(SigLIPLoss())(nan, nan)
    for name, call in probes.items():
        try:
            call()
            out[name] = "no error"
        except InputError as err:
            out[name] = str(err)
    return out


def _worker() -> dict:
    results: dict = {"gather-probe": _gather_probe()}
    if world_size() >= 3:  # left ≠ right
        results["bidir-probe"] = _bidir_probe()
    for name, opts in CLIP_CASES.items():
        results[name] = _ddp_case("clip", lambda m, o=opts: GatherLoss(m, **o))
    for name, (how, opts) in SIGLIP_CASES.items():
        cls = GatherLoss if how == "gather" else SigLIPRingLoss
        results[name] = _ddp_case("siglip", lambda m, c=cls, o=opts: c(m, **o))
    results["errors"] = _error_probes()
    return results


def _raise_on_rank_1() -> int:
    if rank() == 1:
        raise RuntimeError("boom on rank 1")
    dist.barrier()  # rank 0 blocks here until spawn_gloo terminates it
    return 0


# ------------------------------------------------------------------------------------------------
# multi-process checks


@pytest.fixture(scope="module", params=[2, 3, pytest.param(4, marks=pytest.mark.slow)])
def spawned(request):
    n = request.param
    return n, spawn_gloo(_worker, n, timeout_s=180.0)


def _assert_close(got: dict, want: dict, factor: dict[str, float] | None = None) -> None:
    factor = factor or {}
    assert got.keys() == want.keys()
    for key in want:
        expected = want[key] * factor.get(key, 1.0)
        torch.testing.assert_close(
            got[key], expected, rtol=RTOL, atol=1e-14, msg=lambda m, k=key: f"{k}: {m}"
        )


def test_all_gather_with_grad_forward_and_reduce_scatter_backward(spawned):
    n, results = spawned
    xs = [torch.arange(6, dtype=torch.float64).reshape(3, 2) + 100 * r for r in range(n)]
    weights = [
        torch.randn(3 * n, 2, generator=torch.Generator().manual_seed(10 + r), dtype=torch.float64)
        for r in range(n)
    ]
    for r, res in enumerate(results):
        probe = res["gather-probe"]
        assert torch.equal(probe["gathered"], torch.cat(xs))
        expected = sum(w[3 * r : 3 * (r + 1)] for w in weights)  # Σ over ranks of this rank's slot
        torch.testing.assert_close(probe["grad"], expected, rtol=RTOL, atol=0)


def test_bidir_exchange_routes_values_and_gradients(spawned):
    n, results = spawned
    if n < 3:
        pytest.skip("the two-neighbour exchange needs 3 ranks")
    for r, res in enumerate(results):
        probe, left, right = res["bidir-probe"], (r - 1) % n, (r + 1) % n
        assert torch.equal(probe["from_left"], torch.full((2, 2), 10.0 * left + 2, dtype=torch.float64))
        assert torch.equal(probe["from_right"], torch.full((2, 2), 10.0 * right + 1, dtype=torch.float64))
        # what went left arrived there as "from_right": its gradient is the left rank's w_right
        assert torch.equal(probe["g_left"], _probe_weights(left)[1])
        assert torch.equal(probe["g_right"], _probe_weights(right)[0])


@pytest.mark.parametrize("case", ["clip/local", "clip/global", "clip/local-tiled"])
def test_clip_gather_exact(spawned, case):
    n, results = spawned
    _assert_close(results[0][case], _oracle("clip", B_LOCAL * n))


def test_clip_nograd_gather_gives_one_over_d_feature_gradients(spawned):
    n, results = spawned
    want = _oracle("clip", B_LOCAL * n)
    # the documented caveat, asserted: towers get 1/D of the true gradient, the scale the exact one
    _assert_close(results[0]["clip/global-nograd"], want, factor={"wx": 1 / n, "wy": 1 / n})


@pytest.mark.parametrize(
    "case", ["siglip/local", "siglip/global", "siglip/ring-shift", "siglip/ring-bidir", "siglip/local-tiled"]
)
def test_siglip_gather_and_ring_exact(spawned, case):
    n, results = spawned
    _assert_close(results[0][case], _oracle("siglip", B_LOCAL * n))


def test_siglip_nograd_gather_gives_one_over_d_feature_gradients(spawned):
    n, results = spawned
    want = _oracle("siglip", B_LOCAL * n)
    _assert_close(results[0]["siglip/global-nograd"], want, factor={"wx": 1 / n, "wy": 1 / n})


def test_averaged_results_identical_on_every_rank(spawned):
    _, results = spawned
    for res in results[1:]:
        for case in [*CLIP_CASES, *SIGLIP_CASES]:
            for key, value in res[case].items():
                assert torch.equal(value, results[0][case][key]), (case, key)


def test_bad_inputs_raise_on_every_rank(spawned):
    n, results = spawned
    shapes = ", ".join(f"rank {r}: [{2 + r}, {DIM}]" for r in range(n))
    for r, res in enumerate(results):
        errors = res["errors"]
        for name in ("gather", "clip", "ring"):
            assert shapes in errors[name], errors[name]
            assert "same shape on every rank" in errors[name]
        nan_msg = errors["nan-on-rank-1"]
        assert ("non-finite" in nan_msg) if r == 1 else ("rank(s) [1] rejected" in nan_msg), nan_msg


def test_spawn_gloo_reports_a_failing_rank_without_hanging():
    with pytest.raises(ContrastkitError, match=r"(?s)rank 1:.*boom on rank 1"):
        spawn_gloo(_raise_on_rank_1, 2, timeout_s=60.0)


# ------------------------------------------------------------------------------------------------
# single process: configuration errors and fall-through to the plain loss


def test_local_loss_without_grad_gather_is_refused():
    with pytest.raises(ConfigError, match="incomplete gradient"):
        GatherLoss(CLIPLoss(), gather_with_grad=False, local_loss=True)
    with pytest.raises(ConfigError, match="incomplete gradient"):
        GatherLoss(SigLIPLoss(), gather_with_grad=False)


def test_unsupported_losses_are_refused():
    class Custom(PairLoss):
        def pure(self):
            return (lambda x, y: (x * y).sum()), {}

    with pytest.raises(ConfigError, match="clip_loss"):
        GatherLoss(Custom())
    with pytest.raises(ConfigError, match="pure"):
        GatherLoss(PairLoss())
    with pytest.raises(ConfigError, match="siglip_loss"):
        SigLIPRingLoss(CLIPLoss())
    with pytest.raises(ConfigError, match="variant"):
        SigLIPRingLoss(SigLIPLoss(), variant="ring")


def _plain_vs_wrapped(kind: str, wrap) -> None:
    a, b = _inputs(7)
    results = []
    for wrapper in (lambda m: m, wrap):
        wx, wy = _towers()
        module = _loss_module(kind)
        loss = wrapper(module)(a @ wx, b @ wy)
        loss.backward()
        results.append({"loss": loss.detach(), **_grads(wx, wy, module)})
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


WRAPPERS = {
    "clip-local": ("clip", lambda m: GatherLoss(m)),
    "clip-global-nograd": ("clip", lambda m: GatherLoss(m, gather_with_grad=False, local_loss=False)),
    "siglip-local": ("siglip", lambda m: GatherLoss(m)),
    "siglip-ring": ("siglip", lambda m: SigLIPRingLoss(m, variant="bidir")),
}


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_without_process_group_wrappers_are_the_plain_loss(name):
    assert not is_distributed() and rank() == 0 and world_size() == 1
    _plain_vs_wrapped(*WRAPPERS[name])
    x = torch.randn(3, DIM, dtype=torch.float64)
    assert all_gather_with_grad(x) is x
    assert torch.equal(siglip_ring_loss(x, x.flip(0), 10.0, -10.0), siglip_loss(x, x.flip(0), 10.0, -10.0))


@pytest.fixture
def world_of_one(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_world_size_one_wrappers_are_the_plain_loss(world_of_one, name):
    assert dist.is_initialized() and not is_distributed() and world_size() == 1
    _plain_vs_wrapped(*WRAPPERS[name])


def test_wrappers_expose_parameters_and_delegate_step_and_logs():
    for inner, wrapper in ((CLIPLoss(), GatherLoss), (SigLIPLoss(max_scale=20.0), SigLIPRingLoss)):
        wrapped = wrapper(inner)
        assert list(wrapped.parameters()) == list(inner.parameters())  # the optimizer sees them
        assert wrapped.log_values() == inner.log_values()
        with torch.no_grad():
            inner.log_scale.fill_(10.0)
        wrapped.after_optimizer_step()  # the wrapped loss's clamp runs
        assert float(inner.log_scale.detach()) == pytest.approx(
            math.log(100.0 if wrapper is GatherLoss else 20.0)
        )
    x = torch.randn(4, DIM, dtype=torch.float64)
    torch.testing.assert_close(GatherLoss(CLIPLoss().double())(x, x), clip_loss(x, x, 1 / 0.07))
