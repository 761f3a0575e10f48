"""Every random number generator's state in the checkpoint, so that a resumed run draws what the
uninterrupted one would have drawn (shuffling, dropout, masking).

Lightning checkpoints carry weights, optimizer, scheduler and loop counters but not the global RNGs;
this callback adds them (torch CPU and CUDA, numpy, Python's ``random``) to its own state, which Lightning
saves in every checkpoint; a resumed run sets them before the fit loop starts.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch import Callback


class RngState(Callback):
    def __init__(self) -> None:
        self.restored: dict | None = None
        self.fit_started = False

    def state_dict(self) -> dict:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        # Plain types and tensors only, so that the checkpoint loads with torch.load(weights_only=True).
        numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)]
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    # The states are set after the strategy's setup (DeepSpeed's engine may seed) and before the fit loop
    # builds its first data iterator: in on_fit_start, or at the restore when the strategy restores after
    # on_fit_start (DeepSpeed does).
    def load_state_dict(self, state_dict: dict) -> None:
        self.restored = state_dict
        if self.fit_started:
            self._apply()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_started = True
        if self.restored is not None:
            self._apply()

    def _apply(self) -> None:
        state, self.restored = self.restored, None
        torch.set_rng_state(state["torch"])
        kind, keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
