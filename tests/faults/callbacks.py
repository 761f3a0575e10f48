"""Callbacks that put a run where a test wants it (``+callbacks.pause={_target_: tests.faults.callbacks.PauseAt,
...}``): held in one phase while a signal is sent, or failing when training is about to start."""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch import Callback


class PauseAt(Callback):
    """Holds the run in ``phase`` (``test`` or ``predict``) for ``seconds``, writing ``marker`` when it gets there."""

    def __init__(self, phase: str, marker: str, seconds: float) -> None:
        self.phase = phase
        self.marker = Path(marker)
        self.seconds = seconds

    def _hold(self, phase: str) -> None:
        if phase == self.phase:
            self.marker.write_text(phase)
            time.sleep(self.seconds)

    def on_test_start(self, trainer, pl_module) -> None:
        self._hold("test")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._hold("predict")


class FailAtTrainStart(Callback):
    """Breaks a run after its loggers, checkpoint and loops are set up, before its first step."""

    def on_train_start(self, trainer, pl_module) -> None:
        raise RuntimeError("boom: simulated failure before the first step")
