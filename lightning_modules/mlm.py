"""``stage=mlm``: plain masked-LM pretraining on the same corpus and model, without knowledge.

The ablation baseline for ``stage=kgbert``: same data module, same masking rate and 80/10/10 rule,
one loss. ``whole_word_mentions=true`` masks KG mentions whole (ERNIE's entity masking) without
using any triple, to separate the effect of masking from that of the knowledge objectives.
"""

from __future__ import annotations

from torch import nn

from datamodules.pretraining import PretrainRow
from lightning_modules.masking import mask_texts
from lightning_modules.optim import Optim
from lightning_modules.stage import StageModule, StepOutput


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
        self.save_settings()
        self.max_length = max_length
        self.mask_prob = mask_prob
        self.span_prob = mention_mask_prob if whole_word_mentions else 0.0

    def collate(self, rows: list[PretrainRow]) -> dict:
        masked = mask_texts(
            self.tokenizer, [r.text for r in rows], [r.mentions for r in rows], [r.mask_seed for r in rows],
            self.random_ids, self.max_length, self.mask_prob, self.span_prob,
        )
        return {"inputs": masked.inputs, "labels": masked.labels, "size": len(rows)}

    def step(self, batch: dict) -> StepOutput:
        loss, predicted, targets = self.mlm_loss(self.encode(batch["inputs"]), batch["labels"])
        return StepOutput({"mlm": loss}, predictions=predicted, targets=targets)
