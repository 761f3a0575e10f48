"""One warning line before a long first epoch: how many rows one epoch trains on and how to sample.

A user's own files may hold thousands of rows, and a first try (``data=files`` without ``data.shots``) then
spends its first epoch, often many minutes, before it shows a dev accuracy. ``LongEpochWarning`` says so once:
when training starts, if one epoch trains on more than ``max_rows`` rows; else, after the first ``timed_steps``
steps, if the epoch at that pace takes more than ``max_minutes``. The line names the rows (and dev rows) and
what samples them: ``data.shots=16 data.dev_shots=16`` for one's own files, ``trainer.limit_train_batches=N``
otherwise. It changes nothing about the run.
"""

from __future__ import annotations

import logging
import time

from lightning.pytorch import Callback, LightningModule, Trainer

from datamodules.protocol import TaskData
from datamodules.tasks.files import FilesDataModule

log = logging.getLogger(__name__)

# What the hint proposes for one's own files: k rows per class of train and dev.
SAMPLE_SHOTS = 16


class LongEpochWarning(Callback):
    def __init__(self, max_rows: int, max_minutes: float, timed_steps: int) -> None:
        self.max_rows = max_rows
        self.max_minutes = max_minutes
        self.timed_steps = timed_steps
        self.warned = False
        self._started: float | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.warned, self._started = False, None
        rows = epoch_rows(trainer)
        if rows is not None and rows > self.max_rows:
            self._warn(trainer, f"one epoch trains on {rows:,} rows (more than {self.max_rows:,})")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.warned or trainer.current_epoch > 0:
            return
        if batch_idx == 0:  # the first step pays for warm-up: time the ones after it
            self._started = time.perf_counter()
            return
        if batch_idx != self.timed_steps or self._started is None:
            return
        per_step = (time.perf_counter() - self._started) / self.timed_steps
        batches = trainer.num_training_batches
        minutes = per_step * batches / 60 if batches != float("inf") else 0.0
        if minutes > self.max_minutes:
            rows = epoch_rows(trainer)
            trained = f"{rows:,} rows" if rows is not None else f"{int(batches):,} batches"
            self._warn(trainer, f"one epoch ({trained}) takes about {minutes:.0f} minutes at the first steps' pace")

    def _warn(self, trainer: Trainer, what: str) -> None:
        self.warned = True
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        dev = len(datamodule.val_rows) if isinstance(datamodule, TaskData) else None
        validated = f", and every epoch ends scoring {dev:,} dev rows" if dev else ""
        log.warning("long first epoch: %s%s; %s", what, validated, sample_hint(datamodule))


def epoch_rows(trainer: Trainer) -> int | None:
    """The labelled rows one training epoch goes through (all ranks together), or None when unknown."""
    datamodule = trainer.datamodule
    if not isinstance(datamodule, TaskData):
        return None
    rows = len(datamodule.train_rows)
    batches = trainer.num_training_batches
    if batches != float("inf"):
        rows = min(rows, int(batches) * datamodule.batch_size * trainer.world_size)  # trainer.limit_train_batches
    return rows


def sample_hint(datamodule) -> str:
    """How to try settings on fewer rows first."""
    if isinstance(datamodule, FilesDataModule) and datamodule.shots is None:
        return (f"to try settings on a sample first: data.shots={SAMPLE_SHOTS} data.dev_shots={SAMPLE_SHOTS} "
                f"({SAMPLE_SHOTS} rows per class drawn from your files; data.sample_seed=0,1,2 for three draws)")
    if isinstance(datamodule, FilesDataModule):
        return "a smaller data.shots trains on fewer rows per class"
    return "trainer.limit_train_batches=N trains on N batches per epoch"
