"""The ``cross_modal`` task: retrieval between every pair of modalities, zero-shot of each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.data.pairs import ClassTask, PairSet
from contrastkit.evaluation import Encoders, evaluate_examples
from contrastkit.evaluation.cross_modal import group_ranks


def _naive_rank(scores: np.ndarray, groups: np.ndarray, i: int) -> int:
    pos = [j for j in range(len(groups)) if groups[j] == groups[i]]
    jp = max(pos, key=lambda j: (scores[i, j], -j))  # best positive, the lower index on a tie
    return sum(
        1
        for j in range(len(groups))
        if groups[j] != groups[i]
        and (scores[i, j] > scores[i, jp] or (scores[i, j] == scores[i, jp] and j < jp))
    )


def test_group_ranks_equal_a_naive_loop_with_ties():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.integers(0, 4, (30, 30)).astype(np.float64))  # many ties
    groups = rng.integers(0, 7, 30)
    got = group_ranks(scores, groups)
    assert got.tolist() == [_naive_rank(scores.numpy(), groups, i) for i in range(30)]


def _encoders(table: dict[str, torch.Tensor]) -> Encoders:
    """Exact embeddings: text by caption word, the signal by its first value."""
    words = {
        w: F.normalize(torch.randn(8, generator=torch.Generator().manual_seed(k)), dim=0)
        for k, w in enumerate("abcd")
    }

    def texts(t: list[str]) -> torch.Tensor:
        return torch.stack([words[s.split()[-1]] for s in t])

    def modality(name: str, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([words["abcd"[int(v)]] for v in x.reshape(len(x), -1)[:, 0]])

    return Encoders(lambda x: torch.zeros(len(x), 8), texts, modality=modality, encodes=("audio",))


def test_cross_modal_metrics_on_a_known_case():
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    code = torch.tensor([0, 1, 2, 3, 0, 1, 2, 0], dtype=torch.float32)  # sample 7 is wrong (says a)
    ps = PairSet(
        images=None,
        captions=tuple((f"a photo of {'abcd'[c]}",) for c in labels),
        tasks={"class": ClassTask(tuple("abcd"), ("a photo of {}",), labels)},
        signals={"audio": code[:, None, None]},
        present={"audio": torch.tensor([1, 1, 1, 1, 1, 1, 0, 1], dtype=torch.bool)},
    )
    out, ex = evaluate_examples(_encoders({}), ps, ["cross_modal"])
    # 7 samples have audio; 6 of them match their caption exactly, sample 7 matches class a
    assert out["cross_modal/audio_to_text_R@1"] == pytest.approx(6 / 7)
    assert out["cross_modal/zeroshot/audio/class/top1"] == pytest.approx(6 / 7)
    assert len(ex["cross_modal/audio_to_text_R@1"]) == 7
    # text "d" of sample 7 finds sample 3's audio "d": a positive (same caption), so every text hits
    assert out["cross_modal/text_to_audio_R@1"] == 1.0
    assert "cross_modal/zeroshot/text/class/top1" not in out


def test_missing_modality_task_reports_accuracy_by_removed_modalities():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    noise = rng.integers(0, 4, 400)  # the audio says a random class: only text carries the label
    ps = PairSet(
        images=None,
        captions=tuple((f"a photo of {'abcd'[c]}",) for c in labels),
        tasks={"class": ClassTask(tuple("abcd"), ("a photo of {}",), labels)},
        signals={"audio": torch.tensor(noise, dtype=torch.float32)[:, None, None]},
    )
    opts = {"missing_modality": {"heads": ["mean", "mmp"], "seeds": [0], "epochs": 60}}
    out, ex = evaluate_examples(_encoders({}), ps, ["missing_modality"], options=opts)
    mmp = {k.rsplit("/", 1)[1]: v for k, v in out.items() if "/mmp/" in k}
    assert mmp["without_none"] == 1.0 and mmp["without_audio"] == 1.0
    assert mmp["without_text"] < 0.4  # chance is 0.25: the audio carries nothing
    assert mmp["missing_1"] == pytest.approx((mmp["without_text"] + 1.0) / 2)
    # averaging in a noise modality hurts the mean baseline, not the learned fusion
    assert out["missing_modality/class/mean/without_none"] < 0.8
    assert ex == {}
