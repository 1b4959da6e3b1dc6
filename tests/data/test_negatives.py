"""Hard-negative captions (``data.text_negatives``): the swap rules on hand cases, determinism,
the batch key ``text_neg`` from a generator or a column, and the trainer feeding them to ``clip_in``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from contrastkit.core.errors import ConfigError
from contrastkit.data import DataConfig, make_shapes, open_split, train_loader
from contrastkit.data.negatives import swap_negative, swap_negatives
from tests.data._write import exact, source_config, take, write_pngs, write_table


@pytest.mark.parametrize(
    "caption,negative",
    [
        # rule 1: two colours trade places (binding)
        ("a red circle to the left of a blue square", "a blue circle to the left of a red square"),
        # rule 2: one colour, two shapes: the shapes trade places (relation)
        ("a yellow diamond above a yellow circle", "a yellow circle above a yellow diamond"),
        # rule 1 before 2; article fixed after the swap ("a orange" → "an orange")
        ("a small red star below an orange ring", "a small orange star below a red ring"),
    ],
)
def test_swap_rules_on_hand_cases(caption, negative):
    assert swap_negative(caption, np.random.default_rng(0)) == negative


def test_single_colour_is_replaced_and_articles_follow():
    rng = np.random.default_rng(0)
    for _ in range(50):
        neg = swap_negative("an orange circle in the center", rng)
        words = neg.split()
        assert words[2] == "circle" and words[1] != "orange" and neg.endswith("in the center")
        assert words[0] == ("an" if words[1][0] in "aeiou" else "a")


def test_other_captions_swap_two_different_words_and_tiny_ones_have_none():
    rng = np.random.default_rng(3)
    neg = swap_negative("a dog chases the cat", rng)
    assert neg != "a dog chases the cat" and sorted(neg.split()) == sorted("a dog chases the cat".split())
    assert swap_negative("dog", rng) == "dog" and swap_negative("dog dog", rng) == "dog dog"
    negs, same = swap_negatives(["dog", "a red circle", "cat cat"], (0, 5, 0))
    assert same == 2 and negs[1] != "a red circle"


def test_negatives_depend_only_on_the_batch_seed_and_row():
    caps = ["a small red circle"] * 6
    a, _ = swap_negatives(caps, (0, 7, 32))
    b, _ = swap_negatives(caps, (0, 7, 32))
    c, _ = swap_negatives(caps, (0, 8, 32))
    assert a == b and a != c and len(set(a)) > 1  # rows differ, steps differ, same seed repeats


def test_batches_carry_tokenised_negatives_generated_or_from_a_column(tmp_path):
    cfg = dataclasses.replace(DataConfig.tiny(), text_negatives="swap")
    src = open_split(cfg, "train")
    raw = take(train_loader(src, cfg, list, 8, seed=0), 2)  # tokenize = list: keeps the strings
    for batch in raw:
        assert len(batch["text_neg"]) == 8
        assert all(n != t for n, t in zip(batch["text_neg"], batch["text"]))
    again = take(train_loader(src, cfg, list, 8, seed=0, start=1), 1)[0]
    assert again["text_neg"] == raw[1]["text_neg"]  # resume draws the same negatives
    # a column of the user's own negatives, listed in extras
    pairs = make_shapes("train", n=16)
    names = write_pngs(pairs, tmp_path / "png")
    rows = [[n, c[0], f"not {c[0]}"] for n, c in zip(names, pairs.captions)]
    table = write_table(tmp_path / "png" / "pairs.csv", ["image", "caption", "neg"], rows)
    params = {"path": str(table), "caption_columns": ["caption"], "text_columns": ["neg"]}
    col = source_config("csv", params, exact(32), extras=("neg",), text_negatives="neg")
    batch = take(train_loader(open_split(col, "train"), col, list, 8, seed=0), 1)[0]
    assert batch["text_neg"] == [f"not {t}" for t in batch["text"]] and "neg" not in batch


def test_the_trainer_feeds_negatives_to_clip_in_and_refuses_losses_without_them(tmp_path):
    from contrastkit.losses import LossConfig
    from contrastkit.train import RunConfig, read_metrics, train

    base = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    tr = dataclasses.replace(base.train, steps=2, log_every=1)
    neg_data = dataclasses.replace(base.data, text_negatives="swap")
    first = {}
    for name, data in (("plain", base.data), ("negatives", neg_data)):
        cfg = dataclasses.replace(base, name=name, loss=LossConfig("clip_in"), data=data, train=tr)
        first[name] = read_metrics(train(cfg).run_dir)[0]["loss"]
    # same initial weights and batch: the negative captions only add terms to each image's
    # log-sum-exp, so the first loss is strictly larger (by less than log 2: at most N more terms)
    assert first["plain"] < first["negatives"] < first["plain"] + np.log(2)
    with pytest.raises(ConfigError, match="does not use negative captions"):
        train(dataclasses.replace(base, name="clip", data=neg_data, train=tr))


def test_negatives_from_a_yaml_config_column_and_swap_reach_clip_in(tmp_path):
    """A tiny ``contrastkit train --config`` run on a csv source, with the negatives from the data
    (a text column) and from the swap generator: both reach the loss. Same initial weights and first
    batch in every run, so the first loss orders as plain < with negatives < plain + log 2 (at most
    N extra terms in each image's log-sum-exp), and the two kinds of negatives give different losses."""
    import yaml

    from contrastkit.cli import main
    from contrastkit.core import to_dict
    from tests.data._write import logged_losses, run_config

    pairs = make_shapes("train", n=24)
    names = write_pngs(pairs, tmp_path / "png")
    rows = [[n, c[0], f"a photo of nothing like {c[0]}"] for n, c in zip(names, pairs.captions)]
    table = write_table(tmp_path / "png" / "pairs.csv", ["image", "caption", "neg"], rows)
    params = {"path": str(table), "caption_columns": ["caption"], "text_columns": ["neg"]}
    first = {}
    for name, negatives in (("plain", None), ("column", "neg"), ("swap", "swap")):
        data = source_config("csv", params, exact(32), extras=("neg",), text_negatives=negatives)
        cfg = to_dict(run_config(tmp_path / "runs", name, data, steps=2, batch_size=8))
        cfg["loss"] = {"name": "clip_in", "params": {}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["train", "--config", str(path)]) == 0
        first[name] = logged_losses(tmp_path / "runs" / name)[1]
    for name in ("column", "swap"):
        assert first["plain"] < first[name] < first["plain"] + np.log(2), (name, first)
    assert abs(first["column"] - first["swap"]) > 1e-4
