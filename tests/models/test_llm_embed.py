"""M-LLM-EMBED: decoder-LM text tower — byte-exact templates, VLM2Vec last-token pooling (left and
right padding give the same embedding), truncation that keeps the template suffix, local folders,
training through the trainer and safetensors export."""

import dataclasses

import pytest
import torch

from contrastkit.core.errors import ConfigError, InputError
from contrastkit.data.shapes import make_shapes
from contrastkit.models import ModelConfig, TowerConfig, build_model, train_word_tokenizer
from contrastkit.models.llm_embed import Template, decoder_llm_tower, last_token_pool
from contrastkit.models.towers import TowerContext

CAPTIONS = [
    "a small purple circle",
    "an orange star",
    "a yellow diamond to the left of a small yellow circle",
]

# the spec strings, written out independently of the module's constants
E5V_WRAP = (
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant"
    "<|end_header_id|>\n\n \n"
)
E5V_TEXT = "<sent>\nSummary above sentence in one word: "
E5V_IMAGE = "<image>\nSummary above image in one word: "
UNIME_IMAGE = "<|user|>\n<|image_1|>\nSummary above image in one word: <|end|>\n<|assistant|>\n"
UNIME_TEXT = "<|user|>\n{text}\nSummary above sentence in one word: <|end|>\n<|assistant|>\n"


def test_templates_render_byte_exact():
    text = "a red {circle}\nwith <sent> in it"
    assert Template("e5v").render(text) == E5V_WRAP.format(E5V_TEXT.replace("<sent>", text, 1))
    assert Template("e5v").render_image() == E5V_WRAP.format(E5V_IMAGE)
    assert Template("unime").render(text) == UNIME_TEXT.replace("{text}", text)
    assert Template("unime").render_image() == UNIME_IMAGE
    sys_p, task = "You are an embedder. ", "Represent this caption for retrieving images: "
    assert Template("none", sys_p, task).render("a cat") == sys_p + task + "a cat"
    got = Template("e5v", sys_p, task).render("a cat")
    assert got == sys_p + E5V_WRAP.format(E5V_TEXT.replace("<sent>", task + "a cat"))
    assert Template("Q: {text} A:").render("x{y}") == "Q: x{y} A:"
    with pytest.raises(InputError, match="no image placeholder"):
        Template("none").render_image()
    with pytest.raises(ConfigError, match="holding '\\{text\\}' once"):
        Template("e6v")
    with pytest.raises(ConfigError, match="holding"):
        Template("{text} and {text}")


def test_last_token_pool_follows_the_vlm2vec_rule():
    h = torch.arange(2 * 4 * 1, dtype=torch.float64).view(2, 4, 1)
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert last_token_pool(h, left)[:, 0].tolist() == [3.0, 7.0]  # every row ends with a token: −1
    assert last_token_pool(h, right)[:, 0].tolist() == [1.0, 7.0]  # mask.sum(1) − 1 per row
    with pytest.raises(InputError, match="no tokens"):
        last_token_pool(h, torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0]]))


def _tower(arch, **params):
    torch.manual_seed(0)
    ctx = TowerContext(texts=CAPTIONS)
    return decoder_llm_tower(
        arch=arch, hidden_size=32, layers=2, heads=2, intermediate_size=64, context=ctx, **params
    )


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_left_and_right_padding_give_the_same_embeddings(arch):
    tower = (
        _tower(arch, template="e5v", max_length=64, task_prompt="Represent this caption: ").double().eval()
    )
    got = {}
    for side in ("left", "right"):
        tower.padding_side = side
        ids = tower.tokenize(CAPTIONS)
        pads = (ids == tower.pad_id).any(1)
        assert pads.tolist() == [True, True, False]
        assert bool((ids[:2, 0] == tower.pad_id).all()) == (side == "left")
        with torch.no_grad():
            got[side] = tower(ids)
    assert torch.allclose(got["left"], got["right"], rtol=0, atol=1e-12)
    with torch.no_grad():  # and each equals the unpadded text alone
        alone = torch.cat([tower(tower.tokenize([c])) for c in CAPTIONS])
    assert torch.allclose(got["left"], alone, rtol=0, atol=1e-12)
    assert got["left"].shape == (3, 32)


def test_truncation_cuts_the_content_and_keeps_the_template_suffix():
    tower = _tower("gpt2", template="e5v", max_length=64, task_prompt="Represent this caption: ")
    full = tower.token_rows(["a yellow diamond to the left of a small yellow circle"])[0]
    tail = tower.token_rows([""])[0]  # the template alone
    suffix_len = len(tail) - tail.index(tower.tokenizer.convert_tokens_to_ids("summary"))
    tower.max_length = len(tail) + 3  # room for 3 content words
    row = tower.token_rows(["a yellow diamond to the left of a small yellow circle"])[0]
    assert len(row) == tower.max_length and len(full) > tower.max_length
    assert row[-suffix_len:] == full[-suffix_len:]  # "summary above sentence in one word: …[SEP]" intact
    assert row == tower.token_rows(["a yellow diamond"])[0]  # the content cut to its first 3 words
    assert tower.count_truncated(CAPTIONS) == 2
    ids = tower.tokenize(CAPTIONS)
    assert ids.shape == (3, tower.max_length)
    tower.max_length = len(tail) - 1
    with pytest.raises(InputError, match="the template alone is"):
        tower.tokenize(["a cat"])


def _bpe_folder(tmp_path):
    """A tiny GPT-2 with a byte-level BPE tokenizer (no pad token) saved to a local folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    corpus = [*CAPTIONS, Template("unime").render(""), "summary above sentence"] * 5
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(fast), n_embd=32, n_layer=2, n_head=2, n_positions=128)
    GPT2Model(cfg).save_pretrained(str(tmp_path))
    return tmp_path


def test_local_folder_brings_its_model_and_tokenizer(tmp_path):
    from transformers import GPT2Model

    folder = _bpe_folder(tmp_path / "gpt")
    tower = decoder_llm_tower(path=str(folder), template="unime", max_length=128, context=TowerContext())
    assert tower.pad_id == -1  # no pad token: a sentinel that never reaches the embedding table
    ids = tower.tokenize(CAPTIONS)
    ref_model = GPT2Model.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        got = tower.eval()(ids)
        for i, c in enumerate(CAPTIONS):
            text = Template("unime").render(c)
            alone = torch.tensor([tower.tokenizer(text)["input_ids"]])
            ref = ref_model(input_ids=alone).last_hidden_state[0, -1]
            assert torch.allclose(got[i], ref, atol=1e-5)
    # BPE truncation: the decoded text ends with the untouched suffix, the content is a prefix
    tower.max_length = len(tower.token_rows([""])[0]) + 4
    row = tower.token_rows([CAPTIONS[2]])[0]
    text = tower.tokenizer.decode(row)
    assert len(row) <= tower.max_length
    assert text.endswith("\nSummary above sentence in one word: <|end|>\n<|assistant|>\n")
    content = text[len("<|user|>\n") : -len("\nSummary above sentence in one word: <|end|>\n<|assistant|>\n")]
    assert content and CAPTIONS[2].startswith(content)


def test_errors():
    with pytest.raises(InputError, match="needs training texts"):
        decoder_llm_tower()
    with pytest.raises(ConfigError, match="multiple of heads"):
        decoder_llm_tower(hidden_size=30, heads=4, context=TowerContext(texts=CAPTIONS))
    tower = _tower("gpt2")
    with pytest.raises(InputError, match="single string"):
        tower.tokenize("a cat")
    with pytest.raises(InputError, match="LongTensor"):
        tower(torch.zeros(2, 3))


def test_word_tokenizer_vocabulary_holds_the_template_words():
    tower = _tower("llama", template="e5v", max_length=80)
    vocab = tower.tokenizer.get_vocab()
    assert {"summary", "sentence", "assistant", "header"} <= set(vocab)
    assert "[UNK]" not in tower.tokenizer.convert_ids_to_tokens(tower.tokenize(CAPTIONS)[0])
    assert isinstance(train_word_tokenizer(CAPTIONS), type(tower.tokenizer))


def llm_model_config(arch="gpt2") -> ModelConfig:
    base = ModelConfig.tiny()
    text = TowerConfig(
        "decoder_llm",
        {"arch": arch, "hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64,
         "max_length": 24, "task_prompt": "represent this caption for retrieving images: "},
    )  # fmt: skip
    return dataclasses.replace(base, towers={"image": base.towers["image"], "text": text})


def test_trains_through_the_trainer_and_exports_to_safetensors(tmp_path):
    from contrastkit.cli import main
    from contrastkit.models import load
    from contrastkit.train import RunConfig, load_run, train

    base = RunConfig.tiny(out_dir=str(tmp_path / "runs"))
    cfg = dataclasses.replace(
        base, model=llm_model_config("llama"), train=dataclasses.replace(base.train, steps=4, batch_size=8)
    )
    result = train(cfg)
    assert result.step == 4 and result.skipped == 0
    assert (
        main(["export", str(result.run_dir), "--format", "safetensors", "--out", str(tmp_path / "st")]) == 0
    )
    _, trained, _, _ = load_run(result.run_dir)
    rebuilt = load(tmp_path / "st")
    images = make_shapes("test", n=4).images
    with torch.no_grad():
        assert torch.equal(rebuilt.encode("image", images), trained.encode("image", images))
        a = rebuilt.encode("text", rebuilt.tokenize(CAPTIONS))
        assert torch.equal(a, trained.encode("text", trained.tokenize(CAPTIONS)))
    fresh = build_model(llm_model_config("llama"), texts=CAPTIONS)
    assert type(fresh.text_tower()).__name__ == "DecoderTextTower"


def test_listed_and_explained(capsys):
    from contrastkit.cli import main

    assert main(["explain", "decoder_llm"]) == 0
    out = capsys.readouterr().out
    assert "template" in out and "padding_side" in out and "task_prompt" in out
