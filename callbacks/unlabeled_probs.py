"""Writes a run's class probabilities on the task's unlabeled rows: what makes a run a teacher.

PET's ensemble step needs every pattern model's predictions on the same unlabeled rows. After
training, when the run predicts test.json with its selected (best-on-dev) weights, this callback
scores ``data.max_unlabeled`` rows of unlabeled.json with the same weights and writes
``<output_dir>/unlabeled_probs.pt``: ``{"task", "split", "labels", "ids", "probs" [N, C]}``.
results.json records the path (``unlabeled_probs``) and the row count; ``stage=distill
distill.teachers=<runs>`` reads them (``datamodules/teachers.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer

from datamodules.protocol import TaskData
from lightning_modules.stages.base import StageModule

log = logging.getLogger(__name__)

FILE_NAME = "unlabeled_probs.pt"


class UnlabeledProbs(Callback):
    def __init__(self, output_dir: str, batch_size: int) -> None:
        self.output_dir = Path(output_dir)
        self.batch_size = batch_size

    def on_predict_end(self, trainer: Trainer, pl_module: StageModule) -> None:
        datamodule: TaskData = trainer.datamodule
        rows = datamodule.unlabeled_rows() if hasattr(datamodule, "unlabeled_rows") else []
        if not rows:
            pl_module.results["unlabeled_probs"] = None
            return
        probs = pl_module.class_probs(rows, self.batch_size)
        if not trainer.is_global_zero:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / FILE_NAME
        task = datamodule.task
        labels = task.label_list or [str(c) for c in range(probs.shape[1])]
        torch.save({"task": task.name, "split": str(getattr(datamodule, "split", "")), "labels": labels,
                    "ids": [row.id for row in rows], "probs": probs}, path)
        pl_module.results.update(unlabeled_probs=str(path), unlabeled_rows=len(rows))
        log.info("class probabilities of %d unlabeled rows -> %s", len(rows), path)
