"""A run folder belongs to one run: a live run holds a lock on it, and a finished run is not overwritten unasked."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from datamodules.errors import ConfigError
from datamodules.runs.results import RESULTS_FILE

LOCK_FILE = ".run.lock"


def claim(output_dir: str | Path, resuming: bool, overwrite: bool) -> IO | None:
    """Lock ``output_dir`` for this process (released when it ends, however it ends) and refuse a folder that a live
    run holds, or a finished run's folder (its results.json) unless ``resuming`` it or ``overwrite`` is set. Ranks
    other than the first share their launcher's folder and claim nothing."""
    if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
        return None
    folder = Path(output_dir)
    if (folder / RESULTS_FILE).is_file() and not (resuming or overwrite):
        raise ConfigError(f"{folder} holds a finished run ({RESULTS_FILE}); give another hydra.run.dir, or "
                          "overwrite=true to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"{folder} is in use by a live run ({holder}); give another hydra.run.dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def release(handle: IO | None) -> None:
    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
