"""The weights averaged over the last part of training (stochastic weight averaging, Izmailov et al. 2018).

Lightning's ``WeightAveraging`` keeps an equal-weight running mean of the weights after every optimizer update;
``TailWeightAveraging`` starts it at a fraction ``start`` of the run's updates (``0.5``: the second half), so the
mean leaves out the early weights, far from the end. A few-shot run's last weights depend on the last batches'
order; their mean over the tail of training does much less.

Dev evaluations during training score the mean (once it has begun), and the checkpoint a run tests with holds
it: with ``selection: last`` the weights training ended with are replaced by the mean at the end of training,
with ``best_dev`` the kept checkpoint holds the mean its dev accuracy was measured on. A resume checkpoint keeps
both (Lightning's ``current_model_state`` beside the mean).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from datamodules.errors import ConfigError


class TailWeightAveraging(WeightAveraging):
    def __init__(self, start: float = 0.5) -> None:
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 <= start < 1:
            raise ConfigError(f"callbacks.weight_averaging.start={start!r}; allowed: a fraction of the run's "
                              "updates, 0 <= start < 1 (callbacks.weight_averaging=null: no averaging)")
        super().__init__()
        self.start = float(start)
        self.first_step = 0
        self.sharded = False
        self._swapped = False

    @property
    def averaged(self) -> int:
        """How many updates' weights the mean holds (0 before ``first_step``)."""
        return 0 if self._average_model is None else int(self._average_model.n_averaged)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and getattr(trainer.strategy, "zero_stage", 0) == 3:
            self.sharded = True
            rank_zero_warn("callbacks.weight_averaging is off under ZeRO-3: each rank holds a shard of the "
                           "parameters, which cannot be averaged whole; the run tests the weights it ends with")
            return
        super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.first_step = int(self.start * trainer.estimated_stepping_batches)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return not self.sharded and step_idx is not None and step_idx >= self.first_step

    # Dev evaluations score the mean, and the checkpoint callbacks, which save at the end of the validation or
    # of the epoch (Lightning runs them after every other callback), save what was scored; training goes on
    # with its own weights from the next batch.
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.averaged and not self._swapped and trainer.state.fn == "fit":
            self._swap_models(pl_module)
            self._swapped = True

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pass

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._unswap(pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._unswap(pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._unswap(pl_module)
        if not self.averaged:
            return  # a run shorter than `start` ends with its own weights
        self._copy_average_to_current(pl_module)
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "selection", None) == "last" and callback.best_model_path:
                trainer.save_checkpoint(callback.best_model_path, weights_only=callback.save_weights_only)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self.sharded:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.sharded:
            return
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._swapped and "current_model_state" in checkpoint:
            # saved while the module held the mean: Lightning's two entries are the other way round
            checkpoint["state_dict"], checkpoint["current_model_state"] = (checkpoint["current_model_state"],
                                                                           checkpoint["state_dict"])

    def _unswap(self, pl_module: LightningModule) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

