"""`contrastkit demo pretrained`, small: HF CLIP folder → Shapes → export → fine-tune on a CSV →
WiSE-FT, whose α = 0 row is the exported (transformers) model's own zero-shot accuracy."""

from __future__ import annotations

import pytest

from contrastkit.data import build
from contrastkit.demo.pretrained import pretrained_demo
from contrastkit.evaluation.external import hf_clip_encoders
from contrastkit.evaluation.zeroshot import zero_shot_classifier, zero_shot_metrics


def test_pretrained_demo_round_trip(tmp_path):
    rows = pretrained_demo(
        str(tmp_path), steps=(30, 10), n_fashion=(400, 100), threads=1, progress=False, n_eval=150
    )
    assert [r["alpha"] for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    exported = hf_clip_encoders(tmp_path / "pretrained-demo" / "clip-shapes-hf")
    shapes = build("shapes", "test", image_size=32).subset(range(150))
    task = shapes.tasks["shape+color"]
    classifier = zero_shot_classifier(exported.texts, task.prompts())
    direct = zero_shot_metrics(exported.images(shapes.images), classifier, task.labels)["top1"]
    assert rows[0]["reference:shapes/test/shape+color"] == pytest.approx(direct, abs=1e-9)
    assert all(0.0 <= v <= 1.0 for r in rows for v in r.values())
