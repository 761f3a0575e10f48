"""``stage=finetune``: the standard fine-tuning baseline on the encoder.

A classification head on [CLS] for the classification tasks, a scoring head over the 7
candidates for chid (multiple choice), and a head on [CLS] + both span representations for
cluewsc (span pair).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.tasks.rows import Row, span_start
from datamodules.tasks.task_spec import TaskSpec
from lightning_modules.knowledge.masking import IGNORE
from lightning_modules.scale.optim import Optim
from lightning_modules.stages.base import StageModule, StepOutput
from lightning_modules.scoring.submission import submission_rows


class FinetuneModule(StageModule):
    live_arguments = ("task",)
    loss_names = ("cls",)
    eval_loss = "cls"

    def __init__(
        self,
        masked_lm: nn.Module,
        task: TaskSpec,
        tokenizer,
        optim: Optim,
        max_length: int,
        dropout: float,
    ) -> None:
        # The MLM head is left out: it would be a trained-nowhere parameter set (and break DDP).
        super().__init__(masked_lm.base_model, tokenizer, optim, task.num_classes, loss_weights={self.eval_loss: 1.0},
                         export_dir=None)
        self.task = task
        self.max_length = max_length
        hidden = self.backbone.config.hidden_size
        inputs = 3 * hidden if task.kind == "span_pair" else hidden
        outputs = 1 if task.kind == "multiple_choice" else task.num_classes
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(inputs, outputs)

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        return self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state

    # -- batches -------------------------------------------------------------------------------
    def collate(self, rows: list[Row]) -> dict:
        encode = {
            "classification": self._encode_classification,
            "multiple_choice": self._encode_multiple_choice,
            "span_pair": self._encode_span_pair,
        }[self.task.kind]
        batch = encode(rows)
        batch["ids"] = [row.id for row in rows]
        batch["labels"] = torch.tensor([row.label if row.label is not None else IGNORE for row in rows])
        return batch

    def _tokenize(self, first: list[str], second: list[str] | None = None, **kwargs) -> dict:
        return self.tokenizer(
            first, second, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt", **kwargs
        )

    def _encode_classification(self, rows: list[Row]) -> dict:
        fields = self.task.text_fields
        first = [row.fields[fields[0]] for row in rows]
        second = [row.fields[fields[1]] for row in rows] if len(fields) > 1 else None
        return dict(self._tokenize(first, second))

    def _encode_multiple_choice(self, rows: list[Row]) -> dict:
        window = (self.max_length - 2) // 2
        texts = []
        for row in rows:
            left, right = row.fields["left"][-window:], row.fields["right"][:window]
            texts += [left + candidate + right for candidate in row.fields["candidates"]]
        encoded = self._tokenize(texts)
        return {key: value.view(len(rows), self.task.num_choices, -1) for key, value in encoded.items()}

    def _encode_span_pair(self, rows: list[Row]) -> dict:
        texts = [row.fields["text"] for row in rows]
        encoded = self._tokenize(texts)
        spans = torch.zeros(len(rows), 2, encoded["input_ids"].shape[1])
        for i, row in enumerate(rows):
            for j, key in enumerate(("span1", "span2")):
                span = row.fields[key]
                start = span_start(row.fields["text"], span, row.fields[f"{key}_index"])
                tokens = {encoded.char_to_token(i, c) for c in range(start, start + len(span))} - {None}
                for t in tokens or {0}:  # a span cut off by truncation falls back to [CLS]
                    spans[i, j, t] = 1.0
        batch = dict(encoded)
        batch["span_masks"] = spans / spans.sum(-1, keepdim=True)
        return batch

    # -- scores ----------------------------------------------------------------------------------
    def class_log_probs(self, batch: dict) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        if self.task.kind == "multiple_choice":
            flat = {k: v.flatten(0, 1) for k, v in inputs.items()}
            scores = self.head(self.dropout(self(**flat)[:, 0])).view(-1, self.task.num_choices)
        elif self.task.kind == "span_pair":
            hidden = self(**inputs)
            spans = torch.einsum("bst,bth->bsh", batch["span_masks"].to(hidden.dtype), hidden)
            scores = self.head(self.dropout(torch.cat([hidden[:, 0], spans.flatten(1)], dim=-1)))
        else:
            scores = self.head(self.dropout(self(**inputs)[:, 0]))
        return F.log_softmax(scores.float(), dim=-1)

    def step(self, batch: dict) -> StepOutput:
        log_probs = self.class_log_probs(batch)
        return StepOutput({"cls": F.nll_loss(log_probs, batch["labels"])}, log_probs, targets=batch["labels"])

    def predict(self, batch: dict) -> list[dict]:
        return submission_rows(self.task, batch["ids"], self.class_log_probs(batch).argmax(-1).tolist())
