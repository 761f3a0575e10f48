"""The labelled test rows' predictions (callbacks/test_predictions.py): one line per test row in the run folder,
named in results.json, with the test file's gold labels and an accuracy equal to test/acc."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest

from datamodules.runs.results import RunFolder
from tests.helpers import ROOT, read_jsonl, run_cli, write_reviews

EXAMPLE = ROOT / "examples" / "my_task"
SEARCHPATH = f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"
LEARNS = ["stage.optim.lr=3e-3", "trainer.max_epochs=6", "data.batch_size=8", "logger=none",
          "callbacks.progress_bar.refresh_rate=0"]


def test_own_test_file_rows_are_written_with_gold_predicted_and_probabilities(tmp_path):
    files = write_reviews(tmp_path / "data", {"train": 64, "dev": 16, "test": 20}, flipped=("test3", "test8", "test13"))
    with files["test"].open("a", encoding="utf-8") as handle:  # labelled files may repeat an id: both rows count
        handle.write("test0,价格很差服务,bad\n")
    run_dir = tmp_path / "run"
    done = run_cli([SEARCHPATH, "task=reviews", "data=files", f"data.train={files['train']}", f"data.dev={files['dev']}",
                    f"data.test={files['test']}", *LEARNS, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    assert results["test_predictions"] == "test_predictions.jsonl"  # relative to the run folder
    folder = RunFolder(run_dir)
    assert folder.test_predictions_path == run_dir / "test_predictions.jsonl"

    rows = read_jsonl(folder.test_predictions_path)
    with files["test"].open(encoding="utf-8", newline="") as handle:
        truth = list(csv.DictReader(handle))
    # every test row once, in the file's order, with its own gold label (the repeated id's two rows apart)
    assert [(r["id"], r["text"], r["gold"]) for r in rows] == [(t["rid"], t["review"], t["rating"]) for t in truth]
    assert [r["line"] for r in rows] == list(range(2, 2 + len(truth)))
    # the file's accuracy is the run's test/acc (the same batches, the same argmax)
    right = sum(r["label"] == r["gold"] for r in rows)
    assert right / len(rows) == pytest.approx(results["test/acc"], abs=1e-6)
    assert all(r["correct"] == (r["label"] == r["gold"]) for r in rows)
    for r in rows:
        assert list(r["probs"]) == ["good", "bad"]
        assert math.isclose(sum(r["probs"].values()), 1.0, abs_tol=2e-4)
        assert all(round(p, 4) == p for p in r["probs"].values())  # 4 digits
        assert r["label"] == max(r["probs"], key=r["probs"].get)
        assert r["label_name"] == {"good": "好评", "bad": "差评"}[r["label"]]
    # the run learned the keyword, so the flipped rows are the ones it gets wrong (the file is not all one class)
    assert {r["label"] for r in rows} == {"good", "bad"}
    assert {r["id"] for r in rows if not r["correct"]} >= {"test3", "test8", "test13"}

    # a copied run folder finds its own file
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert RunFolder(copy).test_predictions_path == copy / "test_predictions.jsonl"


def test_fewclue_test_public_rows_are_written_with_its_labels(tmp_path, fewclue_with_test_public):
    run_dir = tmp_path / "run"
    done = run_cli(["task=eprstmt", "trainer.max_steps=2", "trainer.limit_predict_batches=1", "logger=none",
                    "callbacks.progress_bar.refresh_rate=0", f"data.data_dir={fewclue_with_test_public}",
                    f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    rows = read_jsonl(run_dir / results["test_predictions"])
    truth = read_jsonl(fewclue_with_test_public / "eprstmt" / "test_public.json")
    assert [(r["id"], r["gold"]) for r in rows] == [(t["id"], t["label"]) for t in truth]
    assert sum(r["correct"] for r in rows) / len(rows) == pytest.approx(results["test/acc"], abs=1e-6)
    assert results["data/test_rows"] == len(rows)


def test_a_run_without_a_labelled_test_set_names_no_file(tmp_path, shared_fewclue):
    run_dir = tmp_path / "run"
    done = run_cli(["task=eprstmt", "trainer.max_epochs=1", "trainer.limit_predict_batches=1", "logger=none",
                    f"data.data_dir={shared_fewclue}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    assert "test_predictions" not in results and not (run_dir / "test_predictions.jsonl").exists()
    assert RunFolder(run_dir).test_predictions_path is None
