"""What every FewCLUE task stage shares: accuracy per split, optimizers, leaderboard predictions.

A stage subclasses ``TaskModule`` and implements ``collate`` (rows -> batch), ``class_log_probs``
(batch -> [B, C] log-probabilities) and, if its training loss is not plain cross-entropy on
those, ``training_loss``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torchmetrics.classification import MulticlassAccuracy

from datamodules.fewclue_rows import Row
from datamodules.task_spec import TaskSpec
from lightning_modules.optim import optimizers_for
from lightning_modules.submission import submission_rows


class TaskModule(LightningModule):
    def __init__(
        self,
        task: TaskSpec,
        tokenizer,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        lr: float = 2e-5,
        weight_decay: float = 0.01,
        max_length: int = 256,
    ) -> None:
        super().__init__()
        self.task = task
        self.tokenizer = tokenizer
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_length = max_length
        self.val_acc = MulticlassAccuracy(num_classes=task.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=task.num_classes, average="micro")

    # -- implemented by each stage -------------------------------------------------------------
    def collate(self, rows: list[Row]) -> dict:
        raise NotImplementedError

    def class_log_probs(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def training_loss(self, batch: dict) -> torch.Tensor:
        return F.nll_loss(self.class_log_probs(batch), batch["labels"])

    # -- Lightning hooks -----------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def _evaluate(self, batch: dict, split: str, metric: MulticlassAccuracy) -> None:
        log_probs = self.class_log_probs(batch)
        loss = F.nll_loss(log_probs, batch["labels"])
        metric(log_probs.argmax(-1), batch["labels"])
        size = len(batch["ids"])
        self.log(f"{split}/loss", loss, batch_size=size, sync_dist=True)
        self.log(f"{split}/acc", metric, prog_bar=True, batch_size=size)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        predicted = self.class_log_probs(batch).argmax(-1).tolist()
        return submission_rows(self.task, batch["ids"], predicted)

    def configure_optimizers(self):
        return optimizers_for(self)
