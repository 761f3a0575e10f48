"""Wall time of each phase of a run, in seconds: what the protocol benchmark tabulates (results.json ``timing``).

Phases: ``train`` (training epochs, without the validations inside them), ``validate`` (every dev evaluation),
``checkpoint`` (writing checkpoint files, measured by the checkpoint I/O plugin where it keeps the count),
``test`` (labelled test and held-out rows) and ``predict`` (test.json). train.py adds the phases before the
Trainer exists (process start and imports, config composition, data reading, model building).
"""

from __future__ import annotations

import time
from collections import defaultdict

from lightning.pytorch import Callback, LightningModule, Trainer


class PhaseTimes(Callback):
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}

    def _start(self, phase: str) -> None:
        self._started[phase] = time.perf_counter()

    def _stop(self, phase: str) -> None:
        started = self._started.pop(phase, None)
        if started is not None:
            self.seconds[phase] += time.perf_counter() - started

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("train")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop("train")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("validate")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop("validate")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("test")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop("test")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("predict")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop("predict")

    def report(self, trainer: Trainer) -> dict[str, float]:
        """Seconds by phase, rounded; validation inside an epoch is counted once, under ``validate``."""
        seconds = dict(self.seconds)
        checkpoint = getattr(trainer.strategy.checkpoint_io, "seconds_writing", None)
        if checkpoint is not None:
            seconds["checkpoint"] = checkpoint
        # Lightning validates inside the training epoch (before on_train_epoch_end); checkpoint callbacks run after.
        if "train" in seconds:
            seconds["train"] = max(0.0, seconds["train"] - seconds.get("validate", 0.0))
        return {phase: round(value, 2) for phase, value in seconds.items()}
