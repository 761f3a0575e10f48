"""A run folder is self-contained: results.json (datamodules/runs/results.py) stores every path relative to the
folder, and predict.py and report.py read a copied run's own files, never the original's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from datamodules.runs.results import RunFolder, RunResults, read
from tests.conftest import fewclue_dir
from tests.helpers import ROOT, cli_environment, read_jsonl, run_cli

TEXTS = ["物流很快，包装完好。", "质量太差了，不会再买。", "还行吧，一般般。"]


def cli(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          timeout=1200, env=cli_environment())


def strings(value):
    """Every string in a JSON value, at any depth."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep folder holding one tiny stage=finetune run of eprstmt split 0 (checkpoint and predictions kept)."""
    work = tmp_path_factory.mktemp("run_folder")
    done = run_cli([f"data.data_dir={fewclue_dir()}", f"hydra.run.dir={work / 'sweep' / '0'}", "trainer.max_epochs=1",
                    "+trainer.limit_train_batches=2", "stage.optim.lr=1e-3", "logger=none"], cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    return work / "sweep"


def probabilities(run_dir: Path, rows: Path) -> tuple[list[dict], str]:
    done = cli("predict.py", run_dir, "--input", rows)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line)["probs"] for line in done.stdout.splitlines()], done.stderr


def perturb(checkpoint: Path) -> None:
    """Overwrite a checkpoint with other weights (as a reused run folder would)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    torch.manual_seed(0)
    for key, tensor in state["state_dict"].items():
        if tensor.is_floating_point():
            state["state_dict"][key] = tensor + torch.randn_like(tensor)
    torch.save(state, checkpoint)


def test_results_json_holds_no_absolute_path(sweep):
    stored = json.loads((sweep / "0" / "results.json").read_text(encoding="utf-8"))
    assert [s for s in strings(stored) if s.startswith("/")] == []
    assert stored["checkpoint"] == "checkpoints/best.ckpt" and stored["config"] == "config.yaml"
    assert stored["predictions"] == "predictions/eprstmt_predict.json"
    folder = RunFolder(sweep / "0")
    assert folder.checkpoint_path == sweep / "0" / "checkpoints" / "best.ckpt" and folder.checkpoint_path.is_file()
    assert folder.config_path.is_file() and folder.predictions_path.is_file()


def test_a_copied_run_predicts_with_its_own_checkpoint(sweep, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"sentence": t}, ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8")
    original = tmp_path / "original"
    shutil.copytree(sweep / "0", original)
    copy = tmp_path / "archive" / "copy"
    shutil.copytree(original, copy)
    before, _ = probabilities(copy, rows)

    perturb(original / "checkpoints" / "best.ckpt")  # the original folder reused by another run
    changed, _ = probabilities(original, rows)
    assert changed != before  # the overwrite changed what the original predicts
    after, stderr = probabilities(copy, rows)
    assert after == before and str(copy / "checkpoints" / "best.ckpt") in stderr

    # An older results.json held absolute paths: the copy still uses its own checkpoint, not the one named.
    stored = json.loads((copy / "results.json").read_text(encoding="utf-8"))
    old = {**stored, "checkpoint": str(original / "checkpoints" / "best.ckpt"), "config": str(original / "config.yaml")}
    (copy / "results.json").write_text(json.dumps(old), encoding="utf-8")
    assert probabilities(copy, rows)[0] == before

    shutil.rmtree(original)
    assert probabilities(copy, rows)[0] == before


def test_report_zip_of_a_copied_sweep_zips_the_copys_file(sweep, tmp_path):
    original = tmp_path / "original"
    shutil.copytree(sweep, original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    own = (copy / "0" / "predictions" / "eprstmt_predict.json").read_bytes()
    # The original's file changes (a rerun into the same folder: the same rows, other labels), then the copy's
    # results.json is an older one naming the original's file by its absolute path.
    rows = read_jsonl(original / "0" / "predictions" / "eprstmt_predict.json")
    (original / "0" / "predictions" / "eprstmt_predict.json").write_text(
        "".join(json.dumps({**row, "label": "rerun"}) + "\n" for row in rows), encoding="utf-8")
    stored = json.loads((copy / "0" / "results.json").read_text(encoding="utf-8"))
    for results in (stored, {**stored, "predictions": str(original / "0" / "predictions" / "eprstmt_predict.json")}):
        (copy / "0" / "results.json").write_text(json.dumps(results), encoding="utf-8")
        done = cli("report.py", copy, "--zip")
        assert done.returncode == 0, done.stderr[-3000:]
        with zipfile.ZipFile(copy / "fewclue_submission.zip") as archive:
            assert archive.namelist() == ["eprstmt_predict.json"]
            assert archive.read("eprstmt_predict.json") == own


def test_paths_are_stored_relative_and_resolved_in_the_folder_read_from(tmp_path):
    run = tmp_path / "sweep" / "run"
    teacher = tmp_path / "teachers" / "0"
    results = RunResults.from_dict({
        "stage": "distill", "task": "eprstmt", "split": 0, "val/acc": 0.5,
        "checkpoint": str(run / "checkpoints" / "best.ckpt"), "config": str(run / "config.yaml"),
        "predictions": str(run / "predictions" / "eprstmt_predict.json"), "export_dir": str(run / "export"),
        "pretrained": "bert-base-chinese", "ipet_parent": str(teacher), "ipet_teachers": [str(teacher)],
        "teachers": [{"run": str(teacher), "val/acc": 0.5, "weight": 1.0}], "data/files": {"train": str(teacher / "t.json")},
        "verbalizer": "fuzzy",
    })
    results.write(run)
    stored = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert stored["split"] == "0" and stored["val/acc"] == 0.5 and stored["verbalizer"] == "fuzzy"
    assert (stored["checkpoint"], stored["export_dir"], stored["pretrained"]) == (
        "checkpoints/best.ckpt", "export", "bert-base-chinese")
    assert stored["ipet_parent"] == "../../teachers/0" and stored["ipet_teachers"] == ["../../teachers/0"]
    assert stored["teachers"][0]["run"] == "../../teachers/0" and stored["data/files"]["train"] == "../../teachers/0/t.json"

    moved = tmp_path / "archive" / "sweep" / "run"
    moved.parent.mkdir(parents=True)
    shutil.move(str(run), moved)
    again = read(moved)
    assert again.checkpoint == str(moved / "checkpoints" / "best.ckpt") and again.config == str(moved / "config.yaml")
    assert again.ipet_parent == str(tmp_path / "archive" / "teachers" / "0")  # relative, as the sweep was laid out
    # A run's own file is never looked up outside its folder, whatever the stored path says.
    (moved / "results.json").write_text(json.dumps({**stored, "checkpoint": "../../other/checkpoints/best.ckpt"}))
    assert RunFolder(moved).checkpoint_path == moved / "checkpoints" / "best.ckpt"
