"""``stage=entailment``: entailment pretraining over every task (EFL-style), plus masked LM.

``loss_entail``: cross-entropy of an entailed / not-entailed head on ``[CLS]`` of
``[CLS] text [SEP] description [SEP]`` pairs (``datamodules.pretraining.entailment`` builds them from all
tasks); ``loss_mlm``: masked LM on the tasks' unlabeled texts with the backbone's MLM head. The
weighted sum (``stage.loss_weights``) is trained. ``val/acc`` is the accuracy on the dev rows: a row
is right when its true description gets the highest entailment probability among the row's pairs
(EFL's decision rule; a one-pair row, ocnli or cluewsc, when it lands on the right side of 0.5);
``val/pair_acc`` is the plain accuracy over pairs.
The backbone is exported with ``save_pretrained``, the entailment head beside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.pretraining.entailment import EntailmentPair
from datamodules.mlm_texts import MlmText
from lightning_modules.scale.optim import Optim
from lightning_modules.stages.base import StageModule, StepOutput


def row_decisions(entailed: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """1 per row (group) decided right, else 0. A row with several pairs is right when its entailed pair
    has the highest entailment probability (the EFL decision); a one-pair row when the probability is
    above 0.5 exactly when the pair is entailed."""
    decisions = []
    for group in torch.unique_consecutive(groups):
        member = groups == group
        probs, truth = entailed[member], labels[member]
        if probs.numel() == 1:
            decisions.append(int((probs[0] > 0.5).long() == truth[0]))
        else:
            decisions.append(int(truth[probs.argmax()] == 1))
    return torch.tensor(decisions, dtype=torch.long, device=entailed.device)


class EntailmentModule(StageModule):
    loss_names = ("entail", "mlm")
    eval_loss = "entail"

    def __init__(
        self,
        masked_lm: nn.Module,
        tokenizer,
        optim: Optim,
        max_length: int,
        mlm_max_length: int,
        mask_prob: float,
        loss_weights: dict[str, float],
        dropout: float,
        export_dir: str | None,
    ) -> None:
        super().__init__(masked_lm, tokenizer, optim, 2, loss_weights, export_dir)
        self.max_length = max_length
        self.mlm_max_length = mlm_max_length
        self.mask_prob = mask_prob
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(masked_lm.config.hidden_size, 2))

    # -- batches ---------------------------------------------------------------------------------
    def collate(self, rows: list[EntailmentPair]) -> dict:
        encoding = self.tokenizer(
            [r.text for r in rows], [r.description for r in rows], truncation="only_first",
            max_length=self.max_length, padding=True, return_tensors="pt",
        )
        return {"inputs": dict(encoding), "labels": torch.tensor([r.label for r in rows]),
                "groups": torch.tensor([r.group for r in rows])}

    @property
    def wants_mlm_batches(self) -> bool:
        return self.loss_weights["mlm"] > 0

    def collate_mlm(self, texts: list[MlmText]) -> dict:
        return self.masked_texts(texts, self.mlm_max_length, self.mask_prob)

    # -- objectives ------------------------------------------------------------------------------
    def logits(self, pairs: dict) -> torch.Tensor:
        return self.head(self.encode(pairs["inputs"])[:, 0]).float()

    def step(self, batch: dict) -> StepOutput:
        logits = self.logits(batch)
        labels = batch["labels"]
        losses = {"entail": F.cross_entropy(logits, labels)}
        pair_acc = (logits.argmax(-1) == labels).float().mean()
        if self.training:
            return StepOutput(losses, predictions=logits.argmax(-1), targets=labels, metrics={"pair_acc": pair_acc.detach()})
        # Evaluation batches hold whole rows: val/acc scores each row's decision, not each pair.
        right = row_decisions(logits.softmax(-1)[:, 1], labels, batch["groups"])
        return StepOutput(losses, predictions=right, targets=torch.ones_like(right), metrics={"pair_acc": pair_acc})

    def export_modules(self) -> dict[str, nn.Module]:
        return {"entailment_head/head.pt": self.head}

    def export_configs(self) -> dict[str, dict]:
        return {"entailment_head/config.json": {
            "hidden_size": self.backbone.config.hidden_size, "labels": ["not_entailed", "entailed"],
            "input": "[CLS] text [SEP] description [SEP]; the head (dropout, linear) reads [CLS]",
        }}
