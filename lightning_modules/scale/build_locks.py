"""Locks left behind by a killed C++ extension build, which make every later build wait forever.

DeepSpeed compiles its CPU kernels (``cpu_adam`` for ZeRO-Offload, ``deepspeed_shm_comm`` for CPU
collectives) with ``torch.utils.cpp_extension``. Each build folder is guarded by a ``lock`` file that
the building process creates, keeps open and removes when done (``torch.utils.file_baton``). A process
killed mid-build (Ctrl-C, a scheduler's time limit, a closed session) leaves the file behind, and the next
run spins on it with no message after "Using ... as PyTorch extensions root".

A lock that no running process holds open, and that is older than a build's first minutes, is such a
leftover: it is removed with a warning that names it. Where open files cannot be listed (no ``/proc``,
or another user's processes), only a lock older than an hour counts as left over.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

UNHELD_AGE_S = 300
UNKNOWN_HOLDERS_AGE_S = 3600


def extensions_root() -> Path:
    """The folder torch builds extensions under (``TORCH_EXTENSIONS_DIR`` or its per-user cache)."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def build_locks(root: Path) -> list[Path]:
    """``<root>/<extension>/lock`` (TORCH_EXTENSIONS_DIR) and ``<root>/<python>_<device>/<extension>/lock``."""
    return sorted({*root.glob("*/lock"), *root.glob("*/*/lock")})


def lock_is_held(lock: Path) -> bool | None:
    """Whether a running process has ``lock`` open; ``None`` where that cannot be told."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    target = os.path.realpath(lock)
    unreadable = False
    for fd_dir in proc.glob("[0-9]*/fd"):
        try:
            descriptors = list(fd_dir.iterdir())
        except PermissionError:
            unreadable = True
            continue
        except OSError:  # the process ended while listing
            continue
        for descriptor in descriptors:
            try:
                if os.readlink(descriptor) == target:
                    return True
            except OSError:
                continue
    return None if unreadable else False


def remove_stale_build_locks(root: Path | None = None, now: float | None = None) -> list[Path]:
    """Remove the left-over build locks under ``root``; returns what was removed."""
    root = extensions_root() if root is None else root
    now = time.time() if now is None else now
    removed = []
    for lock in build_locks(root):
        try:
            age = now - lock.stat().st_mtime
        except FileNotFoundError:  # its build just finished
            continue
        held = lock_is_held(lock)
        stale = age > UNKNOWN_HOLDERS_AGE_S if held is None else (not held and age > UNHELD_AGE_S)
        if not stale:
            continue
        try:
            lock.unlink()
        except FileNotFoundError:
            continue
        log.warning("Removed %s, left by a C++ extension build that was killed %.0f minutes ago "
                    "(no running process holds it); the next build goes ahead.", lock, age / 60)
        removed.append(lock)
    return removed
