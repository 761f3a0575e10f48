"""predict.py through the real CLI on a train.py run: test.json gives exactly the run's leaderboard labels, dev gives
the run's val/acc, probabilities sum to 1, csv on stdin and --text agree with JSON lines, bad input is one line."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from datamodules.runs.results import RunFolder
from tests.conftest import fewclue_dir
from tests.helpers import ROOT, cli_environment, read_jsonl, run_cli

NAMES = {"Positive": "正面", "Negative": "负面"}


def predict_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "predict.py"), *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=1200, env=cli_environment())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """stage=finetune on the shared encoder, eprstmt split 0, two epochs of two batches. A tiny model trained from
    scratch predicts one class for every test.json row, which would make the comparisons below vacuous; the shared
    encoder predicts both."""
    encoder = Path(os.environ.get("ZH_MLM_SMALL", ""))
    if not (encoder / "config.json").is_file():
        pytest.skip("the shared encoder is not found; set ZH_MLM_SMALL")
    data = fewclue_dir()
    work = tmp_path_factory.mktemp("predict")
    done = run_cli([f"data.data_dir={data}", f"hydra.run.dir={work / 'run'}", "model=hf", f"model.pretrained={encoder}",
                    "trainer.max_epochs=2", "+trainer.limit_train_batches=2", "callbacks.last_checkpoint.min_interval_s=0",
                    "logger=none"], cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    return work / "run"


def test_test_json_gives_exactly_the_leaderboard_labels_with_probabilities(run_dir, tmp_path):
    data = fewclue_dir()
    out = tmp_path / "predictions.jsonl"
    done = predict_cli(run_dir, "--input", data / "eprstmt" / "test.json", "--output", out)
    assert done.returncode == 0, done.stderr[-3000:]
    predicted = read_jsonl(out)
    leaderboard = read_jsonl(run_dir / "predictions" / "eprstmt_predict.json")
    assert len(predicted) == len(leaderboard) == 753
    assert [row["id"] for row in predicted] == [row["id"] for row in read_jsonl(data / "eprstmt" / "test.json")]
    assert [row["label"] for row in predicted] == [row["label"] for row in leaderboard]
    counts = Counter(row["label"] for row in leaderboard)
    assert min(counts["Positive"], counts["Negative"]) > 0, counts  # both classes: the equality means something
    for row in predicted:
        assert set(row) == {"id", "label", "label_name", "probs"} and set(row["probs"]) == {"Negative", "Positive"}
        assert abs(sum(row["probs"].values()) - 1.0) < 1e-3  # rounded to 4 digits
        assert all(p == round(p, 4) for p in row["probs"].values())
        assert row["label"] == max(row["probs"], key=row["probs"].get)
        assert row["label_name"] == NAMES[row["label"]]
    assert "753 row(s) predicted with" in done.stderr and "checkpoints/best.ckpt" in done.stderr
    assert "predict: 100%" in done.stderr  # progress on stderr (12 batches of 64)


def test_dev_rows_score_the_runs_val_acc(run_dir):
    """The selected checkpoint on dev_0.json (its labels ignored by predict.py) scores results.json's val/acc."""
    dev = read_jsonl(fewclue_dir() / "eprstmt" / "dev_0.json")
    done = predict_cli(run_dir, "--input", fewclue_dir() / "eprstmt" / "dev_0.json")
    assert done.returncode == 0, done.stderr[-3000:]
    predicted = [json.loads(line) for line in done.stdout.splitlines()]
    correct = sum(p["label"] == row["label"] for p, row in zip(predicted, dev))
    assert len(predicted) == 32 and correct / 32 == RunFolder(run_dir).results.val_acc


def test_csv_on_stdin_and_text_agree_with_json_lines_ids_only_where_given(run_dir, tmp_path):
    texts = [row["sentence"] for row in read_jsonl(fewclue_dir() / "eprstmt" / "test.json")[:3]]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "sentence": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
                     encoding="utf-8")
    from_file = [json.loads(line) for line in predict_cli(run_dir, "--input", jsonl).stdout.splitlines()]
    table = io.StringIO()
    csv.writer(table).writerows([["id", "sentence"], ["a7", texts[0]], ["", texts[1]], ["", texts[2]]])
    csv_text = table.getvalue()
    done = predict_cli(run_dir, "--input", "-", "--format", "csv", stdin=csv_text)
    assert done.returncode == 0, done.stderr[-3000:]
    from_stdin = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row.get("id") for row in from_stdin] == ["a7", None, None]  # csv ids are text; rows 2-3 have none
    assert [row["label"] for row in from_stdin] == [row["label"] for row in from_file]
    for a, b in zip(from_stdin, from_file):  # the same batch: the same numbers
        assert a["probs"] == b["probs"]
    single = predict_cli(run_dir, "--text", texts[1])
    assert single.returncode == 0, single.stderr[-3000:]
    (row,) = [json.loads(line) for line in single.stdout.splitlines()]
    assert "id" not in row and row["label"] == from_file[1]["label"]
    # alone: other padding, so other rounding (bf16 evaluation where the CPU has bf16 units)
    assert all(abs(row["probs"][k] - from_file[1]["probs"][k]) < 0.02 for k in NAMES)


def test_bad_input_is_one_line_naming_file_line_and_field_exit_2(run_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "sentence": "好"}\n{"id": 2, "text": "差"}\n{"id": 3, "sentence": "好"}\n{"id": 4}\n',
                   encoding="utf-8")
    done = predict_cli(run_dir, "--input", bad)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: {bad}:2: missing field 'sentence'; row has ['id', 'text'] (and 1 more bad row(s), line(s) 4)"
    ]
    nowhere = predict_cli(tmp_path / "no_run", "--text", "好")
    assert nowhere.returncode == 2 and nowhere.stderr.strip() == f"error: {tmp_path / 'no_run'}: no such run directory"


def test_other_checkpoints_last_ckpt_and_an_export_folder_that_lacks_the_head(run_dir):
    last = run_dir / "checkpoints" / "last.ckpt"
    done = predict_cli(run_dir, "--checkpoint", last, "--text", "物流很快")
    assert done.returncode == 0 and f"1 row(s) predicted with {last}" in done.stderr
    encoder = Path(os.environ.get("ZH_MLM_SMALL", ROOT.parent / "shared" / "encoders" / "zh-mlm-small"))
    if not (encoder / "config.json").is_file():
        pytest.skip(f"no exported masked LM at {encoder}; set ZH_MLM_SMALL")
    refused = predict_cli(run_dir, "--checkpoint", encoder, "--text", "物流很快")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: --checkpoint {encoder}: an export folder holds the masked LM only, and stage FinetuneModule has "
        "weights of its own (head); give a .ckpt file")


def test_a_run_of_an_older_version_gets_todays_defaults_for_the_keys_it_lacks(run_dir, tmp_path):
    from omegaconf import OmegaConf

    from datamodules.runs.predictor import run_config

    old = tmp_path / "old_run"
    old.mkdir()
    config = OmegaConf.load(run_dir / "config.yaml")
    lacking = "dropout"  # as if stage.dropout had come after this run (stage=finetune)
    del config.stage[lacking]
    OmegaConf.save(config, old / "config.yaml")
    (old / "results.json").write_text((run_dir / "results.json").read_text())
    cfg, folder = run_config(old)
    assert cfg.stage[lacking] == OmegaConf.load(run_dir / "config.yaml").stage[lacking]  # the default it ran with
    assert cfg.data == OmegaConf.load(run_dir / "config.yaml").data and cfg.paths.output_dir == str(old)


def test_an_output_path_that_cannot_be_written_stops_before_any_row_is_predicted(run_dir, tmp_path):
    rows = fewclue_dir() / "eprstmt" / "test.json"
    missing = predict_cli(run_dir, "--input", rows, "--output", tmp_path / "no" / "such" / "out.jsonl")
    onto_folder = predict_cli(run_dir, "--input", rows, "--output", tmp_path)
    assert (missing.returncode, onto_folder.returncode) == (2, 2)
    assert missing.stderr.splitlines()[-1] == (
        f"error: --output {tmp_path / 'no' / 'such' / 'out.jsonl'}: the folder {tmp_path / 'no' / 'such'} does not exist")
    assert onto_folder.stderr.splitlines()[-1] == f"error: --output {tmp_path} is a folder; give a file name"
    assert "predict:" not in missing.stderr + onto_folder.stderr  # no progress bar: nothing was predicted


def test_plain_lines_from_a_txt_file_or_stdin_are_one_text_each_with_line_numbers_as_ids(run_dir, tmp_path):
    texts = [row["sentence"] for row in read_jsonl(fewclue_dir() / "eprstmt" / "test.json")[:3]]
    lines = tmp_path / "reviews.txt"
    lines.write_text(f"{texts[0]}\n\n{texts[1]}\n{texts[2]}\n", encoding="utf-8")
    from_txt = predict_cli(run_dir, "--input", lines)
    from_stdin = predict_cli(run_dir, "--input", "-", "--format", "txt", stdin=lines.read_text(encoding="utf-8"))
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "sentence": t}, ensure_ascii=False) + "\n" for i, t in
                             zip((1, 3, 4), texts)), encoding="utf-8")
    from_jsonl = predict_cli(run_dir, "--input", jsonl)
    assert from_txt.returncode == from_stdin.returncode == from_jsonl.returncode == 0, from_txt.stderr[-2000:]
    rows = [json.loads(line) for line in from_txt.stdout.splitlines()]
    assert [row["id"] for row in rows] == [1, 3, 4]  # the blank line 2 is skipped, not renumbered
    assert from_txt.stdout == from_stdin.stdout == from_jsonl.stdout


def test_a_damaged_checkpoint_is_one_line_naming_it_never_nan_probabilities(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    checkpoint = copy / "checkpoints" / "best.ckpt"
    data = bytearray(checkpoint.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = b"\xff" * 4096  # 4 KiB overwritten inside the weights
    checkpoint.write_bytes(bytes(data))
    done = predict_cli(copy, "--text", "物流很快，包装完好。")
    assert done.returncode == 2 and done.stdout == ""
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: checkpoint {checkpoint}") or line.startswith(f"error: {checkpoint}"), line


def test_a_sweep_folder_predicts_with_its_best_run_on_dev(run_dir, tmp_path):
    import shutil

    sweep = tmp_path / "sweep"
    for job, val_acc in (("0", 0.5), ("1", 0.9)):
        shutil.copytree(run_dir, sweep / job)
        results = json.loads((sweep / job / "results.json").read_text())
        (sweep / job / "results.json").write_text(json.dumps({**results, "val/acc": val_acc}))
    done = predict_cli(sweep, "--text", "物流很快，包装完好。")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (f"{sweep}: a sweep of 2 runs; predicting with its best on dev, {sweep / '1'} (val/acc 0.9000; 1 other "
            "run(s))") in done.stderr
    assert str(sweep / "1" / "checkpoints" / "best.ckpt") in done.stderr


def test_the_cli_imports_torch_only_with_the_model_and_the_backbones_need_no_lightning():
    """The start-up budget, counted in imports rather than seconds: ``--help`` and a bad argument import no torch, and
    building a backbone (with the precision rules its LayerNorms and the evaluation dtype follow) imports no Lightning,
    whose import pulls torchmetrics and matplotlib."""
    code = ("import sys, predict\n"
            "assert not {'torch', 'transformers', 'lightning'} & set(sys.modules), 'import predict'\n"
            "import lightning_modules.encoders.backbones, lightning_modules.scale.precision\n"
            "assert 'lightning' not in sys.modules, 'backbones'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=cli_environment(),
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


def test_one_prediction_composes_todays_config_once_and_reads_the_task_as_saved(run_dir, tmp_path, monkeypatch, capsys):
    """Today's config is composed once (to fill the keys an older run lacks); the task that reads the input comes
    from config.yaml as saved, its moved module followed."""
    import predict
    from datamodules.runs import saved_config
    from datamodules.runs.predictor import run_task

    composed = []
    compose = saved_config.compose_train_config
    monkeypatch.setattr(saved_config, "compose_train_config",
                        lambda *args, **kwargs: composed.append(args) or compose(*args, **kwargs))
    assert predict.main([str(run_dir), "--text", "物流很快"]) == 0
    assert len(composed) == 1
    assert json.loads(capsys.readouterr().out)["label"] in NAMES
    old = tmp_path / "old_run"
    old.mkdir()
    (old / "results.json").write_text((run_dir / "results.json").read_text())
    saved = (run_dir / "config.yaml").read_text(encoding="utf-8")
    (old / "config.yaml").write_text(saved.replace("datamodules.tasks.task_spec.TaskSpec", "datamodules.task_spec.TaskSpec"),
                                     encoding="utf-8")
    assert run_task(old) == run_task(run_dir) and len(composed) == 1
