"""``data=files``: a task of one's own (examples/my_task) read from csv/jsonl/tsv files, k-shot sampling, and
the errors for bad files, through the real CLI and the DataModule as train.py builds it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from datamodules.tasks.rows import read_rows
from datamodules.protocol import TaskData
from datamodules.runs.results import RunFolder
from datamodules.errors import ConfigError, DataError
from tests.conftest import compose_config
from tests.helpers import ROOT, read_jsonl, run_cli
from train import instantiate_with

EXAMPLE = ROOT / "examples" / "my_task"
DATA = EXAMPLE / "data"
SEARCHPATH = f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"


def csv_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def labels_by_id(path: Path) -> dict[str, str]:
    return {row["rid"]: row["rating"] for row in csv_rows(path)}


def files_datamodule(run_dir: Path, *overrides: str):
    cfg = compose_config([SEARCHPATH, "task=reviews", "data=files", f"data.train={DATA / 'train.csv'}",
                          f"data.dev={DATA / 'dev.jsonl'}", *overrides], run_dir)
    datamodule = instantiate_with(cfg.data)
    datamodule.setup("fit")
    return datamodule


# -- the example task through the CLI ------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """fuzzy_pet on the example task: 4 rows per class, a labelled test.csv, predict.jsonl (rows without ids),
    unlabeled.tsv pseudo-labelled after the first of two epochs."""
    work = tmp_path_factory.mktemp("own")
    run_dir = work / "run"
    done = run_cli([
        SEARCHPATH, "task=reviews", "data=files", "stage=fuzzy_pet", f"hydra.run.dir={run_dir}",
        f"data.train={DATA / 'train.csv'}", f"data.dev={DATA / 'dev.jsonl'}", f"data.test={DATA / 'test.csv'}",
        f"data.predict={DATA / 'predict.jsonl'}", f"data.unlabeled={DATA / 'unlabeled.tsv'}", "data.shots=4",
        "trainer.max_epochs=2", "callbacks.self_training.rounds=1", "callbacks.self_training.epochs_per_round=1",
        "callbacks.self_training.threshold=0.0", "logger=none",
    ], cwd=work)
    return done, run_dir


def test_own_task_trains_tests_and_predicts_from_csv_jsonl_tsv(own_run):
    done, run_dir = own_run
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    assert results["task"] == "reviews" and results["split"] is None
    # 4 rows per class of train.csv's 24; every dev (8), test (8) and predict (6) row
    assert (results["data/train_rows"], results["data/val_rows"], results["data/test_rows"],
            results["data/predict_rows"]) == (8, 8, 8, 6)
    assert RunFolder(run_dir).resolve(results["test_set"]) == (DATA / "test.csv").resolve()
    assert 0.0 <= results["test/acc"] <= 1.0
    assert results["test/acc"] * 8 == round(results["test/acc"] * 8)  # a count of the 8 test rows
    # predict.jsonl and unlabeled.tsv have no ids: their rows are numbered by line, and results.json says so
    assert results["data/line_number_ids"] == {"predict": 6, "unlabeled": 6}
    predictions = read_jsonl(run_dir / results["predictions"])
    assert Path(results["predictions"]).name == "reviews_predict.json"  # no FewCLUE submission_file needed
    assert [row["id"] for row in predictions] == [1, 2, 3, 4, 5, 6]
    assert {row["label"] for row in predictions} <= {"good", "bad"}
    # self-training scored the 6 rows of unlabeled.tsv, unchanged code on a non-FewCLUE DataModule
    (round_one,) = results["self_training"]
    assert round_one["scored"] == 6 and round_one["kept"] == sum(round_one["kept_per_class"].values())
    assert set(round_one["kept_per_class"]) == {"good", "bad"}
    # the drawn ids are in the run dir: 4 of each class, all from train.csv
    sampled = json.loads((run_dir / "sampled_ids.json").read_text(encoding="utf-8"))
    truth = labels_by_id(DATA / "train.csv")
    assert sampled["train"]["shots"] == 4 and sampled["train"]["rows_in_file"] == 24 and "dev" not in sampled
    assert Counter(truth[i] for i in sampled["train"]["ids"]) == {"good": 4, "bad": 4}


def test_predict_py_on_the_own_run_gives_its_prediction_file_without_line_ids(own_run):
    done, run_dir = own_run
    assert done.returncode == 0, done.stderr[-3000:]
    out = subprocess.run([sys.executable, str(ROOT / "predict.py"), str(run_dir), "--input", str(DATA / "predict.jsonl")],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    written = read_jsonl(run_dir / "predictions" / "reviews_predict.json")
    assert [row["label"] for row in rows] == [row["label"] for row in written]
    assert all("id" not in row for row in rows)  # the input rows have no id of their own
    assert all(row["label_name"] == {"good": "好评", "bad": "差评"}[row["label"]] for row in rows)


def test_bad_rows_in_own_files_stop_the_cli_naming_file_line_and_field(tmp_path):
    train = tmp_path / "train.csv"
    lines = (DATA / "train.csv").read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4].replace(",bad", ",terrible")  # line 5 of the file
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    common = [SEARCHPATH, "task=reviews", "data=files", f"data.dev={DATA / 'dev.jsonl'}", "logger=none"]
    done = run_cli([*common, f"data.train={train}"], cwd=tmp_path)
    assert done.returncode == 2
    assert f"{train}:5: field 'rating': unknown label 'terrible' for task reviews; allowed: ['good', 'bad']" in done.stderr
    assert "Traceback" not in done.stderr and "Epoch" not in done.stderr + done.stdout
    missing = run_cli([*common, f"data.train={tmp_path / 'nope.csv'}"], cwd=tmp_path)
    assert missing.returncode == 2 and f"error: data.train={tmp_path / 'nope.csv'}: no such file" in missing.stderr


# -- the reader ------------------------------------------------------------------------------------------

def test_csv_quotes_multiline_cells_line_ids_and_bad_cells(tmp_path):
    from datamodules.tasks.task_configs import load_task_specs

    task = load_task_specs(["reviews"], EXAMPLE / "conf" / "task")[0]
    path = tmp_path / "rows.csv"
    path.write_text('rid,review,rating\nx1,"好吃, 实惠",good\n,"第一行\n第二行",bad\n\nx9,一般,good\n', encoding="utf-8")
    rows = read_rows(task, path, labelled=True, line_ids=True)
    assert [(r.id, r.fields["review"], r.label, r.line, r.id_from_line) for r in rows] == [
        ("x1", "好吃, 实惠", 0, 2, False),
        (3, "第一行\n第二行", 1, 3, True),  # no id: its first line's number
        ("x9", "一般", 0, 6, False),  # after the two lines of row 3 and a blank line
    ]
    with pytest.raises(DataError, match=r"rows.csv:3: missing field 'rid' \(the row id\)"):
        read_rows(task, path, labelled=True)  # FewCLUE rule: an id on every row
    tsv = tmp_path / "rows.tsv"
    tsv.write_text('review\trating\n"引号"照原样\tgood\n', encoding="utf-8")
    assert read_rows(task, tsv, labelled=True, line_ids=True)[0].fields["review"] == '"引号"照原样'  # tsv: no quoting
    tsv.write_text('review\trating\n"引号"照原样\tgood\n多\t一列\tgood\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_rows(task, tsv, labelled=True, line_ids=True)
    assert f"{tsv}:3: 3 cells, the header has 2" in str(err.value)
    header = tmp_path / "header.csv"
    header.write_text("rid,text,rating\nx1,好,good\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"header.csv:1: field 'review': no such column in the header"):
        read_rows(task, header, labelled=True)
    unterminated = tmp_path / "unterminated.csv"
    unterminated.write_text('rid,review,rating\nr01,好吃,good\nr02,"等了一个小时才上菜。,bad\nr03,一般,good\n'
                            'r04,"很好",good\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_rows(task, unterminated, labelled=True)
    assert (f"{unterminated}:3: field 'review': a quote opened on this line closes only on line 5, so lines 3-5 "
            "read as one row") in str(err.value)
    long = tmp_path / "long.csv"  # a cell over the csv module's default limit (131,072 characters), as in JSON lines
    long.write_text(f"review,rating\n\"{'好' * 300_000}\",good\n", encoding="utf-8")
    assert len(read_rows(task, long, labelled=True, line_ids=True)[0].fields["review"]) == 300_000
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("review,rating\n好,good\n".encode("gbk"))
    with pytest.raises(DataError, match=r"gbk.csv:2: not UTF-8 text \(byte 0xba at byte 1 of the line"):
        read_rows(task, gbk, labelled=True, line_ids=True)


# -- k-shot sampling -------------------------------------------------------------------------------------

def test_k_shot_draws_exactly_k_per_class_the_same_for_a_seed_and_writes_the_ids(tmp_path):
    truth = labels_by_id(DATA / "train.csv")  # 12 good, 12 bad
    dm = files_datamodule(tmp_path / "a", "data.shots=3", "data.dev_shots=2", "data.sample_seed=7")
    assert isinstance(dm, TaskData)
    ids = [row.id for row in dm.train_rows]
    assert Counter(truth[i] for i in ids) == {"good": 3, "bad": 3}
    assert ids == sorted(ids)  # kept in file order
    assert Counter(dm.task.label_list[row.label] for row in dm.val_rows) == {"good": 2, "bad": 2}
    written = json.loads((tmp_path / "a" / "sampled_ids.json").read_text(encoding="utf-8"))
    assert written["sample_seed"] == 7 and written["train"]["ids"] == ids
    assert written["dev"]["ids"] == [row.id for row in dm.val_rows] and written["dev"]["rows_in_file"] == 8
    assert dm.stats["data/sampled_ids"] == str(tmp_path / "a" / "sampled_ids.json")
    same = files_datamodule(tmp_path / "b", "data.shots=3", "data.dev_shots=2", "data.sample_seed=7")
    assert [row.id for row in same.train_rows] == ids
    other = files_datamodule(tmp_path / "c", "data.shots=3", "data.sample_seed=8")
    assert [row.id for row in other.train_rows] != ids
    assert Counter(truth[row.id] for row in other.train_rows) == {"good": 3, "bad": 3}
    assert len(other.val_rows) == 8  # no dev_shots: every dev row
    everything = files_datamodule(tmp_path / "d")
    assert len(everything.train_rows) == 24 and not (tmp_path / "d" / "sampled_ids.json").exists()


def test_k_shot_larger_than_a_class_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data.shots=13: .*train.csv has 12 row\(s\) of class 'good'; allowed: at most 12"):
        files_datamodule(tmp_path / "run", "data.shots=13")
    with pytest.raises(ConfigError, match=r"data.dev_shots=0; allowed: an integer >= 1, or null"):
        files_datamodule(tmp_path / "run", "data.dev_shots=0")
    only_good = tmp_path / "only_good.csv"
    only_good.write_text("".join(line for line in (DATA / "train.csv").read_text(encoding="utf-8").splitlines(True)
                                 if not line.rstrip().endswith(",bad")), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        files_datamodule(tmp_path / "run", f"data.train={only_good}", "data.shots=4")
    assert str(err.value) == (f"data.shots=4: {only_good} has no row of class 'bad'; data.shots draws 4 row(s) of "
                              "every class: add such rows, or data.shots=null (every row)")


# -- rows that make training or selection quietly meaningless: one warning line each -----------------------

def warnings_of(caplog, run_dir: Path, *overrides: str) -> list[str]:
    caplog.clear()
    with caplog.at_level("WARNING", logger="datamodules.tasks.files"):
        files_datamodule(run_dir, *overrides)
    return [r.getMessage() for r in caplog.records if r.name == "datamodules.tasks.files"]


def test_a_class_without_rows_and_dev_rows_that_are_training_rows_each_warn_in_one_line(tmp_path, caplog):
    assert warnings_of(caplog, tmp_path / "example") == []  # the example: both classes in both files, no overlap
    only_good = tmp_path / "only_good.csv"
    only_good.write_text("".join(line for line in (DATA / "train.csv").read_text(encoding="utf-8").splitlines(True)
                                 if not line.rstrip().endswith(",bad")), encoding="utf-8")
    assert warnings_of(caplog, tmp_path / "train", f"data.train={only_good}") == [
        f"data.train={only_good} has no row of class 'bad'; the run trains on the other classes only"]
    dev_good = tmp_path / "dev_good.jsonl"
    dev_good.write_text("".join(line for line in (DATA / "dev.jsonl").read_text(encoding="utf-8").splitlines(True)
                                if '"good"' in line), encoding="utf-8")
    assert warnings_of(caplog, tmp_path / "dev", f"data.dev={dev_good}") == [
        f"data.dev={dev_good} has no row of class 'bad'; val/acc, which selects the checkpoint, never tests it "
        "(every row is 'good': predicting 'good' for every row scores val/acc 1.0)"]
    dev = DATA / "dev.jsonl"
    assert warnings_of(caplog, tmp_path / "same", f"data.train={dev}") == [
        f"data.dev={dev}: 8 of its 8 row(s) repeat a text of data.train={dev} (the same file); val/acc, which selects "
        "the checkpoint, is partly measured on rows the run trains on"]
    # with k-shot sampling, only the drawn training rows count: 2 per class of dev.jsonl's 8 rows
    assert warnings_of(caplog, tmp_path / "shots", f"data.train={dev}", "data.shots=2") == [
        f"data.dev={dev}: 4 of its 8 row(s) repeat a text of data.train={dev} (the same file); val/acc, which selects "
        "the checkpoint, is partly measured on rows the run trains on"]
