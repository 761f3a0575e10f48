"""benchmarks/protocol.py: the table's phases and accuracies read back from run folders, totals by hand; the
command line of each run."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.protocol import PHASES, ROOT, table, train_command


def test_the_table_has_a_row_per_run_and_totals_per_phase():
    rows = [
        {"task": "eprstmt", "split": "0", "wall": 30.4, "exit": 0, "val/acc": 0.75, "heldout/acc": 0.6650,
         **dict.fromkeys(PHASES, 1.0), "train": 12.0},
        {"task": "bustm", "split": "0", "wall": 20.0, "exit": 0, "val/acc": 0.5, "heldout/acc": None,
         **dict.fromkeys(PHASES, 2.0)},
        {"task": "chid", "split": "0", "wall": 5.0, "exit": 2, "error": "error: something"},
    ]
    lines = table(rows, "header").splitlines()
    assert lines[4] == "| eprstmt | 0 | 30 | 1.0 | 1.0 | 1.0 | 12.0 | 1.0 | 1.0 | 1.0 | 1.0 | 75.0 | 66.5 |"
    assert lines[5] == "| bustm | 0 | 20 | 2.0 | 2.0 | 2.0 | 2.0 | 2.0 | 2.0 | 2.0 | 2.0 | 50.0 | - |"
    assert lines[6] == "| chid | 0 | 5 | exit 2: error: something |"
    assert lines[7] == "| **total** | | 55 | 3 | 3 | 3 | 14 | 3 | 3 | 3 | 3 | | |"


def test_task_and_split_placeholders_are_filled_per_run_and_other_braces_kept():
    command = train_command("bustm", "3", Path("out/bustm/3"),
                            ["stage=efl", "model.pretrained=runs/ent/{split}/export", "tuned={task}_{split}",
                             "stage.loss_weights={mlm:0.5}"])
    assert command == [sys.executable, str(ROOT / "train.py"), "task=bustm", "data.split=3",
                       "hydra.run.dir=out/bustm/3", "stage=efl", "model.pretrained=runs/ent/3/export", "tuned=bustm_3",
                       "stage.loss_weights={mlm:0.5}"]


def test_record_adds_the_finished_runs_to_the_ledger(tmp_path, monkeypatch):
    import json

    from benchmarks import protocol
    from datamodules.runs import ledger

    def fake_run(task, split, out, overrides):
        if task == "chid":
            return {"task": task, "split": split, "wall": 1.0, "exit": 2, "error": "error: x"}
        (out / task / split).mkdir(parents=True)
        (out / task / split / "results.json").write_text(json.dumps(
            {"stage": "fuzzy_pet", "task": task, "split": split, "val/acc": 0.5, "heldout/acc": 0.625,
             "commit": "abc1234", "machine": "CPU, 2 cores"}))
        return {"task": task, "split": split, "wall": 1.0, "exit": 0, "val/acc": 0.5, "heldout/acc": 0.625}

    monkeypatch.setattr(protocol, "run_one", fake_run)
    monkeypatch.setattr(ledger, "LEDGER", tmp_path / "results.jsonl")
    protocol.main(["--tasks", "eprstmt,chid", "--splits", "0,1", "--out", str(tmp_path / "runs"), "--record", "v1"])
    records = ledger.read(tmp_path / "results.jsonl")
    assert [(r["method"], r["task"], r["split"], r["heldout/acc"]) for r in records] == [
        ("v1", "eprstmt", "0", 0.625), ("v1", "eprstmt", "1", 0.625)]  # chid failed: not recorded
