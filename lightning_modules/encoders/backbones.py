"""Backbone factories selected by ``conf/model``: each gives a tokenizer and a masked LM.

Every stage builds on a Hugging Face masked LM (``BertForMaskedLM`` for ``model=tiny``), so a
pretraining stage's export loads with ``AutoModelForMaskedLM`` and feeds the next stage.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM, PreTrainedModel
from transformers.utils import logging as transformers_logging

from datamodules.errors import ConfigError
from lightning_modules.encoders.char_vocab import char_tokenizer
from lightning_modules.scale.precision import layer_norms_follow_weights


class TinyBert:
    """A small BERT built from scratch over a character vocabulary of the task texts.

    To continue from a checkpoint (a pretraining stage's export), use ``model=hf model.pretrained=<dir>``:
    a checkpoint fixes the sizes and the vocabulary that this option would build.
    """

    pretrained = None

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        max_position_embeddings: int,
        dropout: float,
        cache_dir: str,
        vocab_min_count: int,
        activation_checkpointing: bool,
        attn_implementation: str,
        compile: bool,
    ) -> None:
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.dropout = dropout
        self.cache_dir = cache_dir
        self.vocab_min_count = vocab_min_count
        self.activation_checkpointing = activation_checkpointing
        self.attn_implementation = _check_attn(attn_implementation)
        self.compile = compile

    def tokenizer(self, texts: Iterable[str]):
        return char_tokenizer(texts, self.cache_dir, self.vocab_min_count)

    def masked_lm(self, tokenizer) -> PreTrainedModel:
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout,
            pad_token_id=tokenizer.pad_token_id,
        )
        config._attn_implementation = self.attn_implementation
        model = BertForMaskedLM(config)
        return _finish(model, self.activation_checkpointing, self.compile)


class PretrainedMLM:
    """Any Hugging Face masked-LM checkpoint, by hub name or local path (``model.pretrained=``)."""

    def __init__(
        self,
        pretrained: str,
        dropout: float | None,
        activation_checkpointing: bool,
        attn_implementation: str,
        compile: bool,
    ) -> None:
        self.pretrained = pretrained
        self.dropout = dropout
        self.activation_checkpointing = activation_checkpointing
        self.attn_implementation = _check_attn(attn_implementation)
        self.compile = compile

    def tokenizer(self, texts: Iterable[str] = ()):
        try:
            return AutoTokenizer.from_pretrained(self.pretrained)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.pretrained={self.pretrained}: cannot load its tokenizer ({_first_line(err)})") from None

    def masked_lm(self, tokenizer=None) -> PreTrainedModel:
        if Path(self.pretrained).is_dir():
            check_weight_files(Path(self.pretrained), "model.pretrained")
        overrides = {}
        if self.dropout is not None:
            overrides = {"hidden_dropout_prob": self.dropout, "attention_probs_dropout_prob": self.dropout}
        # Checkpoints may be stored in float16 (zh-mlm-small is): train in float32, let precision cast.
        transformers_logging.disable_progress_bar()  # a bar per load in every log and predict.py call
        try:
            model = AutoModelForMaskedLM.from_pretrained(
                self.pretrained, dtype=torch.float32, attn_implementation=self.attn_implementation, **overrides
            )
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.pretrained={self.pretrained}: cannot load a masked LM ({_first_line(err)})") from None
        return _finish(model, self.activation_checkpointing, self.compile)


def check_weight_files(folder: Path, key: str) -> None:
    """The weight files of a Hugging Face checkpoint folder whole, checked without loading them: every shard its
    ``*.index.json`` names is there, each ``*.safetensors`` file's header and length agree (safetensors' own check),
    each PyTorch ``*.bin`` archive has its directory (written last, so a cut file lacks it). A ConfigError names the
    damaged file."""
    from safetensors import safe_open

    for index in sorted(folder.glob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"{key}={folder}: {index} is damaged ({type(err).__name__}: {_first_line(err)}); copy or "
                              "download the checkpoint again") from None
        missing = sorted(shard for shard in shards if not (folder / shard).is_file())
        if missing:
            raise ConfigError(f"{key}={folder}: {index.name} names {missing[0]}, which is not there"
                              f"{f' (nor {len(missing) - 1} more)' if len(missing) > 1 else ''}; copy or download the "
                              "checkpoint again")
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:  # noqa: BLE001 - SafetensorError, or an OSError reading it
            raise ConfigError(f"{key}={folder}: {path} is damaged or truncated ({_first_line(err)}); copy or download "
                              "it again") from None
    for path in sorted(folder.glob("*.bin")):
        with path.open("rb") as handle:
            head = handle.read(4)
        if len(head) == 4 and head != b"PK\x03\x04":
            continue  # not torch's zip format (an old pickle): nothing to check without loading it
        try:
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
        except (zipfile.BadZipFile, OSError) as err:
            raise ConfigError(f"{key}={folder}: {path} is damaged or truncated ({err}); copy or download it "
                              "again") from None


ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def _first_line(err: Exception) -> str:
    return str(err).strip().split("\n")[0]


def _check_attn(name: str) -> str:
    """sdpa: torch's scaled_dot_product_attention (fused kernels: flash / memory-efficient on GPU); eager: matmuls."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"model.attn_implementation={name!r}; allowed: {list(ATTN_IMPLEMENTATIONS)}")
    return name


def _finish(model: PreTrainedModel, activation_checkpointing: bool, compile: bool = False) -> PreTrainedModel:
    """The memory and speed switches of ``conf/model``, on a model whose LayerNorms run under CPU autocast.

    activation_checkpointing: each transformer layer keeps only its input and recomputes its
      activations during backward (non-reentrant ``torch.utils.checkpoint``, per layer).
    compile: ``torch.compile`` on each transformer layer (in place, ``nn.Module.compile``); layers
      rather than the whole model so the other parts (embeddings, heads, ZeRO hooks) stay eager and
      a new padded length recompiles one small graph.
    """
    layer_norms_follow_weights(model)
    model.train()  # from_pretrained returns eval mode, and Lightning keeps modules' modes: dropout would be off
    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compile:
        for layer in transformer_layers(model):
            layer.compile()
    return model


def transformer_layers(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face encoder (``encoder.layer`` for BERT-like models)."""
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise ConfigError(f"model.compile=true: cannot find the transformer layers of {type(model).__name__}")
    return list(layers)
