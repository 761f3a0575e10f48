"""report.py: the FewCLUE table from results.json files, the submission zip, and sweeps through the real CLI."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from datamodules.runs.results import RunFolder
from report import report
from tests.helpers import ROOT, read_jsonl, run_cli, write_reviews


def _run(root: Path, name: str, task: str, split: str, acc: float, verbalizer: str = "fuzzy", overrides=(),
         file: str | None = None, heldout: float | None = None):
    """A run directory as train.py leaves it; its one prediction row's label is the run's name."""
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"task={task}", f"data.split={split}", f"verbalizer={verbalizer}", *overrides])
    )
    prediction = run_dir / "predictions" / (file or f"{task}_predict.json")
    prediction.parent.mkdir()
    prediction.write_text(json.dumps({"id": 0, "label": name}) + "\n")
    results = {"stage": "fuzzy_pet", "task": task, "split": split, "val/acc": acc, "test/acc": None,
               "heldout/acc": heldout, "verbalizer": verbalizer, "predictions": str(prediction), "data/predict_rows": 1}
    (run_dir / "results.json").write_text(json.dumps(results))


def test_report_numbers_by_hand(tmp_path):
    eprstmt = [0.75, 0.8, 0.7, 0.85, 0.9]
    for i, acc in enumerate(eprstmt):
        _run(tmp_path, f"e{i}", "eprstmt", str(i), acc)
    _run(tmp_path, "eall", "eprstmt", "all", 0.88)
    for i, acc in enumerate([0.4, 0.5, 0.6, 0.5, 0.5]):
        _run(tmp_path, f"o{i}", "ocnli", str(i), acc)
        _run(tmp_path, f"ov1{i}", "ocnli", str(i), acc - 0.1, verbalizer="v1")
        _run(tmp_path, f"ost{i}", "ocnli", str(i), acc + 0.05, overrides=["self_training.rounds=1"])
    text = report(tmp_path, make_zip=True)
    mean, std = statistics.fmean(eprstmt), statistics.stdev(eprstmt)
    assert f"| eprstmt | fuzzy_pet | fuzzy | - | 5 | {100 * mean:.2f} ± {100 * std:.2f} | 88.00 |" in text
    assert "| ocnli | fuzzy_pet | fuzzy | self_training.rounds=1 | 5 | 55.00 ± 7.07 | - |" in text
    # FewCLUE score: unweighted mean over tasks of the split means, per setting.
    assert f"| fuzzy_pet | fuzzy | - | 2 | {100 * (mean + 0.5) / 2:.2f} |" in text
    # Label-word sets: per-set accuracy and the spread across sets.
    assert "| ocnli | fuzzy_pet | - | fuzzy 50.00, v1 40.00 | 10.00 | 5.00 |" in text
    for name in ("report.md", "report.csv", "report.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    # The single board takes each task's split-0 run (train_0/dev_0); of ocnli's three settings, the best on dev_0.
    with zipfile.ZipFile(tmp_path / "fewclue_submission.zip") as archive:
        assert sorted(archive.namelist()) == ["eprstmt_predict.json", "ocnli_predict.json"]
        assert json.loads(archive.read("eprstmt_predict.json"))["label"] == "e0"  # not few_all (0.88), not split 4 (0.9)
        assert json.loads(archive.read("ocnli_predict.json"))["label"] == "ost0"  # 0.45 > fuzzy 0.40 > v1 0.30
    assert "a FewCLUE submission needs the 9 task files" in text


def test_the_table_reports_heldout_accuracy_where_every_run_has_it_not_the_dev_rows_that_chose(tmp_path):
    for i, (dev, heldout) in enumerate([(0.9, 0.6), (0.8, 0.7)]):
        _run(tmp_path, f"h{i}", "eprstmt", str(i), dev, heldout=heldout)
    text = report(tmp_path)
    assert text.startswith("Accuracy (%): held-out accuracy")
    assert "| eprstmt | fuzzy_pet | fuzzy | - | 2 | 65.00 ± 7.07 | - |" in text
    _run(tmp_path, "h2", "eprstmt", "2", 0.7)  # a run without held-out rows: the table falls back to dev
    assert report(tmp_path).startswith("Accuracy (%): dev accuracy")


def test_a_swept_stage_setting_is_its_own_row(tmp_path):
    for i in range(2):
        _run(tmp_path, f"s{i}", "eprstmt", str(i), 0.7, overrides=["stage.aggregation=sum_prob"])
        _run(tmp_path, f"m{i}", "eprstmt", str(i), 0.6, overrides=["stage.aggregation=mean_logit"])
    text = report(tmp_path)
    assert "| eprstmt | fuzzy_pet | fuzzy | stage.aggregation=sum_prob | 2 | 70.00 ± 0.00 | - |" in text
    assert "| eprstmt | fuzzy_pet | fuzzy | stage.aggregation=mean_logit | 2 | 60.00 ± 0.00 | - |" in text


def test_multi_board_has_six_files_per_task_from_one_setting(tmp_path):
    # eprstmt: fuzzy (mean dev 0.70 over its six runs) and v1 (0.60, though best on split 2); ocnli's file is ocnlif_*.
    for split, fuzzy, v1 in [("0", 0.7, 0.6), ("1", 0.7, 0.6), ("2", 0.6, 0.9), ("3", 0.8, 0.5), ("4", 0.7, 0.5),
                             ("all", 0.7, 0.5)]:
        _run(tmp_path, f"f{split}", "eprstmt", split, fuzzy)
        _run(tmp_path, f"v{split}", "eprstmt", split, v1, verbalizer="v1")
    _run(tmp_path, "o0", "ocnli", "0", 0.5, file="ocnlif_predict.json")
    _run(tmp_path, "o0seed", "ocnli", "0", 0.6, file="ocnlif_predict.json", overrides=["seed=7"])  # a second seed
    _run(tmp_path, "oall", "ocnli", "all", 0.4, file="ocnlif_predict.json")
    done = subprocess.run([sys.executable, str(ROOT / "report.py"), str(tmp_path), "--board", "multi"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(tmp_path / "fewclue_multi_submission.zip") as archive:
        names = sorted(archive.namelist())
        labels = {name: json.loads(archive.read(name))["label"] for name in names}
    assert names == [f"eprstmt_predict_{s}.json" for s in ("0", "1", "2", "3", "4", "all")] + [
        "ocnlif_predict_0.json", "ocnlif_predict_all.json"]
    assert [labels[f"eprstmt_predict_{s}.json"] for s in ("0", "1", "2", "3", "4", "all")] == [
        "f0", "f1", "f2", "f3", "f4", "fall"]  # one setting for all six, v1's better split 2 not mixed in
    assert labels["ocnlif_predict_0.json"] == "o0seed"
    assert "warning: ocnlif_predict: no prediction for split(s) 1, 2, 3, 4" in done.stdout
    assert not (tmp_path / "fewclue_submission.zip").exists()


def test_single_board_leaves_out_a_task_without_a_split_0_run(tmp_path):
    _run(tmp_path, "e0", "eprstmt", "0", 0.7)
    _run(tmp_path, "b1", "bustm", "1", 0.9)
    _run(tmp_path, "ball", "bustm", "all", 0.9)
    text = report(tmp_path, make_zip=True)
    with zipfile.ZipFile(tmp_path / "fewclue_submission.zip") as archive:
        assert archive.namelist() == ["eprstmt_predict.json"]
    assert "warning: task bustm has no split-0 run with a prediction file; it is not in the zip" in text


def test_zip_refuses_a_prediction_file_that_misses_rows(tmp_path):
    _run(tmp_path, "e0", "eprstmt", "0", 0.7)
    results = json.loads((tmp_path / "e0" / "results.json").read_text())
    results["data/predict_rows"] = 753  # test.json's rows; the file has 1 (trainer.limit_predict_batches)
    (tmp_path / "e0" / "results.json").write_text(json.dumps(results))
    done = subprocess.run([sys.executable, str(ROOT / "report.py"), str(tmp_path), "--zip"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 2
    assert "error: task eprstmt:" in done.stderr and "has 1 rows, test.json 753" in done.stderr
    assert not (tmp_path / "fewclue_submission.zip").exists()


def test_own_runs_get_the_runs_table_and_no_fewclue_score(tmp_path):
    """Runs without a split (data=files): per run its setting and accuracies, no split means or FewCLUE score."""
    for name, seed, dev, test in (("a", "1", 0.5, 0.4), ("b", "2", 0.75, 0.7)):
        run_dir = tmp_path / name
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
            ["task=reviews", "data=files", f"data.sample_seed={seed}", f"paths.output_dir=/somewhere/{name}"]))
        (run_dir / "results.json").write_text(json.dumps({"stage": "fuzzy_pet", "task": "reviews", "split": None,
                                                          "val/acc": dev, "test/acc": test, "val/acc_v1": dev - 0.25}))
    text = report(tmp_path)
    assert "FewCLUE score" not in text and "splits 0-4" not in text
    assert "| run | task | stage | setting | val/acc | test/acc | val/acc_v1 |" in text
    assert "| a | reviews | fuzzy_pet | data.sample_seed=1 | 50.00 | 40.00 | 25.00 |" in text
    assert "| b (best on dev) | reviews | fuzzy_pet | data.sample_seed=2 | 75.00 | 70.00 | 50.00 |" in text
    assert (tmp_path / "report.csv").read_text() == (tmp_path / "runs.csv").read_text()


def test_report_of_an_empty_directory_is_a_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "report.py"), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip() == f"error: no results.json under {tmp_path}"


TINY = ["stage=fuzzy_pet", "model=tiny", "trainer.max_steps=2", "data.batch_size=8", "trainer.limit_val_batches=1",
        "trainer.limit_predict_batches=1", "keep_checkpoints=false", "callbacks.progress_bar.refresh_rate=0"]


def test_split_sweep_through_the_cli_and_report(tmp_path, shared_fewclue):
    sweep = tmp_path / "sweep"
    done = run_cli(["-m", *TINY, "task=eprstmt", "data.split=0,1,2,3,4,all", f"data.data_dir={shared_fewclue}",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep.rglob("results.json"))]
    assert sorted(r["split"] for r in results) == ["0", "1", "2", "3", "4", "all"]
    printed = subprocess.run([sys.executable, str(ROOT / "report.py"), str(sweep)], capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    scores = [r["val/acc"] for r in results if r["split"] != "all"]
    few_all = next(r["val/acc"] for r in results if r["split"] == "all")
    line = (f"| eprstmt | fuzzy_pet | fuzzy | - | 5 | {100 * statistics.fmean(scores):.2f} ± "
            f"{100 * statistics.stdev(scores):.2f} | {100 * few_all:.2f} |")
    assert line in printed.stdout
    assert (sweep / "report.png").is_file() and (sweep / "report.csv").is_file()


@pytest.mark.slow
def test_label_word_sweep_gives_one_result_per_set(tmp_path, shared_fewclue):
    sweep = tmp_path / "sweep"
    done = run_cli(["-m", *TINY, "task=ocnli", "verbalizer=v1,v2,v3,fuzzy", f"data.data_dir={shared_fewclue}",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep.rglob("results.json"))]
    assert sorted(r["verbalizer"] for r in results) == ["fuzzy", "v1", "v2", "v3"]
    assert {tuple(r["verbalizer_sets"]) for r in results} == {("v1",), ("v2",), ("v3",), ("v1", "v2", "v3")}
    text = report(sweep)
    assert "| ocnli | fuzzy_pet | - | " in text and "spread" in text
    for r in results:
        assert len(read_jsonl(r["predictions"])) == 64  # limit_predict_batches=1 x eval_batch_size


EXAMPLE_CONF = ROOT / "examples" / "my_task" / "conf"


def test_an_own_data_sweep_through_the_cli_reports_each_run_and_its_best_on_dev(tmp_path):
    """Two runs on one's own files (data=files) with a labelled test file, one learning rate too small to learn:
    report.py gives each run's numbers as its results.json has them and marks the one with the best val/acc."""
    files = write_reviews(tmp_path / "data", {"train": 64, "dev": 16, "test": 20}, flipped=("test3", "test8"))
    sweep = tmp_path / "sweep"
    done = run_cli(["-m", f"hydra.searchpath=[file://{EXAMPLE_CONF}]", "task=reviews", "data=files",
                    f"data.train={files['train']}", f"data.dev={files['dev']}", f"data.test={files['test']}",
                    "stage.optim.lr=1e-6,3e-3", "trainer.max_epochs=6", "data.batch_size=8", "logger=none",
                    "keep_checkpoints=false", "callbacks.progress_bar.refresh_rate=0", f"hydra.sweep.dir={sweep}"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = subprocess.run([sys.executable, str(ROOT / "report.py"), str(sweep)], capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    results = {job: json.loads((sweep / job / "results.json").read_text()) for job in ("0", "1")}
    lrs = {job: RunFolder(sweep / job).overrides["stage.optim.lr"] for job in results}
    assert results["1"]["val/acc"] > results["0"]["val/acc"]  # 3e-3 learns the keyword, 1e-6 does not
    for job, r in results.items():
        mark = " (best on dev)" if job == "1" else ""
        assert (f"| {job}{mark} | reviews | finetune | stage.optim.lr={lrs[job]} | {100 * r['val/acc']:.2f} | "
                f"{100 * r['test/acc']:.2f} |") in printed.stdout
    assert f"Best on dev: 1 (stage.optim.lr={lrs['1']})" in printed.stdout
    assert "FewCLUE score" not in printed.stdout and "splits 0-4" not in printed.stdout
    with (sweep / "runs.csv").open(encoding="utf-8") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    for job, r in results.items():  # the numbers as results.json has them
        assert (float(rows[job]["val/acc"]), float(rows[job]["test/acc"])) == (r["val/acc"], r["test/acc"])
        assert rows[job]["best_on_dev"] == str(job == "1")
    assert (sweep / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "long first epoch" not in done.stdout + done.stderr  # 64 rows: no warning
