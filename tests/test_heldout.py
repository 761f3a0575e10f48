"""The held-out rows of a run: labelled rows it never trains on or selects with (``heldout/acc``), counted
against the files by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules.runs.provenance import source_commit
from datamodules.runs.predictor import Predictor
from datamodules.runs.results import RunFolder
from tests.conftest import datamodule_for
from tests.test_own_data import DATA, csv_rows, files_datamodule
from train import build, run


def texts_of(path: Path) -> list[str]:
    return [json.loads(line)["sentence"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_fewclue_heldout_rows_are_the_other_splits_rows_whose_text_this_split_never_saw(tmp_path, shared_fewclue):
    datamodule = datamodule_for("eprstmt", tmp_path / "run", shared_fewclue, "data.split=0")
    datamodule.setup("fit")
    task = shared_fewclue / "eprstmt"
    seen = set(texts_of(task / "train_0.json") + texts_of(task / "dev_0.json"))
    expected = []
    for k in "1234":
        for name in (f"train_{k}.json", f"dev_{k}.json"):
            for text in texts_of(task / name):
                if text not in seen:
                    seen.add(text)
                    expected.append(text)
    assert [row.fields["sentence"] for row in datamodule.heldout_rows] == expected
    assert 0 < len(expected) < 4 * 64  # the splits share rows: the repeats are left out
    assert datamodule.stats["data/heldout_rows"] == len(expected)
    assert all(row.label is not None for row in datamodule.heldout_rows)


def test_fewclue_heldout_rows_are_capped_with_the_seed_and_none_for_split_all(tmp_path, shared_fewclue):
    first = datamodule_for("tnews", tmp_path / "a", shared_fewclue, "data.heldout_max=100")
    again = datamodule_for("tnews", tmp_path / "b", shared_fewclue, "data.heldout_max=100")
    other_seed = datamodule_for("tnews", tmp_path / "c", shared_fewclue, "data.heldout_max=100", "seed=7")
    for datamodule in (first, again, other_seed):
        datamodule.setup("fit")
    ids = [[row.id for row in dm.heldout_rows] for dm in (first, again, other_seed)]
    assert len(ids[0]) == 100 and ids[0] == ids[1] and ids[0] != ids[2]
    everything = datamodule_for("eprstmt", tmp_path / "d", shared_fewclue, "data.split=all")
    everything.setup("fit")
    assert everything.heldout_rows == [] and everything.stats["data/heldout_rows"] == 0


def test_own_files_heldout_rows_are_the_rows_the_sampling_left_out(tmp_path):
    datamodule = files_datamodule(tmp_path / "run", "data.shots=4")
    train = csv_rows(DATA / "train.csv")
    kept = {row.id for row in datamodule.train_rows}
    assert len(kept) == 4 * datamodule.task.num_classes
    # dev is not sampled (every dev row selects), so only the training rows left out are held out
    assert sorted(row.id for row in datamodule.heldout_rows) == sorted(
        row["rid"] for row in train if row["rid"] not in kept)
    unsampled = files_datamodule(tmp_path / "all", )
    assert unsampled.heldout_rows == []


def test_a_run_scores_its_heldout_rows_with_the_checkpoint_it_selected_on_dev(make_config):
    """heldout/acc is the selected checkpoint's accuracy on the held-out rows: predict.py's loader, given the run
    folder, gets the same count of right answers."""
    built = build(make_config(["trainer.max_epochs=3", "stage.optim.lr=1e-3"]))
    results = run(built)
    rows = built.datamodule.heldout_rows
    assert results["data/heldout_rows"] == len(rows) == 203 and results["test/acc"] is None
    predicted = Predictor.load(built.cfg.paths.output_dir).class_log_probs(rows).argmax(-1).tolist()
    right = sum(choice == row.label for choice, row in zip(predicted, rows))
    assert results["heldout/acc"] == pytest.approx(right / len(rows))
    saved = RunFolder(built.cfg.paths.output_dir).results
    assert saved.heldout_acc == results["heldout/acc"] and saved.eval_precision in ("float32", "bfloat16")
    assert {"data", "model", "train", "validate", "test"} <= set(saved.timing)
    # where the number came from, for the results ledger (no commit outside a git checkout)
    assert saved.commit == source_commit() and "cores" in saved.machine
