"""logger=wandb, offline: run name, group, tags and config; the dev prediction table and confusion matrix;
Fuzzy-PET's per-set dev accuracy (val/acc_<set>); report.py --wandb. Read back from the offline run files."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, read_jsonl, run_cli
from train import build

WANDB_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


# -- reading an offline run ----------------------------------------------------------------------------
def wandb_records(run_dir: Path) -> list:
    """The protobuf records of ``run_dir/run-<id>.wandb``: a 7-byte header (":W&B", magic, version), then
    LevelDB-log blocks of 32 KiB whose records carry a 7-byte header (crc32, length, type: 1 full, 2 first,
    3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, offset, block = [], b"", 7, 32768
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        if length == 0 and kind == 0:
            break
        pending += data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


class OfflineRun:
    """What an offline run holds: its run record (name, group, tags, config) and its history rows."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.config: dict = {}
        self.history: list[dict] = []
        for record in wandb_records(run_dir):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.name, self.group, self.tags = record.run.display_name, record.run.run_group, list(record.run.tags)
                self.job_type = record.run.job_type
                self.config = _nested(record.run.config.update, self.config)
            elif kind == "config":
                self.config = _nested(record.config.update, self.config)
            elif kind == "history":
                self.history.append(_nested(record.history.item, {}))

    def values(self, key: str) -> list:
        return [row[key] for row in self.history if key in row]

    def table(self, key: str) -> dict:
        """The last table logged under ``key`` (its JSON file: columns and data)."""
        entry = self.values(key)[-1]
        return json.loads((self.dir / "files" / entry["path"]).read_text(encoding="utf-8"))


def _nested(items, into: dict) -> dict:
    """Config/history items as a dict; an item with a ``nested_key`` path sets a value inside its parents."""
    for item in items:
        path = list(item.nested_key) or [item.key]
        node = into
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = json.loads(item.value_json)
    return into


def offline_runs(directory: Path) -> list[OfflineRun]:
    return [OfflineRun(d) for d in sorted(directory.glob("wandb/offline-run-*"))]


# -- Fuzzy-PET: every set's own dev accuracy ------------------------------------------------------------
def test_per_set_accuracy_equals_the_hand_computed_one_on_known_word_scores(make_config):
    built = build(make_config(["stage=fuzzy_pet", "task=eprstmt", "model=tiny"]))
    module = built.module.eval()
    assert module.set_names == ["v1", "v2", "v3"]
    classes, sets = module.word_classes.tolist(), [module.set_names[s] for s in module.word_sets.tolist()]
    # Row r, set s: the words of class choice[s][r] score log p = -1, every other word -6, so set s alone
    # predicts choice[s][r] (whatever the aggregation, pooled or per set).
    labels = torch.tensor([0, 1, 1, 0, 1])
    choice = {"v1": [0, 1, 1, 0, 1], "v2": [1, 1, 0, 0, 0], "v3": [1, 0, 0, 1, 0]}
    scores = torch.tensor([[-1.0 if classes[w] == choice[sets[w]][r] else -6.0 for w in range(len(classes))]
                           for r in range(len(labels))])
    module.word_scores = lambda batch: scores
    out = module.step({"labels": labels, "ids": list(range(5))})
    # by hand: v1 5 of 5 right; v2 rows 1 and 3 (2 of 5); v3 none (0 of 5)
    assert {k: round(float(v), 6) for k, v in out.metrics.items()} == {"acc_v1": 1.0, "acc_v2": 0.4, "acc_v3": 0.0}
    # the pooled prediction is unchanged: all words of the three sets summed per class
    pooled = torch.stack([torch.logsumexp(scores[:, [w for w in range(len(classes)) if classes[w] == c]], -1)
                          for c in range(2)], -1).log_softmax(-1)
    assert torch.allclose(out.log_probs, pooled, atol=1e-6)
    module.train()
    assert module.step({"labels": labels, "ids": list(range(5))}).metrics == {}  # training logs no set accuracy


# -- through the CLI ------------------------------------------------------------------------------------
TINY = ["model=tiny", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "trainer.limit_predict_batches=1",
        "keep_checkpoints=false", "callbacks.progress_bar.refresh_rate=0"]


def test_a_run_logs_name_group_tags_config_and_a_capped_prediction_table(tmp_path, shared_fewclue):
    """eprstmt split 0 has 32 dev rows: with max_rows=20 (200 by default) the table keeps the first 20 and the
    confusion matrix counts all 32."""
    done = run_cli(["logger=wandb", "stage=fuzzy_pet", "task=eprstmt", "callbacks.wandb_panels.max_rows=20", *TINY,
                    f"data.data_dir={shared_fewclue}", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, env=WANDB_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = offline_runs(tmp_path / "run")
    assert run.name == "eprstmt-fuzzy_pet-fuzzy-s0" and run.group == "eprstmt"
    assert run.tags == ["task:eprstmt", "stage:fuzzy_pet", "verbalizer:fuzzy", "split:0"]
    # the resolved config (no interpolation left), beside the stage's hyperparameters
    assert run.config["data"]["split"] == 0 and run.config["task"]["name"] == "eprstmt"
    assert run.config["stage"]["_target_"] == "lightning_modules.stages.fuzzy_pet.FuzzyPetModule"
    ours = {key: value for key, value in run.config.items() if key != "_wandb"}  # (_wandb: W&B's own: chart specs)
    assert run.config["data"]["data_dir"] == str(shared_fewclue) and "${" not in json.dumps(ours)

    dev = read_jsonl(shared_fewclue / "eprstmt" / "dev_0.json")
    table = run.table("val/predictions")
    assert table["columns"] == ["id", "text", "gold", "predicted", "probability"]
    assert len(dev) == 32 and len(table["data"]) == 20
    assert [row[0] for row in table["data"]] == [str(r["id"]) for r in dev[:20]]  # dev rows in file order
    assert [row[1] for row in table["data"]] == [r["sentence"] for r in dev[:20]]
    assert [row[2].split()[0] for row in table["data"]] == [r["label"] for r in dev[:20]]
    assert all(0.5 <= row[4] <= 1 for row in table["data"])  # the predicted class's probability, of 2 classes

    matrix = run.table("val/confusion_matrix_table")
    assert matrix["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert sum(n for _, _, n in matrix["data"]) == 32
    right = sum(n for actual, predicted, n in matrix["data"] if actual == predicted)
    (val_acc,) = run.values("val/acc")
    assert right / 32 == pytest.approx(val_acc, abs=1e-6)

    # every set's own accuracy, in the run and in results.json
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for name in ("v1", "v2", "v3"):
        (logged,) = run.values(f"val/acc_{name}")
        assert logged == pytest.approx(results[f"val/acc_{name}"], abs=1e-6)
    assert results["wandb/name"] == run.name and results["wandb/group"] == "eprstmt"


def test_a_sweep_is_one_group_and_report_adds_its_table_to_it(tmp_path, shared_fewclue):
    sweep = tmp_path / "sweep"
    done = run_cli(["-m", "logger=wandb", "stage=fuzzy_pet", "task=eprstmt", "verbalizer=v1,fuzzy", *TINY,
                    f"data.data_dir={shared_fewclue}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=WANDB_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [run for job in sorted(sweep.glob("[0-9]*")) for run in offline_runs(job)]
    assert [r.name for r in runs] == ["eprstmt-fuzzy_pet-v1-s0", "eprstmt-fuzzy_pet-fuzzy-s0"]
    assert {r.group for r in runs} == {str(sweep)}
    assert runs[0].tags == ["task:eprstmt", "stage:fuzzy_pet", "verbalizer:v1", "split:0"]
    assert runs[0].values("val/acc_v1") and not runs[0].values("val/acc_v2")  # v1 alone
    assert all(runs[1].values(f"val/acc_{s}") for s in ("v1", "v2", "v3"))

    printed = subprocess.run([sys.executable, str(ROOT / "report.py"), str(sweep), "--wandb"], capture_output=True,
                             text=True, cwd=tmp_path, env={**__import__("os").environ, **WANDB_ENV})
    assert printed.returncode == 0, printed.stderr
    (report,) = offline_runs(sweep)
    assert report.group == str(sweep) and report.job_type == "report"
    table = report.table("report/table")
    csv_rows = (sweep / "report.csv").read_text(encoding="utf-8").splitlines()
    assert table["columns"] == csv_rows[0].split(",") and len(table["data"]) == len(csv_rows) - 1 == 2
    assert report.values("report/plot")[-1]["_type"] == "image-file"
    # the runs table as runs.csv holds it: per run its setting and accuracies, the best on dev marked
    runs_table = report.table("report/runs")
    run_lines = (sweep / "runs.csv").read_text(encoding="utf-8").splitlines()
    assert runs_table["columns"] == run_lines[0].split(",") and len(runs_table["data"]) == len(run_lines) - 1 == 2
    column = runs_table["columns"].index
    by_run = {row[column("run")]: row for row in runs_table["data"]}
    for job in ("0", "1"):
        results = json.loads((sweep / job / "results.json").read_text())
        assert by_run[job][column("val/acc")] == pytest.approx(results["val/acc"])
    best = max(("0", "1"), key=lambda job: (by_run[job][column("val/acc")], job == "0"))
    assert [job for job in ("0", "1") if by_run[job][column("best_on_dev")]] == [best]


def test_a_labelled_test_set_logs_its_confusion_matrix_and_rows(tmp_path):
    """One's own files with a labelled test file (20 rows, 2 labelled against their keyword): after training the
    run logs the test rows under the selected checkpoint, a table capped at max_rows=5 and the whole confusion
    matrix, whose diagonal is test/acc."""
    import csv

    from tests.helpers import write_reviews

    files = write_reviews(tmp_path / "data", {"train": 64, "dev": 16, "test": 20}, flipped=("test3", "test8"))
    run_dir = tmp_path / "run"
    done = run_cli([f"hydra.searchpath=[file://{ROOT / 'examples' / 'my_task' / 'conf'}]", "task=reviews", "data=files",
                    f"data.train={files['train']}", f"data.dev={files['dev']}", f"data.test={files['test']}",
                    "logger=wandb", "callbacks.wandb_panels.max_rows=5", "stage.optim.lr=3e-3", "trainer.max_epochs=4",
                    "data.batch_size=8", "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={run_dir}"],
                   cwd=tmp_path, env=WANDB_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = offline_runs(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    with files["test"].open(encoding="utf-8", newline="") as handle:
        truth = list(csv.DictReader(handle))

    matrix = run.table("test/confusion_matrix_table")
    assert matrix["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert sum(n for _, _, n in matrix["data"]) == 20
    right = sum(n for actual, predicted, n in matrix["data"] if actual == predicted)
    assert right / 20 == pytest.approx(results["test/acc"], abs=1e-6)
    (logged,) = run.values("test/acc")
    assert logged == pytest.approx(results["test/acc"], abs=1e-6)

    table = run.table("test/predictions")
    assert table["columns"] == ["id", "text", "gold", "predicted", "probability"]
    assert [row[:3] for row in table["data"]] == [
        [t["rid"], t["review"], f"{t['rating']} {'好评' if t['rating'] == 'good' else '差评'}"] for t in truth[:5]]
    # the table's rows are the file's rows: test_predictions.jsonl holds the same predictions
    written = read_jsonl(run_dir / results["test_predictions"])[:5]
    assert [row[3].split()[0] for row in table["data"]] == [r["label"] for r in written]
    assert [row[4] for row in table["data"]] == [r["probs"][r["label"]] for r in written]
