"""Training length in optimizer updates: ``min_updates`` (conf/train.yaml) next to ``trainer.max_epochs``.

A stage's epoch count alone trains a 32-row task (4 batches of 8 an epoch) for a few dozen updates and a 900-row
task for hundreds. A run trains for at least ``min_updates`` updates: ``trainer.max_epochs`` is raised to the
epochs they take, and ``trainer.min_steps`` holds early stopping off until then. A ``trainer.max_epochs`` typed on
the command line is honoured as typed, and a run with ``trainer.max_steps`` set is left as it is (its length is
already counted in updates).
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


def typed_keys() -> set[str]:
    """The keys of this run's command-line overrides (``+``/``++``/``~`` stripped); none outside Hydra."""
    if not HydraConfig.initialized():
        return set()
    return {o.lstrip("+~").split("=", 1)[0] for o in HydraConfig.get().overrides.task}


def apply_min_updates(cfg: DictConfig, datamodule) -> None:
    """Raise ``cfg.trainer.max_epochs`` (and set ``min_steps``) so that the run makes ``cfg.min_updates`` updates."""
    min_updates = cfg.get("min_updates") or 0
    if not isinstance(min_updates, int) or isinstance(min_updates, bool) or min_updates < 0:
        raise ConfigError(f"min_updates={min_updates!r}; allowed: an integer >= 0 (0: trainer.max_epochs alone)")
    trainer = cfg.trainer
    max_epochs = trainer.get("max_epochs")
    if not min_updates or not isinstance(datamodule, TaskData) or (trainer.get("max_steps") or -1) > 0:
        return
    if "trainer.max_epochs" in typed_keys():
        log.info("trainer.max_epochs=%s as given on the command line (min_updates=%d not applied)", max_epochs, min_updates)
        return
    if not max_epochs or max_epochs < 0:
        return  # zero-shot (0) or unbounded (-1): nothing to raise
    per_epoch = updates_per_epoch(len(datamodule.train_rows), datamodule.batch_size,
                                  int(trainer.get("accumulate_grad_batches") or 1))
    epochs = epochs_for(min_updates, max_epochs, per_epoch)
    with open_dict(cfg):
        trainer.min_steps = min_updates
        if epochs > max_epochs:
            trainer.max_epochs = epochs
    if epochs > max_epochs:
        log.info("training %d epochs, not trainer.max_epochs=%d: %d updates an epoch, min_updates=%d",
                 epochs, max_epochs, per_epoch, min_updates)
