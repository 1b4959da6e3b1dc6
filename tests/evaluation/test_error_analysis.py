"""R-ERRORS: a planted zero-shot confusion gives the exact confusion matrix and top confusion,
planted image→text failures are listed with their ranks in failures.json, and a run compared with
itself (or with planted disagreements) gives the exact disagreement set."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.pairs import ClassTask, PairSet
from contrastkit.evaluation import EVAL_TASKS, Encoders, EvalContext
from contrastkit.evaluation.error_analysis import confusion_matrix, errors_task, top_confusions
from contrastkit.evaluation.report import evaluate_model
from contrastkit.evaluation.tasks import zeroshot_task

NAMES = ("apple", "banana", "cherry")
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, -1, 0, 1])  # 4 apples, 3 bananas, 4 cherries, 1 unlabelled


def images_of(n: int) -> torch.Tensor:
    """uint8 images whose first pixel is their index (how the fake encoders recognise them)."""
    img = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    img[:, :, 0, 0] = torch.arange(n, dtype=torch.uint8)[:, None]
    img[:, 1] = 200  # green: something to see in a thumbnail
    return img


def planted(as_class: dict[int, int]) -> Encoders:
    """Image i -> the one-hot of its class (``as_class`` maps a true class to the one it is drawn
    as) plus a tiny index-dependent term; a text -> the one-hot of the fruit it names."""

    def images(x):
        idx = x[:, 0, 0, 0].long()
        out = torch.zeros(len(x), 4)
        for r, i in enumerate(idx.tolist()):
            y = int(LABELS[i]) if i < len(LABELS) else -1
            out[r, as_class.get(y, y) if y >= 0 else 3] = 1.0
            out[r, 3] += 0.01 * (i + 1)
        return out

    def texts(t):
        return torch.tensor([[float(name in s) for name in NAMES] + [0.0] for s in t])

    return Encoders(images, texts)


def fruit_pairs() -> PairSet:
    caps = tuple((f"a photo {i}",) for i in range(len(LABELS)))
    return PairSet(images_of(len(LABELS)), caps, {"fruit": ClassTask(NAMES, ("a {}",), LABELS)}, name="toy")


def test_planted_confusion_gives_the_exact_matrix_and_top_confusion(tmp_path):
    assert EVAL_TASKS.get("errors") is errors_task
    enc = planted({0: 1})  # every apple image lies on the banana prompt
    ctx = EvalContext(enc, fruit_pairs(), None, {"plot_dir": tmp_path})
    out, ex = errors_task(ctx)
    record = json.loads((tmp_path / "errors" / "confusion_fruit.json").read_text())
    assert record["counts"] == [[0, 4, 0], [0, 3, 0], [0, 0, 4]]
    assert record["top"] == [{"true": "apple", "pred": "banana", "count": 4}]
    assert out["errors/fruit/top_confusion_rate"] == 4 / 11 and out["errors/fruit/error_rate"] == 4 / 11
    assert out["errors/fruit/n"] == 11.0
    assert ex["errors/fruit/error_rate"].tolist() == [1.0] * 3 + [0.0] * 6 + [1.0, 0.0]
    zs, _ = zeroshot_task(EvalContext(enc, fruit_pairs()))
    assert out["errors/fruit/error_rate"] == pytest.approx(1 - zs["zeroshot/fruit/top1"])
    failures = json.loads((tmp_path / "errors" / "failures.json").read_text())
    assert failures["confusions"] == {"fruit": [{"true": "apple", "pred": "banana", "count": 4}]}
    assert (tmp_path / "confusion_fruit.png").stat().st_size > 1000


def test_confusion_helpers_order_and_check():
    cm = confusion_matrix(np.array([1, 1, 0, 2, 2, 0, 1]), np.array([0, 0, 1, 1, 0, -1, 2]), 3)
    assert cm.tolist() == [[0, 2, 1], [1, 0, 1], [0, 1, 0]]
    # by count, then true index, then predicted index
    assert top_confusions(cm, ["a", "b", "c"], 3) == [
        {"true": "a", "pred": "b", "count": 2},
        {"true": "a", "pred": "c", "count": 1},
        {"true": "b", "pred": "a", "count": 1},
    ]
    assert top_confusions(np.eye(3, dtype=np.int64), ["a", "b", "c"]) == []
    with pytest.raises(InputError, match="outside the 3 classes"):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def retrieval_toy() -> tuple[PairSet, Encoders]:
    """8 images e_i, each with two captions embedded as e_i (a tie: the lower index wins). Planted:
    image 3 = norm(e_3 + 1.5 e_7) ranks image 7's two captions first (its own best: 1-based rank 3);
    image 5 = norm(e_5 + 3 e_1 + 2 e_2) ranks 4 captions first (rank 5)."""
    n = 8
    caps = tuple((f"img{i} first", f"img{i} second") for i in range(n))
    emb = torch.eye(n)
    emb[3, 7] = 1.5
    emb[5, 1], emb[5, 2] = 3.0, 2.0

    def images(x):
        return emb[x[:, 0, 0, 0].long()]

    def texts(t):
        return torch.stack([torch.eye(n)[int(s[3])] for s in t])

    return PairSet(images_of(n), caps, name="toy"), Encoders(images, texts)


def test_failures_json_lists_exactly_the_planted_failures(tmp_path):
    pairs, enc = retrieval_toy()
    (tmp_path / "errors").mkdir()
    (tmp_path / "errors" / "image_000099.png").write_bytes(b"stale")
    opts = {"plot_dir": tmp_path, "errors": {"thumbnail": 64}}
    out, ex = errors_task(EvalContext(enc, pairs, None, opts))
    assert out["errors/retrieval/failure_rate"] == 2 / 8 and out["errors/retrieval/n_failures"] == 2.0
    assert ex["errors/retrieval/failure_rate"].tolist() == [0, 0, 0, 1, 0, 1, 0, 0]
    failures = json.loads((tmp_path / "errors" / "failures.json").read_text())
    assert failures == {
        "retrieval": [
            {
                "image": "image_000005.png",
                "caption": "img5 first",
                "rank": 5,
                "top5": ["img1 first", "img1 second", "img2 first", "img2 second", "img5 first"],
            },
            {
                "image": "image_000003.png",
                "caption": "img3 first",
                "rank": 3,
                "top5": ["img7 first", "img7 second", "img3 first", "img3 second", "img0 first"],
            },
        ],
        "confusions": {},
    }
    pngs = sorted(p.name for p in (tmp_path / "errors").glob("image_*.png"))
    assert pngs == ["image_000003.png", "image_000005.png"]  # the stale thumbnail is gone
    with Image.open(tmp_path / "errors" / "image_000005.png") as im:
        assert im.size == (64, 64) and im.getpixel((40, 40)) == (0, 200, 0)
    few, _ = errors_task(EvalContext(enc, pairs, None, {"errors": {"n_failures": 1}}))
    assert few["errors/retrieval/n_failures"] == 2.0  # the count is not capped by the listing


def test_disagreements_with_itself_and_with_a_planted_run(tmp_path):
    enc = planted({})
    same = {"plot_dir": tmp_path, "errors": {"compare": enc}}
    out, ex = errors_task(EvalContext(enc, fruit_pairs(), None, same))
    assert out["errors/compare/fruit/disagreement"] == 0.0 and out["errors/compare/disagreement"] == 0.0
    assert json.loads((tmp_path / "errors" / "compare.json").read_text())["pairs"] == {"fruit": []}
    other = {"plot_dir": tmp_path, "errors": {"compare": planted({2: 0})}}  # cherries drawn as apples
    out, ex = errors_task(EvalContext(enc, fruit_pairs(), None, other))
    assert out["errors/compare/fruit/disagreement"] == 4 / 11
    assert ex["errors/compare/fruit/disagreement"].tolist() == [0.0] * 5 + [1.0] * 4 + [0.0] * 2
    pairs = json.loads((tmp_path / "errors" / "compare.json").read_text())["pairs"]["fruit"]
    assert [p["index"] for p in pairs] == [5, 6, 7, 8]  # |margin gap| = 2 cos, falling with the index term
    s = F.normalize(torch.tensor([1.0, 0, 0, 0.06]), dim=0)  # image 5 under the other run
    assert pairs[0] == {
        "index": 5,
        "true": "cherry",
        "pred": "cherry",
        "pred_other": "apple",
        "margin": pytest.approx(float(F.normalize(torch.tensor([0, 0, 1.0, 0.06]), dim=0)[2])),
        "margin_other": pytest.approx(-float(s[0])),
    }
    with pytest.raises(InputError, match="not a contrastkit run folder"):
        errors_task(EvalContext(enc, fruit_pairs(), None, {"errors": {"compare": str(tmp_path)}}))


def test_options_are_checked():
    enc = planted({})
    for bad, match in [
        ({"n_failures": 0}, "integers >= 1"),
        ({"tasks": "colour"}, r"errors.tasks names \['colour'\]"),
        ({"nope": 1}, "unknown errors option"),
    ]:
        with pytest.raises(ConfigError, match=match):
            errors_task(EvalContext(enc, fruit_pairs(), None, {"errors": bad}))


def test_a_run_folder_compared_with_itself(tmp_path):
    from contrastkit.train import RunConfig, train

    cfg = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2, ckpt_every=2))
    run = train(cfg).run_dir
    report = evaluate_model(
        run,
        out_dir=tmp_path / "eval",
        splits=["test"],
        tasks=["errors"],
        options={"errors": {"compare": str(run)}},
    )
    m = report["metrics"]["test"]
    assert m["errors/compare/disagreement"] == 0.0
    assert all(isinstance(v, float) for v in m.values())
    assert "Error analysis: zero-shot confusions" in report["protocol"]["metric_definitions"]["errors"]
    folder = tmp_path / "eval" / "plots" / "test" / "errors"
    failures = json.loads((folder / "failures.json").read_text())
    assert set(failures["confusions"]) == {"shape", "color", "shape+color"}
    assert len(failures["retrieval"]) == min(20, int(m["errors/retrieval/n_failures"]))
    assert all((folder / f["image"]).is_file() for f in failures["retrieval"])
    for task in ("shape", "color", "shape+color"):
        assert (folder.parent / f"confusion_{task}.png").is_file()
