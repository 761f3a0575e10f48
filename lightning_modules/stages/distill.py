"""``stage=distill``: PET's final step, one classifier trained on an ensemble's soft labels.

The teachers (``distill.teachers``: fuzzy_pet runs, e.g. a sweep over patterns or label-word sets)
have written their class probabilities on the task's unlabeled rows; ``datamodules/teachers.py``
averages them (weighted by dev accuracy) into soft labels. The student is the fine-tuning classifier
(``stage=finetune``'s heads), trained on the labelled rows (cross-entropy) plus the soft-labelled
unlabeled rows (PET's distillation loss: temperature² · KL(soft ‖ softmax(logits / temperature))).
``distill.generations=N`` first runs N iPET generations (``ipet.py``) and distils the last one.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.tasks.rows import Row
from datamodules.protocol import TaskData
from datamodules.tasks.task_spec import TaskSpec
from datamodules.teachers.ensemble import TeacherEnsemble
from datamodules.errors import ConfigError
from lightning_modules.stages.finetune import FinetuneModule
from lightning_modules.scale.optim import Optim
from lightning_modules.stages.base import StepOutput

log = logging.getLogger(__name__)


def distillation_loss(log_probs: torch.Tensor, soft: torch.Tensor, is_soft: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows: cross-entropy for labelled rows (``soft`` one-hot), and for soft-labelled rows
    temperature² · KL(soft ‖ softmax(log_probs / temperature)) (log_probs are logits up to a constant)."""
    hard = -(soft * log_probs).sum(-1)
    student = F.log_softmax(log_probs / temperature, dim=-1)
    kl = (soft * (soft.clamp_min(1e-12).log() - student)).sum(-1) * temperature**2
    return torch.where(is_soft, kl, hard).mean()


class DistillModule(FinetuneModule):
    live_arguments = ("teachers",)
    loss_names = ("distill",)
    eval_loss = "distill"

    def __init__(
        self,
        masked_lm: nn.Module,
        task: TaskSpec,
        tokenizer,
        optim: Optim,
        max_length: int,
        dropout: float,
        teachers: TeacherEnsemble,
    ) -> None:
        super().__init__(masked_lm, task, tokenizer, optim, max_length, dropout)
        self.teachers = teachers
        self.results.update(teachers=teachers.summary(), generation=teachers.generation, distill_weighting=teachers.weighting,
                            distill_temperature=teachers.temperature)

    reads_unlabeled = True

    def setup(self, stage: str) -> None:
        """The soft-labelled rows join the training rows before the first training dataloader is built."""
        if stage != "fit":
            return
        datamodule: TaskData = self.trainer.datamodule
        unlabeled = datamodule.unlabeled_rows()
        if not unlabeled:
            raise ConfigError(f"task {self.task.name} has no unlabeled data: stage=distill needs unlabeled rows to "
                              "distil the teachers on")
        rows = self.teachers.soft_rows(unlabeled, self.task.name, str(datamodule.split))
        datamodule.set_pseudo_labelled(rows)
        self.results.update(distill_rows=len(rows), distill_agreement=self.teachers.agreement([row.id for row in rows]))
        log.info("distill: %d labelled rows + %d soft-labelled rows from %d teachers", len(datamodule.labelled_rows),
                 len(rows), len(self.teachers.teachers))

    def collate(self, rows: list[Row]) -> dict:
        batch = super().collate(rows)
        soft = torch.zeros(len(rows), self.task.num_classes)
        for i, row in enumerate(rows):
            if getattr(row, "soft", None):
                soft[i] = torch.tensor(row.soft)
            elif row.label is not None:
                soft[i, row.label] = 1.0
        batch["soft"] = soft
        batch["is_soft"] = torch.tensor([bool(getattr(row, "soft", None)) for row in rows])
        return batch

    def step(self, batch: dict) -> StepOutput:
        log_probs = self.class_log_probs(batch)
        labels = batch["labels"]
        if self.training:
            loss = distillation_loss(log_probs, batch["soft"], batch["is_soft"], self.teachers.temperature)
        else:
            loss = F.nll_loss(log_probs, labels)
        return StepOutput({"distill": loss}, log_probs, targets=labels)
