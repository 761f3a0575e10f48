"""Training length beside ``trainer.max_epochs``: ``min_updates`` and ``min_class_examples`` (conf/train.yaml).

A stage's epoch count alone trains a 32-row task (4 batches of 8 an epoch) for a few dozen updates and a 900-row
task for hundreds. A run trains for at least ``min_updates`` updates, and long enough that each class's training
rows are presented ``min_class_examples`` times in all (epochs x the training rows per class, on average): a task
with many classes and few rows each (csldcp: 67 classes, 8 rows each) needs more epochs than one with 16 rows a
class. ``trainer.max_epochs`` is raised to the epochs these take, and ``trainer.min_steps`` holds early stopping
off until then. A ``trainer.max_epochs`` typed on the command line is honoured as typed, and a run with
``trainer.max_steps`` set is left as it is (its length is already counted in updates). Multiple-choice tasks (chid)
have no classes of their own: only ``min_updates`` applies to them.
"""

from __future__ import annotations

import logging
import math

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from datamodules.errors import ConfigError
from datamodules.protocol import TaskData

log = logging.getLogger(__name__)


def updates_per_epoch(train_rows: int, batch_size: int, accumulate: int) -> int:
    """Optimizer updates in one epoch (the last, partial batch and accumulation window still make one)."""
    return max(1, math.ceil(math.ceil(train_rows / batch_size) / accumulate))


def epochs_for(min_updates: int, max_epochs: int, per_epoch: int) -> int:
    """``max_epochs``, or more where they make fewer than ``min_updates`` updates."""
    return max(max_epochs, math.ceil(min_updates / per_epoch))


def epochs_for_classes(min_class_examples: int, train_rows: int, classes: int) -> int:
    """The epochs that present each class's rows ``min_class_examples`` times (0 without rows or classes)."""
    if not train_rows or not classes:
        return 0
    return math.ceil(min_class_examples * classes / train_rows)


def typed_keys() -> set[str]:
    """The keys of this run's command-line overrides (``+``/``++``/``~`` stripped); none outside Hydra."""
    if not HydraConfig.initialized():
        return set()
    return {o.lstrip("+~").split("=", 1)[0] for o in HydraConfig.get().overrides.task}


def _count(cfg: DictConfig, key: str) -> int:
    value = cfg.get(key) or 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{key}={value!r}; allowed: an integer >= 0 (0: trainer.max_epochs alone)")
    return value


def task_classes(datamodule) -> int:
    """The classes a task's label words or head learn; 0 for a multiple-choice task (the class is a position)."""
    task = datamodule.task
    return 0 if task.kind == "multiple_choice" else task.num_classes


def apply_training_length(cfg: DictConfig, datamodule) -> None:
    """Raise ``cfg.trainer.max_epochs`` (and set ``min_steps``) so that the run makes ``cfg.min_updates`` updates and
    presents each class's rows ``cfg.min_class_examples`` times."""
    min_updates, min_class_examples = _count(cfg, "min_updates"), _count(cfg, "min_class_examples")
    trainer = cfg.trainer
    max_epochs = trainer.get("max_epochs")
    if not (min_updates or min_class_examples) or not isinstance(datamodule, TaskData) or (
            trainer.get("max_steps") or -1) > 0:
        return
    if "trainer.max_epochs" in typed_keys():
        log.info("trainer.max_epochs=%s as given on the command line (min_updates=%d, min_class_examples=%d not "
                 "applied)", max_epochs, min_updates, min_class_examples)
        return
    if not max_epochs or max_epochs < 0:
        return  # zero-shot (0) or unbounded (-1): nothing to raise
    rows, classes = len(datamodule.train_rows), task_classes(datamodule)
    per_epoch = updates_per_epoch(rows, datamodule.batch_size, int(trainer.get("accumulate_grad_batches") or 1))
    by_updates = epochs_for(min_updates, max_epochs, per_epoch)
    by_classes = epochs_for_classes(min_class_examples, rows, classes)
    epochs = max(by_updates, by_classes)
    with open_dict(cfg):
        trainer.min_steps = max(min_updates, by_classes * per_epoch)
        if epochs > max_epochs:
            trainer.max_epochs = epochs
    if epochs <= max_epochs:
        return
    if by_classes >= by_updates:
        why = (f"{classes} classes with {rows / classes:.1f} training rows each on average, "
               f"min_class_examples={min_class_examples}")
    else:
        why = f"{per_epoch} updates an epoch, min_updates={min_updates}"
    log.info("training %d epochs, not trainer.max_epochs=%d: %s (trainer.max_epochs typed on the command line is "
             "kept)", epochs, max_epochs, why)
