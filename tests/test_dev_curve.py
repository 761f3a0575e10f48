"""The dev curve (callbacks/dev_curve.py): one point per evaluation in training, the best epoch, and one warning when
the last evaluation is the best."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from callbacks import dev_curve
from callbacks.dev_curve import DevCurve


def _evaluate(callback: DevCurve, trainer: SimpleNamespace, epoch: int, acc: float) -> None:
    trainer.current_epoch, trainer.global_step = epoch, (epoch + 1) * 30
    trainer.callback_metrics = {"val/acc": acc}
    callback.on_validation_end(trainer, None)


def _trainer() -> SimpleNamespace:
    return SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="fit"), is_global_zero=True,
                           current_epoch=0, global_step=0, callback_metrics={})


def _fit(scores: list[float], caplog) -> tuple[dict, list[str]]:
    callback, trainer, module = DevCurve("val/acc", "best_dev"), _trainer(), SimpleNamespace(results={})
    trainer.sanity_checking = True  # Lightning's sanity check runs the validation loop too: not a point
    _evaluate(callback, trainer, 0, 0.9)
    trainer.sanity_checking = False
    for epoch, acc in enumerate(scores):
        _evaluate(callback, trainer, epoch, acc)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=dev_curve.__name__):
        callback.on_fit_end(trainer, module)
    return module.results, [r.getMessage() for r in caplog.records]


def test_the_curve_and_the_best_epoch_go_to_results(caplog):
    results, warnings = _fit([0.25, 0.5, 0.375, 0.5], caplog)
    assert results["dev_curve"] == [
        {"epoch": 1, "step": 30, "val/acc": 0.25}, {"epoch": 2, "step": 60, "val/acc": 0.5},
        {"epoch": 3, "step": 90, "val/acc": 0.375}, {"epoch": 4, "step": 120, "val/acc": 0.5}]
    assert results["best_epoch"] == 2  # the first of equal scores: the checkpoint ModelCheckpoint(mode=max) keeps
    assert warnings == []


def test_a_run_whose_last_evaluation_is_its_best_is_said_once(caplog):
    results, warnings = _fit([0.1, 0.2, 0.25, 0.3125], caplog)
    assert results["best_epoch"] == 4
    assert warnings == ["val/acc was highest at the last evaluation (epoch 4, 0.3125, up from 0.2500 before it): dev "
                        "accuracy was still rising when training ended; a longer run (trainer.max_epochs) may score "
                        "higher"]
    assert _fit([0.5], caplog)[1] == []  # one evaluation: nothing to compare


def test_evaluations_outside_fit_are_not_points_and_a_resume_keeps_the_curve():
    callback, trainer = DevCurve("val/acc", "best_dev"), _trainer()
    _evaluate(callback, trainer, 0, 0.5)
    trainer.state.fn = "validate"  # trainer.validate(), e.g. measuring what a run left without a selected checkpoint
    _evaluate(callback, trainer, 0, 0.75)
    assert [point["val/acc"] for point in callback.curve] == [0.5]
    resumed = DevCurve("val/acc", "best_dev")
    resumed.load_state_dict(callback.state_dict())
    assert resumed.curve == callback.curve and resumed.state_key == "DevCurve[val/acc]"


def test_selection_last_reports_the_epoch_training_ended_with_evaluated_or_not():
    callback, trainer, module = DevCurve("val/acc", "last"), _trainer(), SimpleNamespace(results={})
    for epoch, acc in ((4, 0.5), (9, 0.75)):  # trainer.check_val_every_n_epoch=5 over 12 epochs: epochs 5 and 10
        _evaluate(callback, trainer, epoch, acc)
    trainer.current_epoch = 12  # Lightning's count of completed epochs once fit has ended
    callback.on_fit_end(trainer, module)
    assert module.results["best_epoch"] == 12 and module.results["selection"] == "last"
    assert [point["epoch"] for point in module.results["dev_curve"]] == [5, 10]

    unevaluated = SimpleNamespace(results={})
    DevCurve("val/acc", "last").on_fit_end(trainer, unevaluated)  # dev never evaluated in training
    assert unevaluated.results == {"best_epoch": 12, "selection": "last"}
