"""``stage=entailment``: entailment pretraining over every task (EFL-style), plus masked LM.

``loss_entail``: cross-entropy of an entailed / not-entailed head on ``[CLS]`` of
``[CLS] text [SEP] description [SEP]`` pairs (``datamodules.entailment`` builds them from all
tasks); ``loss_mlm``: masked LM on the tasks' unlabeled texts with the backbone's MLM head. The
weighted sum (``stage.loss_weights``) is trained. ``val/acc`` is the accuracy on the dev rows: a row
is right when its true description gets the highest entailment probability among the row's pairs
(EFL's decision rule; a one-pair row, ocnli or cluewsc, when it lands on the right side of 0.5);
``val/pair_acc`` is the plain accuracy over pairs.
The backbone is exported with ``save_pretrained``, the entailment head beside it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.entailment import EntailmentPair, MlmText
from lightning_modules.masking import mask_texts
from lightning_modules.pretrain_base import PretrainModule, StepOutput

DEFAULT_WEIGHTS = {"entail": 1.0, "mlm": 0.5}


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


class EntailmentModule(PretrainModule):
    loss_names = ("entail", "mlm")
    val_loss_name = "entail"

    def __init__(
        self,
        masked_lm: nn.Module,
        tokenizer,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        task=None,
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        max_length: int = 256,
        mlm_max_length: int = 128,
        mask_prob: float = 0.15,
        loss_weights: dict[str, float] | None = None,
        dropout: float = 0.1,
        final_window: int = 10,
        export_dir: str | None = None,
    ) -> None:
        # A plain dict (not Hydra's DictConfig), so the checkpoint's hyperparameters load with weights_only.
        loss_weights = {str(k): float(v) for k, v in (loss_weights or {}).items()}
        weights = {**DEFAULT_WEIGHTS, **(loss_weights or {})}
        super().__init__(
            masked_lm, tokenizer, optimizer, scheduler, lr, weight_decay, weights, final_window, export_dir
        )
        self.save_hyperparameters(ignore=["masked_lm", "tokenizer", "optimizer", "scheduler", "task"])
        self.max_length = max_length
        self.mlm_max_length = mlm_max_length
        self.mask_prob = mask_prob
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(masked_lm.config.hidden_size, 2))

    @property
    def num_predicted_classes(self) -> int:
        return 2

    # -- batches ---------------------------------------------------------------------------------
    def collate(self, rows: list) -> dict:
        if rows and isinstance(rows[0], EntailmentPair):
            encoding = self.tokenizer(
                [r.text for r in rows], [r.description for r in rows], truncation="only_first",
                max_length=self.max_length, padding=True, return_tensors="pt",
            )
            return {"inputs": dict(encoding), "labels": torch.tensor([r.label for r in rows]),
                    "groups": torch.tensor([r.group for r in rows]), "size": len(rows)}
        if rows and isinstance(rows[0], MlmText):
            masked = mask_texts(
                self.tokenizer, [r.text for r in rows], [[] for _ in rows], [r.mask_seed for r in rows],
                self.random_ids, self.mlm_max_length, self.mask_prob, 0.0,
            )
            return {"inputs": masked.inputs, "labels": masked.labels, "size": len(rows)}
        raise TypeError(f"EntailmentModule.collate: expected EntailmentPair or MlmText rows, got {type(rows[0])}")

    def batch_size(self, batch: dict) -> int:
        return batch["pairs"]["size"] if "pairs" in batch else batch["size"]

    # -- objectives ------------------------------------------------------------------------------
    def logits(self, pairs: dict) -> torch.Tensor:
        return self.head(self.encode(pairs["inputs"])[:, 0]).float()

    def step(self, batch: dict) -> StepOutput:
        pairs = batch.get("pairs", batch)
        logits = self.logits(pairs)
        labels = pairs["labels"]
        losses = {"entail": F.cross_entropy(logits, labels)}
        if batch.get("mlm") is not None:
            mlm = batch["mlm"]
            losses["mlm"] = self.mlm_loss(self.encode(mlm["inputs"]), mlm["labels"])[0]
        pair_acc = (logits.argmax(-1) == labels).float().mean()
        if self.training:
            return StepOutput(losses, logits.argmax(-1), labels, {"pair_acc": pair_acc.detach()})
        # Evaluation batches hold whole rows: val/acc scores each row's decision, not each pair.
        right = row_decisions(logits.softmax(-1)[:, 1], labels, pairs["groups"])
        return StepOutput(losses, right, torch.ones_like(right), {"pair_acc": pair_acc})

    def export_modules(self) -> dict[str, nn.Module]:
        return {"entailment_head/head.pt": self.head}

    def export_configs(self) -> dict[str, dict]:
        return {"entailment_head/config.json": {
            "hidden_size": self.masked_lm.config.hidden_size, "labels": ["not_entailed", "entailed"],
            "input": "[CLS] text [SEP] description [SEP]; the head (dropout, linear) reads [CLS]",
        }}

    def extra_stats(self) -> dict:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None or not getattr(datamodule, "counts", None):
            return {}
        return {"entailment/pairs_per_task": dict(datamodule.counts),
                "entailment/sampling": {k: round(v, 4) for k, v in datamodule.mixing.items()},
                "entailment/mlm_texts": len(datamodule.mlm_texts)}
