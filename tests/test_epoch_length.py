"""One warning line before a long first epoch (callbacks/epoch_length.py): the rows it trains on and how to sample."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from callbacks import epoch_length
from callbacks.epoch_length import LongEpochWarning
from tests.helpers import ROOT, run_cli, write_reviews

EXAMPLE_CONF = ROOT / "examples" / "my_task" / "conf"


def test_own_files_of_thousands_of_rows_get_one_line_naming_the_rows_and_data_shots(tmp_path):
    files = write_reviews(tmp_path / "data", {"train": 3000, "dev": 40})
    done = run_cli([f"hydra.searchpath=[file://{EXAMPLE_CONF}]", "task=reviews", "data=files",
                    f"data.train={files['train']}", f"data.dev={files['dev']}", "trainer.max_steps=1", "logger=none",
                    "keep_checkpoints=false", "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={tmp_path}/run"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "long first epoch" in line]
    assert len(lines) == 1, lines
    assert "one epoch trains on 3,000 rows (more than 2,000), and every epoch ends scoring 40 dev rows" in lines[0]
    assert "data.shots=16 data.dev_shots=16" in lines[0]
    assert (tmp_path / "run" / "train.log").read_text(encoding="utf-8").count("long first epoch") == 1


def _trainer(batches: int) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=0, num_training_batches=batches, is_global_zero=True, datamodule=None,
                           world_size=1)


def test_an_epoch_that_its_first_steps_put_over_the_limit_is_said_once(monkeypatch, caplog):
    clock = iter([100.0, 103.0])  # 3 s for the 10 timed steps after the first: 0.3 s a step
    monkeypatch.setattr(epoch_length.time, "perf_counter", lambda: next(clock))
    callback = LongEpochWarning(max_rows=2000, max_minutes=10, timed_steps=10)
    trainer = _trainer(batches=4000)  # 4000 x 0.3 s = 20 minutes
    callback.on_train_start(trainer, None)  # no TaskData: no row count, no warning yet
    with caplog.at_level(logging.WARNING, logger=epoch_length.__name__):
        for step in range(30):
            callback.on_train_batch_end(trainer, None, None, None, step)
    (record,) = [r for r in caplog.records if "long first epoch" in r.getMessage()]
    assert "one epoch (4,000 batches) takes about 20 minutes at the first steps' pace" in record.getMessage()
    assert "trainer.limit_train_batches=N" in record.getMessage()

    caplog.clear()
    clock = iter([100.0, 103.0])
    monkeypatch.setattr(epoch_length.time, "perf_counter", lambda: next(clock))
    quick = _trainer(batches=1000)  # 5 minutes: under the limit
    callback.on_train_start(quick, None)
    with caplog.at_level(logging.WARNING, logger=epoch_length.__name__):
        for step in range(30):
            callback.on_train_batch_end(quick, None, None, None, step)
    assert not caplog.records
