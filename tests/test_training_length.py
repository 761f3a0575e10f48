"""min_updates: the fewest optimizer updates a run makes (lightning_modules/scale/training_length.py), and
fine-tuning's early stopping."""

from __future__ import annotations

import json

import pytest

from omegaconf import OmegaConf

from datamodules.protocol import TaskData
from lightning_modules.scale.training_length import (apply_training_length, epochs_for, epochs_for_classes,
                                                     updates_per_epoch)
from tests.helpers import run_cli


@pytest.mark.parametrize(("rows", "batch", "accumulate", "updates"), [
    (32, 8, 1, 4),     # eprstmt: 4 full batches
    (33, 8, 1, 5),     # a last partial batch is one more update
    (240, 8, 1, 30),   # tnews
    (32, 8, 3, 2),     # 4 batches, accumulated 3 + 1: the last window still steps
    (5, 16, 1, 1),
])
def test_updates_per_epoch(rows, batch, accumulate, updates):
    assert updates_per_epoch(rows, batch, accumulate) == updates


def test_epochs_are_raised_only_where_they_make_too_few_updates():
    assert epochs_for(48, 4, 4) == 12     # 32 rows: 4 epochs are 16 updates
    assert epochs_for(48, 4, 5) == 10     # ceil(48 / 5)
    assert epochs_for(48, 4, 30) == 4     # tnews: 120 updates already
    assert epochs_for(0, 4, 4) == 4


@pytest.mark.parametrize(("rows", "classes", "epochs"), [
    (536, 67, 10),   # csldcp: 8 rows a class, 80 presentations
    (928, 119, 11),  # iflytek: 7.8 rows a class -> 10.3 epochs
    (240, 15, 5),    # tnews: 16 rows a class
    (32, 2, 5),      # eprstmt: min_updates (12 epochs) is the longer rule
    (0, 2, 0),
    (32, 0, 0),      # a multiple-choice task: no classes of its own
])
def test_epochs_that_present_each_class_80_times(rows, classes, epochs):
    assert epochs_for_classes(80, rows, classes) == epochs


class _Task:
    def __init__(self, rows: int, classes: int, kind: str = "classification") -> None:
        self.task = type("Spec", (), {"kind": kind, "num_classes": classes})()
        self.train_rows, self.val_rows, self.batch_size, self.eval_batch_size = [None] * rows, [], 8, 8
        self.stats, self.evaluation_sets, self.predict_rows = {}, (), []

    def texts(self): ...
    def connect(self, collate, collate_mlm=None): ...
    def unlabeled_rows(self): ...
    def set_pseudo_labelled(self, rows): ...


@pytest.mark.parametrize(("rows", "classes", "kind", "max_epochs", "min_steps"), [
    (536, 67, "classification", 10, 670),  # csldcp: the classes' rule raises 4 epochs to 10 (67 updates each)
    (32, 2, "classification", 12, 48),     # eprstmt: min_updates decides (12 epochs of 4 updates)
    (240, 15, "classification", 5, 150),   # tnews: 5 epochs of 30 updates
    (42, 7, "multiple_choice", 8, 48),     # chid: min_updates alone (6 updates an epoch)
])
def test_the_longer_rule_sets_the_epochs(rows, classes, kind, max_epochs, min_steps):
    cfg = OmegaConf.create({"min_updates": 48, "min_class_examples": 80, "trainer": {"max_epochs": 4}})
    data = _Task(rows, classes, kind)
    assert isinstance(data, TaskData)
    apply_training_length(cfg, data)
    assert (cfg.trainer.max_epochs, cfg.trainer.min_steps) == (max_epochs, min_steps)


def _results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_fuzzy_pet_on_32_rows_trains_48_updates_unless_max_epochs_is_typed(tmp_path, shared_fewclue):
    default = run_cli(["stage=fuzzy_pet", f"hydra.run.dir={tmp_path / 'default'}", "logger=none",
                       "trainer.limit_predict_batches=1"], tmp_path)
    assert default.returncode == 0, default.stderr[-2000:]
    printed = default.stdout + default.stderr
    assert "training 12 epochs, not trainer.max_epochs=4: 4 updates an epoch, min_updates=48" in printed
    assert _results(tmp_path / "default")["global_step"] == 48
    saved = (tmp_path / "default" / "config.yaml").read_text()
    assert "max_epochs: 12" in saved and "min_steps: 48" in saved

    typed = run_cli(["stage=fuzzy_pet", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'typed'}", "logger=none",
                     "trainer.limit_predict_batches=1"], tmp_path)
    assert typed.returncode == 0, typed.stderr[-2000:]
    assert _results(tmp_path / "typed")["global_step"] == 8  # 2 epochs of 4 batches, as typed

    classes = run_cli(["stage=fuzzy_pet", "min_updates=0", f"hydra.run.dir={tmp_path / 'classes'}", "logger=none",
                       "trainer.limit_predict_batches=1"], tmp_path)
    assert classes.returncode == 0, classes.stderr[-2000:]
    assert ("training 5 epochs, not trainer.max_epochs=4: 2 classes with 16.0 training rows each on average, "
            "min_class_examples=80 (trainer.max_epochs typed on the command line is kept)") in (
        classes.stdout + classes.stderr)
    assert _results(tmp_path / "classes")["global_step"] == 20  # 80 presentations of 16 rows a class: 5 epochs

    off = run_cli(["stage=fuzzy_pet", "min_updates=0", "min_class_examples=0", f"hydra.run.dir={tmp_path / 'off'}",
                   "logger=none", "trainer.limit_predict_batches=1"], tmp_path)
    assert off.returncode == 0, off.stderr[-2000:]
    assert _results(tmp_path / "off")["global_step"] == 16  # the stage's 4 epochs


def test_finetuning_stops_when_dev_stops_improving_after_min_updates(tmp_path, shared_fewclue):
    done = run_cli(["stage=finetune", "data.batch_size=8", "callbacks.early_stopping.patience=2",
                    f"hydra.run.dir={tmp_path / 'run'}", "trainer.limit_predict_batches=1"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = _results(tmp_path / "run")["global_step"]
    # at least min_updates=48 (12 epochs of 4 batches), and well before the 40 epochs (160 updates) of the cap:
    # a tiny model from scratch stops improving on 32 dev rows within a few epochs
    assert 48 <= steps < 160 and steps % 4 == 0
    rows = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    accs = [float(r.split(",")[header.index("val/acc")]) for r in rows[1:] if r.split(",")[header.index("val/acc")]]
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))  # the first epoch with the best dev accuracy
    assert len(accs) == steps // 4
    assert len(accs) - 1 - best >= 2 or len(accs) == 12  # stopped: 2 evaluations without improving (or at 48 updates)
    results = _results(tmp_path / "run")  # the dev curve (callbacks/dev_curve.py) is the CSV's val/acc column
    assert [point["val/acc"] for point in results["dev_curve"]] == pytest.approx(accs, abs=1e-6)
    assert [point["epoch"] for point in results["dev_curve"]] == list(range(1, len(accs) + 1))
    assert [point["step"] for point in results["dev_curve"]] == list(range(4, steps + 1, 4))
    # fine-tuning tests the weights training ended with (selection: last)
    assert results["selection"] == "last" and results["best_epoch"] == len(accs)
    assert results["val/acc"] == pytest.approx(accs[-1], abs=1e-6)


@pytest.mark.parametrize("value", ["-1", "abc", "1.5"])
@pytest.mark.parametrize("key", ["min_updates", "min_class_examples"])
def test_a_bad_count_is_one_line(tmp_path, shared_fewclue, value, key):
    done = run_cli([f"{key}={value}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {key}={value!r}".replace("'-1'", "-1")
                                                          .replace("'1.5'", "1.5"))
