"""TailWeightAveraging: the tested weights are the mean over the run's last updates, computed by hand."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from callbacks.resume_checkpoint import ResumeCheckpoint
from callbacks.selected_checkpoint import SelectedCheckpoint
from callbacks.weight_averaging import TailWeightAveraging
from datamodules.errors import ConfigError

STEPS = [1.0, 2.0, 3.0, 4.0]  # one row per batch; SGD lr 1 on loss w * c moves w by -c
# w after each update: -1 -3 -6 -10 | -11 -13 -16 -20 | -21 -23 -26 -30


class OneWeight(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.trained_on: list[float] = []
        self.validated_on: list[float] = []

    def training_step(self, batch, batch_idx):
        self.trained_on.append(float(self.w))
        return self.w * batch.sum()

    def validation_step(self, batch, batch_idx):
        self.validated_on.append(float(self.w))
        self.log("val/acc", -self.w)  # the more negative w, the "better"

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)

    def train_dataloader(self):
        return DataLoader(torch.tensor(STEPS), batch_size=1)

    def val_dataloader(self):
        return DataLoader(torch.tensor([0.0]), batch_size=1)


def fit(tmp_path, selection: str, start: float = 0.5) -> tuple[OneWeight, SelectedCheckpoint, Trainer]:
    selected = SelectedCheckpoint(selection=selection, dirpath=str(tmp_path), filename="best", monitor="val/acc",
                                  mode="max", save_top_k=1, save_weights_only=True, enable_version_counter=False)
    resume = ResumeCheckpoint(min_interval_s=0, dirpath=str(tmp_path), filename="last", monitor=None, save_top_k=1,
                              save_weights_only=False, enable_version_counter=False)
    module = OneWeight()
    trainer = Trainer(max_epochs=2, callbacks=[TailWeightAveraging(start=start), selected, resume],
                      logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=tmp_path)
    trainer.fit(module)
    return module, selected, trainer


def saved_weight(path, key="state_dict") -> float:
    return float(torch.load(path, weights_only=False)[key]["w"])


def test_selection_last_tests_the_mean_of_the_second_half(tmp_path):
    module, selected, _ = fit(tmp_path, "last")
    # training itself ran on its own weights throughout, the mean did not leak into it
    assert module.trained_on == [0, -1, -3, -6, -10, -11, -13, -16]
    # epoch 1's evaluation came before any averaging (own weights), epoch 2's scored the mean of updates 5-8
    mean = (-11 - 13 - 16 - 20) / 4
    assert module.validated_on == [-10, mean]
    assert float(module.w) == mean
    assert saved_weight(selected.best_model_path) == mean


def test_best_dev_keeps_the_mean_its_dev_accuracy_was_measured_on(tmp_path):
    _, selected, _ = fit(tmp_path, "best_dev")
    assert saved_weight(selected.best_model_path) == -15.0
    # the resume checkpoint, written while the module held the mean, keeps both the right way round
    assert saved_weight(tmp_path / "last.ckpt") == -15.0
    assert saved_weight(tmp_path / "last.ckpt", "current_model_state") == -20.0


def test_start_zero_averages_every_update(tmp_path):
    module, _, _ = fit(tmp_path, "last", start=0.0)
    assert float(module.w) == pytest.approx((-1 - 3 - 6 - 10 - 11 - 13 - 16 - 20) / 8)


@pytest.mark.parametrize("start", [1.0, -0.1, "half", True])
def test_a_start_outside_the_run_names_the_key(start):
    with pytest.raises(ConfigError, match="callbacks.weight_averaging.start"):
        TailWeightAveraging(start=start)


class StopAfterSecondEpoch(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = trainer.current_epoch == 1


def test_a_resumed_run_ends_with_the_mean_of_an_uninterrupted_one(tmp_path):
    def trainer(folder, *extra):
        resume = ResumeCheckpoint(min_interval_s=0, dirpath=str(folder), filename="last", monitor=None,
                                  save_top_k=1, save_weights_only=False, enable_version_counter=False)
        return Trainer(max_epochs=3, callbacks=[TailWeightAveraging(start=0.5), resume, *extra], logger=False,
                       enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                       default_root_dir=folder)

    whole = OneWeight()
    trainer(tmp_path / "whole").fit(whole)
    trainer(tmp_path / "cut", StopAfterSecondEpoch()).fit(OneWeight())
    resumed = OneWeight()
    trainer(tmp_path / "cut").fit(resumed, ckpt_path=tmp_path / "cut" / "last.ckpt")
    # updates 7-12 averaged (the second half of 12)
    assert float(whole.w) == pytest.approx((-16 - 20 - 21 - 23 - 26 - 30) / 6)
    assert resumed.trained_on == [-20, -21, -23, -26] and float(resumed.w) == float(whole.w)
