"""Backbone factories selected by ``conf/model``: each gives a tokenizer and a masked LM.

Every stage builds on a Hugging Face masked LM (``BertForMaskedLM`` for ``model=tiny``), so a
pretraining stage's export loads with ``AutoModelForMaskedLM`` and feeds the next stage.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM, PreTrainedModel

from datamodules.errors import ConfigError
from lightning_modules.char_vocab import char_tokenizer


class TinyBert:
    """A small BERT built from scratch over a character vocabulary of the task texts."""

    def __init__(
        self,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 2,
        intermediate_size: int = 512,
        max_position_embeddings: int = 512,
        dropout: float = 0.1,
        cache_dir: str = ".cache",
        vocab_min_count: int = 1,
        activation_checkpointing: bool = False,
        attn_implementation: str = "sdpa",
        compile: bool = False,
        pretrained: str | None = None,
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
        # A checkpoint (e.g. a pretraining stage's export_dir): then this is that model, not a new one.
        self.pretrained = pretrained
        self._loaded = (
            PretrainedMLM(pretrained, None, activation_checkpointing, attn_implementation, compile) if pretrained else None
        )

    def tokenizer(self, texts: Iterable[str]):
        if self._loaded is not None:
            return self._loaded.tokenizer(texts)
        return char_tokenizer(texts, self.cache_dir, self.vocab_min_count)

    def masked_lm(self, tokenizer) -> PreTrainedModel:
        if self._loaded is not None:
            return self._loaded.masked_lm(tokenizer)
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
        dropout: float | None = None,
        activation_checkpointing: bool = False,
        attn_implementation: str = "sdpa",
        compile: bool = False,
    ) -> None:
        self.pretrained = pretrained
        self.dropout = dropout
        self.activation_checkpointing = activation_checkpointing
        self.attn_implementation = _check_attn(attn_implementation)
        self.compile = compile

    def tokenizer(self, texts: Iterable[str] = ()):
        return AutoTokenizer.from_pretrained(self.pretrained)

    def masked_lm(self, tokenizer=None) -> PreTrainedModel:
        overrides = {}
        if self.dropout is not None:
            overrides = {"hidden_dropout_prob": self.dropout, "attention_probs_dropout_prob": self.dropout}
        # Checkpoints may be stored in float16 (zh-mlm-small is): train in float32, let precision cast.
        model = AutoModelForMaskedLM.from_pretrained(
            self.pretrained, dtype=torch.float32, attn_implementation=self.attn_implementation, **overrides
        )
        return _finish(model, self.activation_checkpointing, self.compile)


ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def _check_attn(name: str) -> str:
    """sdpa: torch's scaled_dot_product_attention (fused kernels: flash / memory-efficient on GPU); eager: matmuls."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"model.attn_implementation={name!r}; allowed: {list(ATTN_IMPLEMENTATIONS)}")
    return name


def _finish(model: PreTrainedModel, activation_checkpointing: bool, compile: bool = False) -> PreTrainedModel:
    """The memory and speed switches of ``conf/model``.

    activation_checkpointing: each transformer layer keeps only its input and recomputes its
      activations during backward (non-reentrant ``torch.utils.checkpoint``, per layer).
    compile: ``torch.compile`` on each transformer layer (in place, ``nn.Module.compile``); layers
      rather than the whole model so the other parts (embeddings, heads, ZeRO hooks) stay eager and
      a new padded length recompiles one small graph.
    """
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
