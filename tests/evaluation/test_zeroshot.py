"""E-ZEROSHOT oracles."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

from contrastkit.core.errors import InputError
from contrastkit.evaluation import zero_shot_classifier, zero_shot_metrics


def table_encoder(table):
    return lambda texts: torch.stack([table[t] for t in texts])


def test_one_template_gives_the_normalised_prompt_embedding():
    table = {"a cat": torch.tensor([3.0, 4.0]), "a dog": torch.tensor([0.0, -2.0])}
    w = zero_shot_classifier(table_encoder(table), [["a cat"], ["a dog"]])
    torch.testing.assert_close(w, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))


def test_normalise_then_average_not_average_then_normalise():
    table = {"p1": torch.tensor([10.0, 0.0]), "p2": torch.tensor([0.0, 1.0])}
    w = zero_shot_classifier(table_encoder(table), [["p1", "p2"]])
    torch.testing.assert_close(w[0], F.normalize(torch.tensor([1.0, 1.0]), dim=0))
    # average-then-normalise would be dominated by the long vector:
    assert not torch.allclose(w[0], F.normalize(torch.tensor([10.0, 1.0]), dim=0))
    w_rev = zero_shot_classifier(table_encoder(table), [["p2", "p1"]])
    torch.testing.assert_close(w, w_rev)  # template order does not matter


def test_perfect_encoders_give_top1_one_and_balanced_accuracy_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    classes = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    labels = np.array([0, 1, 2, 3, 4, 5, 0, 0, 1])
    m = zero_shot_metrics(classes[labels], classes, labels)
    assert m["top1"] == 1.0 and m["top5"] == 1.0 and m["balanced_accuracy"] == 1.0
    noisy = classes[labels] + 0.9 * torch.randn(len(labels), 16, generator=g)
    m = zero_shot_metrics(noisy, classes, labels)
    pred = (F.normalize(noisy, dim=-1) @ classes.T).argmax(1).numpy()
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert m["top1"] == pytest.approx(float((pred == labels).mean()))


def test_unlabelled_images_are_ignored_and_top5_needs_five_classes():
    classes = torch.eye(3)
    m = zero_shot_metrics(torch.eye(3)[[0, 1, 2, 0]], classes, np.array([0, 1, -1, 2]))
    assert m["n"] == 3 and m["top1"] == pytest.approx(2 / 3) and np.isnan(m["top5"])


def test_errors():
    with pytest.raises(InputError, match="class 1 has no prompts"):
        zero_shot_classifier(table_encoder({"a": torch.ones(2)}), [["a"], []])
    with pytest.raises(InputError, match="no image has a label"):
        zero_shot_metrics(torch.eye(2), torch.eye(2), np.array([-1, -1]))
    with pytest.raises(InputError, match="labels must have shape"):
        zero_shot_metrics(torch.eye(2), torch.eye(2), np.array([0]))
