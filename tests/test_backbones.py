"""Backbone factories: the character vocabulary of model=tiny and loading a HF checkpoint by path."""

from __future__ import annotations

import torch

from lightning_modules.encoders.char_vocab import SPECIAL_TOKENS, build_char_vocab, char_tokenizer
from tests.conftest import compose_config
from tests.helpers import tiny_bert
from train import instantiate_with


def test_char_vocab_has_bert_specials_then_characters():
    vocab = build_char_vocab(["好评，物流快", "WiFi 好"])
    assert vocab[:5] == SPECIAL_TOKENS
    assert vocab[5:] == sorted(set("好评，物流快wif")) + ["##f", "##i", "##w"]


def test_char_tokenizer_ids_match_the_vocabulary_file_and_are_cached(tmp_path):
    tokenizer = char_tokenizer(["很好很差"], tmp_path)
    files = list((tmp_path / "char_vocab").glob("vocab-*.txt"))
    assert len(files) == 1
    vocab = files[0].read_text(encoding="utf-8").split("\n")
    ids = tokenizer("很差")["input_ids"]
    assert ids == [vocab.index("[CLS]"), vocab.index("很"), vocab.index("差"), vocab.index("[SEP]")]
    char_tokenizer(["很好很差"], tmp_path)  # same texts: same cached file, no second one
    assert len(list((tmp_path / "char_vocab").glob("vocab-*.txt"))) == 1


SMALL = ("model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64")


def test_tiny_bert_matches_its_config(tmp_path):
    factory = tiny_bert(tmp_path / "run", *SMALL)
    tokenizer = factory.tokenizer(["你好世界"])
    model = factory.masked_lm(tokenizer)
    assert model.config.vocab_size == len(tokenizer) == 5 + 4
    logits = model(**tokenizer(["你好"], return_tensors="pt")).logits
    assert logits.shape == (1, 4, len(tokenizer))


def test_pretrained_mlm_loads_a_saved_checkpoint_in_float32(tmp_path):
    factory = tiny_bert(tmp_path / "run", *SMALL)
    tokenizer = factory.tokenizer(["你好世界"])
    model = factory.masked_lm(tokenizer).half().eval()
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded = instantiate_with(compose_config(["model=hf", f"model.pretrained={tmp_path / 'ckpt'}"], tmp_path / "run").model)
    reloaded = loaded.masked_lm(loaded.tokenizer()).eval()
    assert reloaded.dtype == torch.float32
    batch = tokenizer(["世界"], return_tensors="pt")
    torch.testing.assert_close(reloaded(**batch).logits, model.float()(**batch).logits)
