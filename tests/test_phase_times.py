"""callbacks/phase_times.py: seconds by phase, and a resumed run that counts every process, on a hand-set clock."""

from __future__ import annotations

from types import SimpleNamespace

from callbacks import phase_times
from callbacks.phase_times import PhaseTimes


def _trainer(seconds_writing: float) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(checkpoint_io=SimpleNamespace(seconds_writing=seconds_writing)))


def _at(monkeypatch, now: float) -> None:
    monkeypatch.setattr(phase_times.time, "perf_counter", lambda: now)


def test_a_resumed_run_adds_the_seconds_saved_in_its_checkpoint(monkeypatch):
    first, trainer = PhaseTimes(), _trainer(1.5)
    first.setup(trainer, None, "fit")
    for now, hook in [(0, first.on_train_epoch_start), (8, first.on_validation_start), (10, first.on_validation_end),
                      (12, first.on_train_epoch_end), (12, first.on_train_epoch_start)]:
        _at(monkeypatch, now)
        hook(trainer, None)
    _at(monkeypatch, 15)  # last.ckpt written 3 s into the second epoch; the process dies after it
    saved = first.state_dict()
    assert saved == {"seconds": {"train": 15.0, "validate": 2.0, "checkpoint": 1.5}}

    resumed, trainer = PhaseTimes(), _trainer(0.5)
    resumed.load_state_dict(saved)
    resumed.setup(trainer, None, "fit")
    for now, hook in [(100, resumed.on_train_epoch_start), (104, resumed.on_validation_start),
                      (105, resumed.on_validation_end), (110, resumed.on_train_epoch_end),
                      (111, resumed.on_test_start), (113, resumed.on_test_end)]:
        _at(monkeypatch, now)
        hook(trainer, None)
    # train: 15 + 10 seconds of epochs, less the 2 + 1 seconds of validation inside them
    assert resumed.report(trainer) == {"train": 22.0, "validate": 3.0, "test": 2.0, "checkpoint": 2.0}


def test_an_uninterrupted_run_reports_its_own_seconds(monkeypatch):
    times, trainer = PhaseTimes(), _trainer(0.25)
    times.setup(trainer, None, "fit")
    for now, hook in [(0, times.on_train_epoch_start), (3, times.on_validation_start), (4, times.on_validation_end),
                      (6, times.on_train_epoch_end), (7, times.on_predict_start), (7.5, times.on_predict_end)]:
        _at(monkeypatch, now)
        hook(trainer, None)
    assert times.report(trainer) == {"train": 5.0, "validate": 1.0, "predict": 0.5, "checkpoint": 0.25}
