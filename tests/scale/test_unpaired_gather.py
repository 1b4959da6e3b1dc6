"""unpaired_labels + medclip across processes (gloo): each rank's per-sample label vectors are
gathered with the embeddings, so 2 ranks give the single-process loss on the global batch (value
and gradients, float64) and a 2-process training run follows the 1-process run step by step."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch
import torch.distributed as dist

from contrastkit import losses
from contrastkit.data import SAMPLERS, ClassTask, SamplerContext
from contrastkit.scale.distributed import rank, world_size
from contrastkit.scale.gather_all import GatherAllLoss
from contrastkit.scale.launch import spawn_gloo
from contrastkit.train import read_metrics, train

N, B, D_IN, DIM, STEPS = 40, 8, 6, 5, 3
TASKS = {
    "shape": ClassTask(("a", "b", "c"), ("{}",), np.arange(N) % 3),
    "color": ClassTask(("r", "g", "b", "y"), ("{}",), np.where(np.arange(N) % 10 == 9, -1, np.arange(N) % 4)),
}
CAPTIONS = tuple((f"caption {i}",) for i in range(N))


def _fields(shard: tuple[int, int], step: int) -> dict[str, torch.Tensor]:
    """This shard's rows of global batch ``step``: image items, text items and the label fields."""
    c = SamplerContext.single([1] * N, B, 7, shard=shard, tasks=TASKS, captions=(CAPTIONS,))
    s = SAMPLERS.build("unpaired_labels", context=c, tasks=("shape", "color"))
    keys = next(itertools.islice(iter(s), step, None))
    batch = s.transform({"text": [""] * len(keys)}, (7, keys.step, keys.offset))
    img, txt, _ = s.transform.rows(step, keys.offset, len(keys))
    return {
        "img": torch.from_numpy(img),
        "txt": torch.from_numpy(txt),
        "image_labels": batch["image_labels"].double(),
        "text_labels": batch["text_labels"].double(),
    }


def _run(shard: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The wrapped medclip loss over STEPS batches: summed values and gradients (towers, scale)."""
    g = torch.Generator().manual_seed(1)
    images, texts = (torch.randn(N, D_IN, generator=g, dtype=torch.float64) for _ in range(2))
    towers = [torch.randn(D_IN, DIM, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2)]
    loss = losses.build("medclip").double()
    wrapped = GatherAllLoss(loss)
    total = torch.zeros((), dtype=torch.float64)
    for step in range(STEPS):
        f = _fields(shard, step)
        x, y = images[f["img"]] @ towers[0], texts[f["txt"]] @ towers[1]
        value = wrapped(x, y, image_labels=f["image_labels"], text_labels=f["text_labels"])
        value.backward()
        total += value.detach()
    grads = {"image_tower": towers[0].grad, "text_tower": towers[1].grad, "log_scale": loss.log_scale.grad}
    return {"loss": total, **{k: v.detach().clone() for k, v in grads.items()}}


def _worker():
    d, r = world_size(), rank()
    res = _run((r, d))
    for v in res.values():
        dist.all_reduce(v)
        v /= d  # DDP's gradient average (the loss value is the same on every rank)
    return res


def _naive(shard_fields: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, s: float) -> float:
    """MedCLIP's loss written out: G = A Uᵀ, softmax targets, soft cross-entropy both ways."""
    a, u = shard_fields["image_labels"], shard_fields["text_labels"]
    n = len(x)
    xn, yn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
    total = 0.0
    for i in range(n):
        g_row = [float(a[i] @ u[j]) for j in range(n)]
        g_col = [float(a[j] @ u[i]) for j in range(n)]
        logit_row = [s * float(xn[i] @ yn[j]) for j in range(n)]
        logit_col = [s * float(xn[j] @ yn[i]) for j in range(n)]
        for g, lg in ((g_row, logit_row), (g_col, logit_col)):
            t = np.exp(g) / np.exp(g).sum()
            total += -0.5 * float((t * (np.array(lg) - np.log(np.exp(lg).sum()))).sum()) / n
    return total


@pytest.fixture(scope="module")
def spawned():
    return spawn_gloo(_worker, 2, timeout_s=180.0)


def test_two_ranks_give_the_single_process_loss_and_gradients(spawned):
    want = _run((0, 1))  # no process group here: the plain loss on the global batch
    for got in spawned:
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12, msg=k)


def test_the_global_batch_fields_are_the_ranks_rows_and_the_loss_is_medclips():
    whole = _fields((0, 1), 2)
    parts = [_fields((r, 2), 2) for r in range(2)]
    for k in whole:
        assert torch.equal(torch.cat([p[k] for p in parts]), whole[k])
    g = torch.Generator().manual_seed(3)
    x, y = (
        torch.randn(B, DIM, generator=g, dtype=torch.float64),
        torch.randn(B, DIM, generator=g, dtype=torch.float64),
    )
    loss = losses.build("medclip").double()
    got = loss(x, y, image_labels=whole["image_labels"], text_labels=whole["text_labels"]).detach()
    scale = float(loss.log_scale.detach().exp())  # 1/0.07 as the module stores it
    assert float(got) == pytest.approx(_naive(whole, x, y, scale), rel=1e-12)


def _config(out_dir, name: str):
    from contrastkit.data.config import SamplerConfig
    from contrastkit.losses import LossConfig

    from ..train.test_guard_and_training import _vit_config

    cfg = _vit_config(out_dir, name)
    sampler = SamplerConfig("unpaired_labels", {"tasks": ["shape", "color"]})
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, sampler=sampler, eval_splits=()),
        loss=LossConfig("medclip"),
        train=dataclasses.replace(cfg.train, steps=3, ckpt_every=3),
    )


def _train_worker(out_dir: str) -> list[float]:
    return [r["loss"] for r in read_metrics(train(_config(out_dir, "multi")).run_dir) if "loss" in r]


@pytest.mark.slow
def test_two_process_training_from_a_config_follows_one_process(tmp_path):
    single = [
        r["loss"] for r in read_metrics(train(_config(tmp_path / "one", "single")).run_dir) if "loss" in r
    ]
    multi = spawn_gloo(_train_worker, 2, str(tmp_path / "two"), timeout_s=300)
    assert len(single) == 3 and np.isfinite(single).all()
    assert multi[0] == pytest.approx(single, rel=1e-4)  # same global batch, same averaged gradients
