"""Checkpoints written atomically: a run killed while saving leaves the previous file, never half of one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<path>.tmp`` and renames it over ``<path>`` (a rename within a folder is atomic on POSIX)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        target = Path(path)
        partial = target.with_name(target.name + ".tmp")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, target)
