"""``selection``: the checkpoint a run tests and predicts with, the best dev evaluation or the last weights."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli

CURVE = "+callbacks.heldout_curve._target_=callbacks.heldout_curve.HeldoutCurve"


def _fuzzy_run(tmp_path, name: str, *overrides: str) -> dict:
    run = tmp_path / name
    done = run_cli(["stage=fuzzy_pet", "min_updates=0", "min_class_examples=0", "trainer.max_epochs=3", CURVE,
                    "logger=none", f"hydra.run.dir={run}", "trainer.limit_predict_batches=1", *overrides], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((run / "results.json").read_text())


def test_last_tests_the_weights_training_ended_with(tmp_path, shared_fewclue):
    results = _fuzzy_run(tmp_path, "last")  # Fuzzy-PET's default
    assert results["selection"] == "last" and results["best_epoch"] == 3
    # the held-out and dev scores of the final evaluation in training are those of the tested checkpoint
    assert results["heldout/acc"] == pytest.approx(results["heldout_curve"][-1]["heldout/acc"], abs=1e-6)
    assert results["val/acc"] == pytest.approx(results["dev_curve"][-1]["val/acc"], abs=1e-6)


def test_last_with_dev_every_other_epoch_tests_and_scores_the_same_weights(tmp_path, shared_fewclue):
    every = _fuzzy_run(tmp_path, "every")
    sparse = _fuzzy_run(tmp_path, "sparse", "trainer.check_val_every_n_epoch=2")  # dev after epoch 2 only
    assert [point["epoch"] for point in sparse["dev_curve"]] == [2]
    assert sparse["best_epoch"] == every["best_epoch"] == 3
    # val/acc measured once on the last weights after training; the same weights as the run evaluated every epoch
    assert sparse["val/acc"] == pytest.approx(every["val/acc"], abs=1e-6)
    assert sparse["heldout/acc"] == pytest.approx(every["heldout/acc"], abs=1e-6)


def test_best_dev_tests_the_best_dev_evaluation(tmp_path, shared_fewclue):
    results = _fuzzy_run(tmp_path, "best", "selection=best_dev")
    dev = [point["val/acc"] for point in results["dev_curve"]]
    assert results["selection"] == "best_dev" and results["best_epoch"] == dev.index(max(dev)) + 1
    assert results["val/acc"] == pytest.approx(max(dev), abs=1e-6)
    point = results["heldout_curve"][results["best_epoch"] - 1]
    assert results["heldout/acc"] == pytest.approx(point["heldout/acc"], abs=1e-6)


@pytest.mark.parametrize(("stage", "selection"), [("fuzzy_pet", "last"), ("finetune", "last"), ("efl", "best_dev"),
                                                  ("distill", "best_dev")])
def test_each_stage_has_its_rule(make_config, stage, selection):
    assert make_config([f"stage={stage}"]).selection == selection
    assert make_config([f"stage={stage}", "selection=best_dev"]).selection == "best_dev"


def test_an_unknown_rule_names_the_allowed_ones(tmp_path, shared_fewclue):
    done = run_cli(["selection=latest", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode != 0
    assert "selection='latest'; allowed: best_dev, last" in done.stderr
