"""iPET's training rows for one generation: the labelled rows plus rows an ensemble of other runs labels.

``PseudoLabels(ensemble, count_per_labelled)`` hands them to the DataModule in ``setup`` (before the
first training dataloader and the learning-rate schedule are built): n = ``count_per_labelled`` ×
the labelled rows, split over classes as the labelled rows are, each class's most confident rows
among those the ensemble predicts as it (a class with fewer such rows gives all it has).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from datamodules.protocol import TaskData
from datamodules.teachers.ensemble import TeacherEnsemble

log = logging.getLogger(__name__)


class PseudoLabels(Callback):
    reads_unlabeled = True

    def __init__(self, ensemble: TeacherEnsemble, count_per_labelled: int) -> None:
        self.ensemble = ensemble
        self.count_per_labelled = count_per_labelled
        self.kept_per_class: list[int] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule: TaskData = trainer.datamodule
        labelled = datamodule.labelled_rows
        unlabeled = datamodule.unlabeled_rows()
        kept, soft = self.ensemble.soft_labels([row.id for row in unlabeled])
        classes = soft.shape[1] if len(kept) else datamodule.task.num_classes
        prior = torch.bincount(torch.tensor([row.label for row in labelled]), minlength=classes).float()
        wanted = (prior / prior.sum() * self.count_per_labelled * len(labelled)).round().long()
        chosen = most_confident_by_class(soft, wanted.tolist())
        rows = [replace(unlabeled[kept[i]], label=c) for i, c in chosen]
        datamodule.set_pseudo_labelled(rows)
        self.kept_per_class = [sum(1 for _, k in chosen if k == c) for c in range(classes)]
        pl_module.results.update(ipet_pseudo_labelled=len(rows), ipet_kept_per_class=self.kept_per_class)
        log.info("iPET: %d labelled + %d pseudo-labelled rows (per class %s)", len(labelled), len(rows), self.kept_per_class)


def most_confident_by_class(probs: torch.Tensor, wanted: list[int]) -> list[tuple[int, int]]:
    """(row, class) pairs: for each class c, the ``wanted[c]`` rows predicted as c with the highest probability
    (a class with fewer such rows gives all it has). iPET's and self-training's one selection rule."""
    confidence, predicted = probs.max(-1) if len(probs) else (torch.empty(0), torch.empty(0, dtype=torch.long))
    chosen = []
    for c, count in enumerate(wanted):
        rows = (predicted == c).nonzero().flatten()
        best = rows[confidence[rows].argsort(descending=True)][:count]
        chosen += [(int(i), c) for i in best]
    return chosen
