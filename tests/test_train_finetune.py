"""End-to-end runs of the fine-tuning stage through train.py on real FewCLUE rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules.runs.results import RunFolder
from tests.conftest import TASKS
from tests.helpers import read_jsonl, run_cli
from train import train

OFFICIAL_LABELS = {
    "eprstmt": {"Positive", "Negative"},
    "bustm": {"0", "1"},
    "ocnli": {"entailment", "neutral", "contradiction"},
    "csl": {"0", "1"},
    "cluewsc": {"true", "false"},
    "tnews": {str(i) for i in range(100, 117)} - {"105", "111"},
    "iflytek": {str(i) for i in range(119)},
}


@pytest.mark.parametrize("task", TASKS)
def test_each_task_trains_tests_on_test_public_and_writes_its_leaderboard_file(
    task, make_config, fewclue_with_test_public, shared_fewclue
):
    cfg = make_config([f"task={task}", "trainer.max_steps=3", "data.batch_size=4"], fewclue_with_test_public)
    results = train(cfg)
    assert results["test/acc"] is not None and 0.0 <= results["test/acc"] <= 1.0
    assert results["val/acc"] is not None
    rows = read_jsonl(results["predictions"])
    expected_ids = [r["id"] for r in read_jsonl(shared_fewclue / task / "test.json")]
    assert [r["id"] for r in rows] == expected_ids
    if task == "chid":
        assert all(set(r) == {"id", "answer"} and isinstance(r["answer"], int) and 0 <= r["answer"] < 7 for r in rows)
    elif task == "csldcp":
        names = {line.strip() for line in open(shared_fewclue / "csldcp/labels_all.txt", encoding="utf-8")}
        assert {r["label"] for r in rows} <= names
    else:
        assert {r["label"] for r in rows} <= OFFICIAL_LABELS[task]


def test_default_run_writes_results_and_config(make_config, fewclue_with_test_public):
    cfg = make_config(["trainer.max_epochs=2"], fewclue_with_test_public)
    results = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    saved = json.loads((run_dir / "results.json").read_text())
    assert RunFolder(run_dir).results.to_dict() == json.loads(json.dumps(results))
    for key in ("stage", "task", "split", "seed", "val/acc", "test/acc", "predictions", "config"):
        assert key in saved
    assert saved["stage"] == "finetune" and saved["task"] == "eprstmt" and saved["split"] == "0"
    assert saved["global_step"] == 2 * 2  # 32 rows, batch 16, 2 epochs
    assert saved["config"] == "config.yaml" and saved["predictions"] == "predictions/eprstmt_predict.json"
    assert (run_dir / "config.yaml").read_text().count("_target_") > 3  # the resolved config sits beside it


def test_without_test_public_test_acc_is_null(make_config):
    results = train(make_config(["trainer.max_steps=2"]))
    assert results["test/acc"] is None and results["test_set"] is None


def test_fp16_on_cpu_stops_with_one_line_reason(tmp_path, shared_fewclue):
    done = run_cli(["precision=16-mixed", f"data.data_dir={shared_fewclue}"], cwd=tmp_path)
    assert done.returncode == 2
    assert "precision=16-mixed needs a CUDA GPU" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_bad_data_stops_the_cli_before_training(tmp_path, shared_fewclue):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shared_fewclue / "eprstmt", data / "eprstmt")
    lines = (data / "eprstmt/train_0.json").read_text(encoding="utf-8").splitlines()
    lines[6] = lines[6][:-1]
    (data / "eprstmt/train_0.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = run_cli([f"data.data_dir={data}"], cwd=tmp_path)
    assert done.returncode == 2
    assert f"{data}/eprstmt/train_0.json:7: malformed JSON" in done.stderr
    assert "Epoch" not in done.stderr + done.stdout


def test_wandb_logger_runs_offline_without_account(tmp_path, shared_fewclue):
    env = {"WANDB_MODE": "", "WANDB_API_KEY": "", "HOME": str(tmp_path)}
    done = run_cli(
        ["logger=wandb", "trainer.max_steps=2", f"data.data_dir={shared_fewclue}", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    offline_runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb"))


def test_wandb_run_is_finished_even_when_training_fails(make_config, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_config(["logger=wandb", "trainer.max_steps=5", "+callbacks.fail._target_=tests.helpers.FailAfterFirstStep"])
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg)
    assert wandb.run is None  # finished (with exit code 1), not left open
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/*.wandb"))
