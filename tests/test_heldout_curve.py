"""The held-out curve (callbacks/heldout_curve.py): held-out accuracy after each dev evaluation, counted over the
labelled rows only, and, at the selected epoch, the same number as the run's ``heldout/acc``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from callbacks.heldout_curve import HeldoutCurve
from lightning_modules.knowledge.masking import IGNORE
from lightning_modules.stages.base import StepOutput
from tests.helpers import run_cli


class _Scripted:
    """A module whose step returns given log-probabilities and a per-batch metric."""

    device = torch.device("cpu")

    def __init__(self, outputs: list[StepOutput]) -> None:
        self.outputs = iter(outputs)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch

    def step(self, batch):
        return next(self.outputs)


def test_accuracy_counts_labelled_rows_and_weights_batch_metrics_by_them():
    first = StepOutput({}, torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])),
                       targets=torch.tensor([0, 0, IGNORE]), metrics={"acc_v1": torch.tensor(0.5)})
    second = StepOutput({}, torch.log(torch.tensor([[0.3, 0.7]])), targets=torch.tensor([1]),
                        metrics={"acc_v1": torch.tensor(1.0), "kg/gate_mean": torch.tensor(0.3)})
    scores = HeldoutCurve.score(_Scripted([first, second]), [None, None])
    # right on rows 1 and 4, wrong on row 2, row 3 unlabelled: 2 of 3; acc_v1 = (0.5 * 2 + 1.0 * 1) / 3
    assert scores == {"heldout/acc": pytest.approx(2 / 3, abs=1e-6), "heldout/acc_v1": pytest.approx(2 / 3, abs=1e-6)}


def test_evaluations_outside_fit_or_without_heldout_rows_are_not_points():
    callback = HeldoutCurve()
    trainer = SimpleNamespace(sanity_checking=True, state=SimpleNamespace(fn="fit"),
                              datamodule=SimpleNamespace(evaluation_sets=("heldout",)))
    callback.on_validation_epoch_end(trainer, None)
    trainer.sanity_checking, trainer.state.fn = False, "validate"
    callback.on_validation_epoch_end(trainer, None)
    trainer.state.fn, trainer.datamodule.evaluation_sets = "fit", ("test",)
    callback.on_validation_epoch_end(trainer, None)
    assert callback.curve == []
    resumed = HeldoutCurve()
    resumed.load_state_dict({"curve": [{"epoch": 1, "step": 4, "heldout/acc": 0.5}]})
    assert resumed.state_dict()["curve"] == [{"epoch": 1, "step": 4, "heldout/acc": 0.5}]


def test_the_selected_epochs_point_is_the_runs_heldout_accuracy(tmp_path, shared_fewclue):
    run = tmp_path / "run"
    done = run_cli(["stage=fuzzy_pet", "min_updates=0", "min_class_examples=0", "trainer.max_epochs=3",
                    "+callbacks.heldout_curve._target_=callbacks.heldout_curve.HeldoutCurve", "logger=none",
                    f"hydra.run.dir={run}", "trainer.limit_predict_batches=1"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((run / "results.json").read_text())
    curve = results["heldout_curve"]
    assert [(p["epoch"], p["step"]) for p in curve] == [(p["epoch"], p["step"]) for p in results["dev_curve"]]
    assert [p["epoch"] for p in curve] == [1, 2, 3]
    selected = curve[results["best_epoch"] - 1]
    assert selected["heldout/acc"] == pytest.approx(results["heldout/acc"], abs=1e-6)
    for name in results["verbalizer_sets"]:  # each set's own accuracy, as heldout/acc_<set> after training
        assert selected[f"heldout/acc_{name}"] == pytest.approx(results[f"heldout/acc_{name}"], abs=1e-6)
