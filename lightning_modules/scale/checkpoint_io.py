"""Checkpoints written atomically: a run killed while saving leaves the previous file, never half of one, and a
write that fails leaves no temporary file (``datamodules/runs/writing.py``)."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from datamodules.runs.writing import replaced


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<path>.<pid>.tmp`` and renames it over ``<path>`` (a rename within a folder is atomic on POSIX);
    ``seconds_writing`` adds up the time spent writing (callbacks/phase_times.py reports it)."""

    seconds_writing = 0.0

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        started = time.perf_counter()
        self._write(checkpoint, path, storage_options)
        self.seconds_writing += time.perf_counter() - started

    def _write(self, checkpoint: dict[str, Any], path, storage_options: Any | None) -> None:
        with replaced(path) as partial:  # removed when the write fails (a full disk), which names the checkpoint
            super().save_checkpoint(checkpoint, partial, storage_options)
