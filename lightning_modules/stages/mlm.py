"""``stage=mlm``: plain masked-LM pretraining on the same corpus and model, without knowledge.

The ablation baseline for ``stage=kgbert``: same data module, same masking rate and 80/10/10 rule,
one loss. ``whole_word_mentions=true`` masks KG mentions whole (ERNIE's entity masking) without
using any triple, to separate the effect of masking from that of the knowledge objectives.
Validation (held-out sentences, fixed masks) masks mentions whole with probability
``mention_mask_prob`` whatever ``whole_word_mentions``, as ``stage=kgbert`` does, so ``val/acc`` and
``val/mention_acc`` (accuracy on the masked mention tokens) compare across the pretraining stages.
"""

from __future__ import annotations

import logging

from torch import nn

from datamodules.pretraining.aligned_corpus import MENTION_SAMPLE, PretrainRow
from lightning_modules.knowledge.masking import mask_texts, mention_accuracy, mention_mask_rates
from lightning_modules.scale.optim import Optim
from lightning_modules.stages.base import StageModule, StepOutput

log = logging.getLogger(__name__)


def measure_mention_masking(module: StageModule, datamodule) -> dict:
    """``kg/mention_mask_rate`` (per mention length, and overall weighted by the corpus's mentions per length) of
    the module's training masking, on the datamodule's fixed sample of aligned sentences (stratified by mention
    length); recorded in ``module.results`` and logged."""
    sample = datamodule.mention_sample(MENTION_SAMPLE)
    rates = mention_mask_rates(
        module.tokenizer, [a.text for a in sample], [a.mentions for a in sample], module.random_ids,
        module.max_length, module.mask_prob, module.span_prob, seed=datamodule.seed,
        bucket_weights=datamodule.mention_counts(),
    )
    rates["kg/mention_mask_sample"] = float(len(sample))
    module.results.update(rates)
    log.info("mention masking on %d aligned sentences: %s", len(sample),
             ", ".join(f"{k}={v}" for k, v in rates.items()))
    numbers = {k: v for k, v in rates.items() if v is not None}
    for logger in module.loggers:
        logger.log_metrics(numbers, step=0)
    return rates


def record_validation(module: StageModule) -> None:
    """The latest validation's ``val/*`` metrics (``val/mention_acc``, ``val/gain``, ``val/loss``) into
    ``module.results``, so results.json holds the held-out probe of the weights that are exported."""
    if module.trainer.sanity_checking:
        return
    metrics = module.trainer.callback_metrics
    module.results.update({k: round(float(v), 6) for k, v in metrics.items() if k.startswith("val/") and k != "val/acc"})


class MlmModule(StageModule):
    loss_names = ("mlm",)
    eval_loss = "mlm"

    def __init__(
        self,
        masked_lm: nn.Module,
        tokenizer,
        optim: Optim,
        max_length: int,
        mask_prob: float,
        whole_word_mentions: bool,
        mention_mask_prob: float,
        loss_weights: dict[str, float],
        export_dir: str | None,
    ) -> None:
        vocab_size = masked_lm.get_input_embeddings().num_embeddings
        super().__init__(masked_lm, tokenizer, optim, vocab_size, loss_weights, export_dir)
        self.max_length = max_length
        self.mask_prob = mask_prob
        self.span_prob = mention_mask_prob if whole_word_mentions else 0.0
        self.probe_span_prob = mention_mask_prob

    def collate(self, rows: list[PretrainRow]) -> dict:
        # Validation rows (fixed masks) get the probe's whole-mention masking, the same in every pretraining stage.
        span_prob = self.span_prob if rows[0].mask_seed is None else self.probe_span_prob
        masked = mask_texts(
            self.tokenizer, [r.text for r in rows], [r.mentions for r in rows], [r.mask_seed for r in rows],
            self.random_ids, self.max_length, self.mask_prob, span_prob,
        )
        return {"inputs": masked.inputs, "labels": masked.labels, "mention_tokens": masked.mention_tokens()}

    def step(self, batch: dict) -> StepOutput:
        loss, predicted, targets = self.mlm_loss(self.encode(batch["inputs"]), batch["labels"])
        accuracy = mention_accuracy(predicted, targets, batch["labels"], batch["mention_tokens"])
        metrics = {} if accuracy is None else {"kg/mention_acc": accuracy}
        return StepOutput({"mlm": loss}, predictions=predicted, targets=targets, metrics=metrics)

    def on_fit_start(self) -> None:
        measure_mention_masking(self, self.trainer.datamodule)

    def on_validation_end(self) -> None:
        record_validation(self)
