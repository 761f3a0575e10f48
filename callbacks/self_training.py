"""Self-training: pseudo-label unlabeled.json with the current model and keep training on it.

Every ``epochs_per_round`` epochs (``rounds`` times) the callback scores the task's unlabeled rows
with the module's ``class_log_probs`` and keeps, for each class, its most confident rows among those predicted
as it with at least ``threshold`` probability, at most ``per_class`` of them (``select_balanced``), and
hands them to the DataModule (``set_pseudo_labelled``), which trains on the labelled rows plus
these. ``stage=fuzzy_pet`` sets ``trainer.reload_dataloaders_every_n_epochs=1`` so the new rows
are used, and the module restarts its learning-rate schedule over the remaining epochs.
The unlabeled rows are ``data.max_unlabeled`` rows of unlabeled.json.
Logged: ``self_training/kept`` and ``self_training/confidence`` (mean probability of the kept rows).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import torch
from lightning.pytorch import Callback, Trainer

from callbacks.pseudo_labels import most_confident_by_class
from datamodules.protocol import TaskData
from datamodules.errors import ConfigError
from lightning_modules.stages.base import StageModule

log = logging.getLogger(__name__)


class SelfTraining(Callback):
    def __init__(self, rounds: int, epochs_per_round: int, threshold: float, per_class: int, batch_size: int) -> None:
        if rounds < 0 or epochs_per_round < 1:
            raise ConfigError(f"callbacks.self_training.rounds={rounds}, epochs_per_round={epochs_per_round}; "
                              "need rounds >= 0, epochs_per_round >= 1")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"callbacks.self_training.threshold={threshold}; allowed: 0..1")
        self.rounds = rounds
        self.epochs_per_round = epochs_per_round
        self.threshold = threshold
        self.per_class = per_class
        self.batch_size = batch_size
        self.unlabeled: list = []
        self.history: list[dict] = []

    @property
    def reads_unlabeled(self) -> bool:
        """train.py reads and validates the unlabeled rows before training when this is true."""
        return self.rounds > 0

    def on_fit_start(self, trainer: Trainer, pl_module: StageModule) -> None:
        if self.rounds == 0:
            return
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ConfigError(
                f"callbacks.self_training.rounds={self.rounds} needs trainer.reload_dataloaders_every_n_epochs=1 (the training "
                f"rows change between epochs); it is {trainer.reload_dataloaders_every_n_epochs}"
            )
        datamodule: TaskData = trainer.datamodule
        self.unlabeled = datamodule.unlabeled_rows()  # capped by data.max_unlabeled
        if not self.unlabeled:
            name = datamodule.task.name
            log.warning("task %s has no unlabeled data; self-training skipped", name)
            print(f"task {name} has no unlabeled data; self-training skipped")
            self._record(pl_module, {"skipped": "no unlabeled data"})
            return
        needed = self.rounds * self.epochs_per_round + 1  # each round is followed by an epoch on its pseudo-labels
        if trainer.max_epochs not in (None, -1) and trainer.max_epochs < needed:
            raise ConfigError(
                f"callbacks.self_training.rounds={self.rounds} with epochs_per_round={self.epochs_per_round} needs "
                f"trainer.max_epochs >= {needed} (an epoch after the last round); this run trains {trainer.max_epochs}"
            )
        log.info("self-training: %d rounds over %d unlabeled rows", self.rounds, len(self.unlabeled))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: StageModule) -> None:
        done = len([h for h in self.history if "round" in h])
        if not self.unlabeled or done >= self.rounds or (trainer.current_epoch + 1) % self.epochs_per_round:
            return
        if trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs:
            return  # no epoch left to train on new pseudo-labels
        probs = pl_module.class_probs(self.unlabeled, self.batch_size)
        kept, confidence = select_balanced(probs, self.threshold, self.per_class)
        datamodule: TaskData = trainer.datamodule
        if not kept:
            log.warning("self-training round %d: no prediction has confidence >= %.2f; no pseudo-label kept",
                        done + 1, self.threshold)
        datamodule.set_pseudo_labelled([replace(self.unlabeled[i], label=c) for i, c in kept])
        pl_module.restart_schedule(remaining_steps(trainer, len(datamodule.train_rows), datamodule.batch_size))
        mean_confidence = float(confidence.mean()) if len(kept) else 0.0
        labels = datamodule.task.label_list or [str(c) for c in range(probs.shape[1])]
        per_class = {labels[c]: sum(1 for _, k in kept if k == c) for c in range(probs.shape[1])}
        pl_module.log("self_training/kept", float(len(kept)))
        pl_module.log("self_training/confidence", mean_confidence)
        entry = {"round": done + 1, "epoch": trainer.current_epoch, "scored": len(self.unlabeled), "kept": len(kept),
                 "kept_per_class": per_class, "confidence": round(mean_confidence, 4)}
        log.info("self-training round %d: kept %d of %d unlabeled rows (per class %s; mean confidence %.3f)",
                 done + 1, len(kept), len(self.unlabeled), per_class, mean_confidence)
        self._record(pl_module, entry)

    def _record(self, pl_module: StageModule, entry: dict) -> None:
        self.history.append(entry)
        pl_module.results["self_training"] = list(self.history)


def select_balanced(probs: torch.Tensor, threshold: float, per_class: int) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """(row, class) pairs: for each class, its most confident rows among those predicted as it with a probability
    of at least ``threshold``, at most ``per_class`` (the cap keeps a frequent class from flooding the training
    rows; a row below the threshold is never kept, whatever its class). Also their confidences."""
    confidence, _ = probs.max(-1)
    sure = (confidence >= threshold).nonzero().flatten()
    kept = [(int(sure[i]), c) for i, c in most_confident_by_class(probs[sure], [per_class] * probs.shape[1])]
    values = torch.tensor([float(confidence[i]) for i, _ in kept])
    return kept, values


def remaining_steps(trainer: Trainer, rows: int, batch_size: int) -> int:
    """Optimizer steps left after this epoch with ``rows`` training rows: batches per epoch over all ranks,
    capped by ``limit_train_batches``, divided by the accumulation; or what ``max_steps`` leaves."""
    batches = math.ceil(rows / (batch_size * max(1, trainer.world_size)))
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        batches = min(batches, limit)
    elif limit is not None:
        batches = max(1, int(batches * limit))
    per_epoch = math.ceil(batches / max(1, trainer.accumulate_grad_batches))
    epochs_left = trainer.max_epochs - trainer.current_epoch - 1 if trainer.max_epochs not in (None, -1) else None
    by_epochs = per_epoch * epochs_left if epochs_left is not None else None
    by_steps = trainer.max_steps - trainer.global_step if trainer.max_steps not in (None, -1) else None
    left = [n for n in (by_epochs, by_steps) if n is not None]
    return max(1, min(left)) if left else max(1, per_epoch)
