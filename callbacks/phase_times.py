"""Wall time of each phase of a run, in seconds: what the protocol benchmark tabulates (results.json ``timing``).

Phases: ``train`` (training epochs, without the validations inside them), ``validate`` (every dev evaluation),
``checkpoint`` (writing checkpoint files, measured by the checkpoint I/O plugin where it keeps the count),
``test`` (labelled test and held-out rows) and ``predict`` (test.json). train.py adds the phases before the
Trainer exists (process start and imports, config composition, data reading, model building).

A resumed run counts the whole run: the seconds up to each save travel in last.ckpt, and the process that resumes
adds its own (the time between the last save and an interruption is work done again, counted once).
"""

from __future__ import annotations

import time
from collections import defaultdict

from lightning.pytorch import Callback, LightningModule, Trainer


class PhaseTimes(Callback):
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}
        self._earlier: dict[str, float] = {}  # the processes before a resume, from last.ckpt
        self._checkpoint_io = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._checkpoint_io = trainer.strategy.checkpoint_io

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

    def _totals(self) -> dict[str, float]:
        """Seconds by phase over the whole run so far, phases still running included."""
        now = time.perf_counter()
        totals = dict(self._earlier)
        for phase in set(self.seconds) | set(self._started):
            running = now - self._started[phase] if phase in self._started else 0.0
            totals[phase] = totals.get(phase, 0.0) + self.seconds.get(phase, 0.0) + running
        writing = getattr(self._checkpoint_io, "seconds_writing", None)
        if writing is not None:
            totals["checkpoint"] = self._earlier.get("checkpoint", 0.0) + writing
        return totals

    def state_dict(self) -> dict:
        return {"seconds": self._totals()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._earlier = {phase: float(value) for phase, value in state_dict.get("seconds", {}).items()}

    def report(self, trainer: Trainer) -> dict[str, float]:
        """Seconds by phase, rounded; validation inside an epoch is counted once, under ``validate``."""
        seconds = self._totals()
        # Lightning validates inside the training epoch (before on_train_epoch_end); checkpoint callbacks run after.
        if "train" in seconds:
            seconds["train"] = max(0.0, seconds["train"] - seconds.get("validate", 0.0))
        return {phase: round(value, 2) for phase, value in seconds.items()}
