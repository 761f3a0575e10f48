"""Watches fp16 dynamic loss scaling: logs the scale and counts the optimizer steps skipped on overflow.

With ``precision=16-mixed`` a step whose gradients hold inf/NaN is skipped and the scale halves
(torch's ``GradScaler`` under Lightning's MixedPrecision; DeepSpeed's own loss scaler under ZeRO).
This callback logs ``train/loss_scale`` and ``train/skipped_steps`` (cumulative); on other precisions
it does nothing.
"""

from __future__ import annotations

from lightning.pytorch import Callback


class LossScaleMonitor(Callback):
    def __init__(self) -> None:
        self.skipped_steps = 0
        self._scale_before: float | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._scale_before = _scale(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        engine = trainer.model
        if hasattr(engine, "skipped_steps") and _scale(trainer) is not None:  # DeepSpeed counts them itself
            self.skipped_steps = int(engine.skipped_steps)
        elif self._scale_before is not None and _scale(trainer) < self._scale_before:
            self.skipped_steps += 1  # GradScaler halves the scale exactly when it skips a step
        self._scale_before = None
        scale = _scale(trainer)
        if scale is not None:
            pl_module.log("train/loss_scale", float(scale), on_step=True)
            pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=True)

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped_steps = int(state_dict["skipped_steps"])


def _scale(trainer) -> float | None:
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is not None and scaler.is_enabled():
        return float(scaler.get_scale())
    optimizer = getattr(trainer.model, "optimizer", None)
    scale = getattr(optimizer, "loss_scale", None) if getattr(trainer.model, "fp16_enabled", lambda: False)() else None
    return float(scale) if scale is not None else None
