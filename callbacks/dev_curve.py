"""Dev accuracy after each evaluation during training: results.json's ``dev_curve`` and ``best_epoch``, the epoch
of the checkpoint the run tests with (``selection``: the best dev evaluation, or the epoch training ended with,
evaluated on dev or not).

When the best dev evaluation is the run's last, dev accuracy was still
rising when training ended and the run may be too short for the task: one warning line says so and names the
setting. The curve is kept in ``last.ckpt``, so a resumed run reports the evaluations before the interruption too.
"""

from __future__ import annotations

import logging

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)


class DevCurve(Callback):
    def __init__(self, monitor: str, selection: str) -> None:
        self.monitor = monitor
        self.selection = selection
        self.curve: list[dict[str, float | int]] = []

    @property
    def state_key(self) -> str:
        return f"DevCurve[{self.monitor}]"

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        self.curve.append({"epoch": trainer.current_epoch + 1, "step": trainer.global_step,
                           self.monitor: round(float(value), 6)})

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.selection == "last":
            # the epoch training ended with, whether or not dev was evaluated there (trainer.check_val_every_n_epoch)
            pl_module.results.update({"best_epoch": trainer.current_epoch, "selection": self.selection})
        if not self.curve:
            return
        best = self.best_index()
        pl_module.results.update({"dev_curve": list(self.curve), "selection": self.selection})
        if self.selection != "last":
            pl_module.results["best_epoch"] = self.curve[best]["epoch"]
        if len(self.curve) > 1 and best == len(self.curve) - 1 and trainer.is_global_zero:
            last = self.curve[-1]
            log.warning("%s was highest at the last evaluation (epoch %d, %.4f, up from %.4f before it): dev accuracy "
                        "was still rising when training ended; a longer run (trainer.max_epochs) may score higher",
                        self.monitor, last["epoch"], last[self.monitor], self.curve[-2][self.monitor])

    def best_index(self) -> int:
        """The first evaluation with the highest score: the one ModelCheckpoint(mode=max) keeps."""
        scores = [point[self.monitor] for point in self.curve]
        return scores.index(max(scores))

    def state_dict(self) -> dict:
        return {"curve": list(self.curve)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.curve = list(state_dict.get("curve", []))
