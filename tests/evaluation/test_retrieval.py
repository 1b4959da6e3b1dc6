"""E-RETRIEVAL oracles: identity, a hand-computed toy, random chance, chunking invariance."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import InputError
from contrastkit.evaluation import retrieval_metrics


def test_texts_equal_to_their_images_give_perfect_recall():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(20, 8, generator=g), dim=-1)
    owner = np.repeat(np.arange(20), 2)
    m = retrieval_metrics(img, img[owner], owner)
    assert m["image_to_text_R@1"] == 1.0 and m["text_to_image_R@1"] == 1.0
    assert m["text_to_image_median_rank"] == 1.0


def test_hand_computed_toy():
    # 3 images (basis vectors), 2 captions each; similarities chosen by hand.
    img = torch.eye(3)
    txt = torch.tensor(
        [
            [1.0, 0.2, 0.0],  # t0 → image 0 (rank 0)
            [0.1, 0.9, 0.0],  # t1 → image 0, but image 1 scores higher (rank 1)
            [0.0, 0.3, 0.5],  # t2 → image 1, image 2 higher (rank 1)
            [
                0.0,
                0.0,
                1.0,
            ],  # t3 → image 1, ranks: image 2 first, then 0/1 tie at 0 → image 0 wins (lower index): rank 2
            [0.0, 0.0, 1.0],  # t4 → image 2 (rank 0)
            [0.6, 0.0, 0.1],  # t5 → image 2 (rank 1)
        ]
    )
    owner = np.array([0, 0, 1, 1, 2, 2])
    m = retrieval_metrics(img, txt, owner, ks=(1, 2))
    # text→image ranks: [0, 1, 1, 2, 0, 1]
    assert m["text_to_image_R@1"] == pytest.approx(2 / 6)
    assert m["text_to_image_R@2"] == pytest.approx(5 / 6)
    # image→text, cosines after normalising the texts (t0 .981/.196/0, t1 .110/.994/0,
    # t2 0/.514/.857, t3 = t4 = 0/0/1, t5 .986/0/.164):
    # image 0: t5 (.986, image 2's) beats its t0 (.981) → rank 1;
    # image 1: t1 (.994, image 0's) beats its t2 (.514) → rank 1;
    # image 2: t3 and t4 tie at 1.0, t3 (image 1's) has the lower index → own t4 has rank 1.
    assert m["image_to_text_R@1"] == 0.0
    assert m["image_to_text_R@2"] == 1.0
    assert m["image_to_text_median_rank"] == 2.0


def test_random_embeddings_give_chance_recall_and_chunking_changes_nothing():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(400, 16, generator=g), torch.randn(800, 16, generator=g)
    owner = np.repeat(np.arange(400), 2)
    dense = retrieval_metrics(img, txt, owner, ks=(1, 10, 40))
    assert dense["text_to_image_R@10"] == pytest.approx(10 / 400, abs=0.02)
    assert dense["text_to_image_R@40"] == pytest.approx(40 / 400, abs=0.03)
    chunked = retrieval_metrics(img, txt, owner, ks=(1, 10, 40), chunk=37)
    assert chunked == dense


def test_an_image_without_captions_is_a_miss():
    img, txt = torch.eye(3), torch.eye(3)[:2]
    m = retrieval_metrics(img, txt, np.array([0, 1]), ks=(1, 3))
    assert m["image_to_text_R@3"] == pytest.approx(2 / 3)


def test_errors():
    with pytest.raises(InputError, match="text_owner must have shape"):
        retrieval_metrics(torch.eye(3), torch.eye(3), np.array([0, 1]))
    with pytest.raises(InputError, match="outside the image set"):
        retrieval_metrics(torch.eye(3), torch.eye(3), np.array([0, 1, 5]))


def test_per_example_scores_average_to_the_metrics():
    from contrastkit.data import make_shapes
    from contrastkit.evaluation import Encoders, evaluate_examples

    g = torch.Generator().manual_seed(0)
    table: dict[str, torch.Tensor] = {}

    def texts(t):
        return torch.stack([table.setdefault(s, torch.randn(8, generator=g)) for s in t])

    pairs = make_shapes("test", 40)
    proj = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    enc = Encoders(lambda im: im.float().mean((2, 3)) @ proj, texts)
    metrics, examples = evaluate_examples(enc, pairs)
    for key, arr in examples.items():
        assert metrics[key] == pytest.approx(arr.mean()), key
    assert len(examples["retrieval/text_to_image_R@1"]) == 80
    assert len(examples["retrieval/image_to_text_R@5"]) == 40
