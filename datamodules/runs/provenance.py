"""Where a number came from: the trainer's commit and the machine, written into every results.json (``commit``,
``machine``) and into the tables of benchmarks/ and scripts/, so a result can be traced after its run folder is gone.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

import torch

SOURCE_ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def source_commit() -> str | None:
    """The trainer's git commit (short), ``+changes`` when tracked files differ from it; None outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=SOURCE_ROOT, capture_output=True,
                              text=True, timeout=30)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=SOURCE_ROOT,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):  # no git on the machine
        return None
    return head.stdout.strip() + ("+changes" if dirty else "")


@functools.cache
def machine() -> str:
    """The processor model and core count, and the GPU when one is used: ``AMD EPYC, 2 cores``."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{model}, {os.cpu_count()} cores{gpu}"
