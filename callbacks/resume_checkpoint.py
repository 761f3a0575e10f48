"""last.ckpt, the full state a run resumes from, written at the end of an epoch at most every ``min_interval_s``.

A resume checkpoint holds the weights, the optimizer's moments, the schedule, the loops and the RNGs (three times
the weights for AdamW): for a few-shot run whose epochs take a few seconds, writing it after every epoch costs more
than the epochs. Written at the end of an epoch once ``min_interval_s`` seconds have passed since the run started
or last wrote it, a run loses at most that much work to a kill, and a run shorter than that writes none (it is
quicker to run again than to resume). ``min_interval_s: 0`` writes it after every epoch.
"""

from __future__ import annotations

import time

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules.errors import ConfigError


class ResumeCheckpoint(ModelCheckpoint):
    def __init__(self, min_interval_s: float, dirpath: str, filename: str, monitor: str | None, save_top_k: int,
                 save_weights_only: bool, enable_version_counter: bool) -> None:
        if isinstance(min_interval_s, bool) or not isinstance(min_interval_s, (int, float)) or min_interval_s < 0:
            raise ConfigError(f"callbacks.last_checkpoint.min_interval_s={min_interval_s!r}; allowed: a number >= 0")
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, save_top_k=save_top_k,
                         save_weights_only=save_weights_only, enable_version_counter=enable_version_counter)
        self.min_interval_s = float(min_interval_s)
        self._written_at = time.monotonic()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._written_at = time.monotonic()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._due():
            self._saving(super().on_train_epoch_end, trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._due():
            self._saving(super().on_validation_end, trainer, pl_module)

    def _due(self) -> bool:
        return time.monotonic() - self._written_at >= self.min_interval_s

    def _saving(self, hook, trainer: Trainer, pl_module: LightningModule) -> None:
        """ModelCheckpoint's own hook (it decides whether this is the moment to save); the clock restarts on a write."""
        before = self._last_global_step_saved
        hook(trainer, pl_module)
        if self._last_global_step_saved != before:
            self._written_at = time.monotonic()
