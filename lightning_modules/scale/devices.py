"""Whether a run computes on a CUDA GPU: one rule for train.py's checks, predict.py's device and the benchmark."""

from __future__ import annotations

import torch

# trainer.accelerator values under which Lightning uses a CUDA GPU when there is one.
GPU_ACCELERATORS = ("auto", "gpu", "cuda")


def on_gpu(accelerator: str = "auto") -> bool:
    """True when a CUDA GPU is there and ``trainer.accelerator`` lets Lightning use it."""
    return torch.cuda.is_available() and str(accelerator) in GPU_ACCELERATORS
