"""Scores the unlabeled rows at the end of training, for a run that will teach but keeps no checkpoint.

A distillation (``stage=distill``) or iPET scores each teacher's unlabeled rows when it first needs them, with
the teacher's own selected checkpoint, and caches them in the teacher's folder
(``datamodules/teachers/ensemble.py``). A run trained with ``keep_checkpoints=false`` has no checkpoint left by
then: this callback writes the same cache while the selected (best-on-dev) weights are still loaded, after the
run predicts test.json: ``<output_dir>/unlabeled_probs.pt`` for ``data.max_unlabeled`` rows of unlabeled.json.
It is in no default config (nobody pays for it unasked); iPET adds it to its generations, and a user adds it with
``+callbacks.unlabeled_probs='{_target_: callbacks.unlabeled_probs.UnlabeledProbs, output_dir: ${paths.output_dir},
batch_size: 64}'``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lightning.pytorch import Callback, Trainer

from datamodules.protocol import TaskData
from datamodules.runs.results import UNLABELED_PROBS_FILE
from datamodules.teachers.ensemble import save_unlabeled_probs
from lightning_modules.stages.base import StageModule

log = logging.getLogger(__name__)


class UnlabeledProbs(Callback):
    reads_unlabeled = True  # train.py reads and validates them before training, not after it

    def __init__(self, output_dir: str, batch_size: int) -> None:
        self.output_dir = Path(output_dir)
        self.batch_size = batch_size

    def on_predict_end(self, trainer: Trainer, pl_module: StageModule) -> None:
        datamodule: TaskData = trainer.datamodule
        rows = datamodule.unlabeled_rows() if hasattr(datamodule, "unlabeled_rows") else []
        if not rows:
            return
        probs = pl_module.class_probs(rows, self.batch_size)
        if not trainer.is_global_zero:
            return
        path = self.output_dir / UNLABELED_PROBS_FILE
        task = datamodule.task
        labels = task.label_list or [str(c) for c in range(probs.shape[1])]
        weights = trainer.ckpt_path  # the checkpoint predict loaded (the run's selected one)
        weights = os.path.relpath(weights, self.output_dir) if weights else "the final weights"
        save_unlabeled_probs(path, task.name, str(getattr(datamodule, "split", "")), list(labels),
                             [row.id for row in rows], probs, weights)
        log.info("class probabilities of %d unlabeled rows -> %s", len(rows), path)
