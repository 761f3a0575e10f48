"""The edges of a run's contract (docs/reliability.md), through the CLI with model=tiny and real FewCLUE rows: a bad
unlabeled.json or a cut encoder file found before training, a resumed run's metrics.csv, a folder that cannot be
written or a disk that fills up, signals while testing or predicting, a bad job of a multirun, predict.py on a ZeRO-3
run, a teacher's damaged cache."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, cli_environment, read_jsonl, run_cli, with_test_defaults
from tests.test_reliability import RESUMABLE, one_error_line, start, straight_and_killed, wait_for
from tests.test_strategies import clean_rank_environment, free_port  # noqa: F401 (autouse fixture)

FAULTS = ROOT / "tests" / "faults"  # sitecustomize.py: a read-only folder or a full disk, in a child process
QUICK = ["trainer.max_epochs=1", "trainer.limit_predict_batches=1"]
SHARD = "model-00002-of-00004.safetensors"


def run_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def broken_copy(shared_fewclue: Path, root: Path) -> tuple[Path, Path]:
    """A data folder whose eprstmt/unlabeled.json has a malformed line 7 and a null text on line 10 (the other tasks:
    links to the shared ones)."""
    data = root / "data"
    data.mkdir()
    for task in shared_fewclue.iterdir():
        if task.name != "eprstmt":
            (data / task.name).symlink_to(task)
    shutil.copytree(shared_fewclue / "eprstmt", data / "eprstmt")
    unlabeled = data / "eprstmt" / "unlabeled.json"
    lines = unlabeled.read_text(encoding="utf-8").split("\n")
    lines[6] = '{"id": 6, "sentence": "没有右括号"'
    lines[9] = '{"id": 9, "sentence": null}'
    unlabeled.chmod(0o644)
    unlabeled.write_text("\n".join(lines), encoding="utf-8")
    return data, unlabeled


def fake_teacher(folder: Path) -> Path:
    """A finished eprstmt run that has scored unlabeled rows (results.json and unlabeled_probs.pt, no checkpoint)."""
    folder.mkdir()
    torch.save({"task": "eprstmt", "split": "0", "labels": ["Negative", "Positive"], "ids": [0, 1],
                "probs": torch.tensor([[0.9, 0.1], [0.2, 0.8]])}, folder / "unlabeled_probs.pt")
    (folder / "results.json").write_text(json.dumps({"val/acc": 0.5, "task": "eprstmt", "split": "0"}))
    return folder


# -- 1. unlabeled.json is read before training by every run that reads it -------------------------------------
UNLABELED_READERS = {
    "self_training": ["stage=fuzzy_pet", "callbacks.self_training.rounds=1"],
    "mlm_weight": ["stage=fuzzy_pet", "stage.mlm_weight=0.1"],
    "unlabeled_probs": ["+callbacks.unlabeled_probs={_target_:callbacks.unlabeled_probs.UnlabeledProbs,"
                        "output_dir:${paths.output_dir},batch_size:64}"],
    "distill": ["stage=distill", "distill.weighting=dev_acc"],
    "entailment": ["stage=entailment"],
}


@pytest.mark.parametrize("reader", [*UNLABELED_READERS, "finetune"])
def test_a_bad_unlabeled_row_stops_every_run_that_reads_them_before_training(reader, tmp_path, shared_fewclue):
    data, unlabeled = broken_copy(shared_fewclue, tmp_path)
    extra = [f"distill.teachers={fake_teacher(tmp_path / 'teacher')}"] if reader == "distill" else []
    done = run_cli([*UNLABELED_READERS.get(reader, []), *extra, *QUICK, "logger=none", f"data.data_dir={data}",
                    f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    if reader == "finetune":  # reads no unlabeled row: a bad one is none of its business
        assert done.returncode == 0, done.stderr[-3000:]
        return
    assert done.returncode == 2, done.stderr[-3000:]
    assert one_error_line(done) == (f"error: {unlabeled}:7: malformed JSON (Expecting ',' delimiter at column 30) "
                                    "(and 1 more bad row(s), line(s) 10)")
    # before training: nothing of the fit was written (config.yaml is written when the fit starts)
    assert not {"config.yaml", "checkpoints", "results.json"} & set(run_files(tmp_path / "run"))


# -- 2. a cut or damaged encoder file ---------------------------------------------------------------------------
def encoder_copy(folder: Path) -> Path:
    source = Path(os.environ.get("ZH_MLM_SMALL", ROOT.parent / "shared" / "encoders" / "zh-mlm-small"))
    if not (source / SHARD).is_file():
        pytest.skip(f"no sharded encoder at {source}; set ZH_MLM_SMALL")
    shutil.copytree(source, folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage", ["cut_shard", "missing_shard", "cut_bin"])
def test_a_cut_or_missing_encoder_file_is_one_line_naming_it_before_the_data_is_read(damage, tmp_path, shared_fewclue):
    encoder = encoder_copy(tmp_path / "encoder")
    if damage == "cut_shard":
        cut(encoder / SHARD)
        expected = f"{encoder / SHARD} is damaged or truncated (Error while deserializing header: incomplete metadata"
    elif damage == "missing_shard":
        (encoder / SHARD).unlink()
        expected = f"model.safetensors.index.json names {SHARD}, which is not there; copy or download the checkpoint"
    else:  # a PyTorch archive instead of safetensors
        state = {f"w{i}": torch.randn(64, 64) for i in range(8)}
        for path in encoder.glob("model*.safetensors*"):
            path.unlink()
        torch.save(state, encoder / "pytorch_model.bin")
        cut(encoder / "pytorch_model.bin", 0.9)
        expected = f"{encoder / 'pytorch_model.bin'} is damaged or truncated (File is not a zip file)"
    done = run_cli(["model=hf", f"model.pretrained={encoder}", *QUICK, "logger=none", f"data.data_dir={shared_fewclue}",
                    f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_error_line(done)
    assert line.startswith(f"error: model.pretrained={encoder}: ") and expected in line, line
    assert "config.yaml" not in run_files(tmp_path / "run")


# -- 3. a resumed run continues metrics.csv -------------------------------------------------------------------------
def csv_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "csv" / "metrics.csv").open(newline="", encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(handle)]


def test_a_resumed_run_continues_metrics_csv_and_a_failed_resume_deletes_nothing(tmp_path, shared_fewclue):
    common = [*RESUMABLE[:-1], "logger=csv", f"data.data_dir={shared_fewclue}"]
    last = straight_and_killed(tmp_path, common)
    before = (tmp_path / "killed" / "csv" / "metrics.csv").read_bytes()
    assert csv_rows(tmp_path / "killed")  # the rows of the epochs before the kill are on disk
    # A resume that fails once its loggers and loops are set up, before its first step, leaves the history alone.
    failed = run_cli([*common, f"ckpt_path={last}", "allow_resume_changes=true",
                      "+callbacks.fail={_target_:tests.faults.callbacks.FailAtTrainStart}"], cwd=tmp_path)
    assert failed.returncode != 0 and "simulated failure before the first step" in failed.stderr
    assert (tmp_path / "killed" / "csv" / "metrics.csv").read_bytes() == before
    # (allow_resume_changes: the failed resume's config.yaml names its extra callback)
    resumed = run_cli([*common, f"ckpt_path={last}", "allow_resume_changes=true", f"hydra.run.dir={tmp_path}/resumed"],
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The earlier rows and the resumed run's, each step's metrics once: the uninterrupted run's history.
    rows = csv_rows(tmp_path / "killed")
    assert len({(row["step"], tuple(sorted(row))) for row in rows}) == len(rows)
    assert sorted(map(json.dumps, rows)) == sorted(map(json.dumps, csv_rows(tmp_path / "straight")))


# -- 4. a folder that cannot be written, a disk that fills up --------------------------------------------------------
def faulty(folder: Path, name: str | None = None) -> dict:
    env = {"PYTHONPATH": f"{FAULTS}:{ROOT}", "FAULT_DIR": str(folder)}
    return {**env, "FAULT_NAME": name, "FAULT_AFTER": "100"} if name else env


def test_a_read_only_run_folder_is_one_line_before_anything_is_written(tmp_path, shared_fewclue):
    common = [*QUICK, "logger=none", "callbacks.last_checkpoint.min_interval_s=0", f"data.data_dir={shared_fewclue}"]
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    done = run_cli([*common, f"hydra.run.dir={read_only}/run"], cwd=tmp_path, env=faulty(read_only))
    assert done.returncode == 2, done.stderr[-3000:]
    assert one_error_line(done) == (f"error: {read_only / 'run'} cannot be written: Read-only file system; give a "
                                    "folder this user can write (hydra.run.dir)")
    assert run_files(read_only) == []
    # resuming a run whose folder is read-only: the run continues in its folder, so it stops at once
    first = run_cli([*common, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    files = {path: path.read_bytes() for path in (tmp_path / "run").rglob("*") if path.is_file()}
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    done = run_cli([*common, f"ckpt_path={last}", f"hydra.run.dir={tmp_path}/elsewhere"], cwd=tmp_path,
                   env=faulty(tmp_path / "run"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert one_error_line(done) == (f"error: {tmp_path / 'run'} cannot be written: Read-only file system; give a "
                                    "folder this user can write (ckpt_path=<a copy of the run>/checkpoints/last.ckpt)")
    assert {path: path.read_bytes() for path in (tmp_path / "run").rglob("*") if path.is_file()} == files


@pytest.mark.parametrize(("name", "written"), [("tokenizer_config.json", "tokenizer"),
                                               ("metrics.csv", "csv/metrics.csv"),
                                               ("eprstmt_predict.json*", "predictions/eprstmt_predict.json")])
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_partial_file(name, written, tmp_path, shared_fewclue):
    run_dir = tmp_path / "run"
    done = run_cli([*QUICK, f"data.data_dir={shared_fewclue}", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                   env=faulty(run_dir, name))
    assert done.returncode == 2, done.stderr[-3000:]
    assert one_error_line(done) == (f"error: cannot write {run_dir / written}: No space left on device; free space "
                                    "there or give another hydra.run.dir")
    files = run_files(run_dir)
    assert not [f for f in files if f.endswith(".tmp")] and "results.json" not in files
    if written == "tokenizer":  # never half a tokenizer: predict.py would load it
        assert not [f for f in files if f.startswith("tokenizer")]


# -- 5. signals while testing and predicting ------------------------------------------------------------------------
@pytest.mark.parametrize(("phase", "signum", "code"), [("test", signal.SIGTERM, 143), ("predict", signal.SIGTERM, 143),
                                                       ("predict", signal.SIGINT, 130)])
def test_a_signal_while_testing_or_predicting_ends_the_run_naming_what_was_written(
    phase, signum, code, tmp_path, shared_fewclue
):
    marker = tmp_path / "there"
    common = ["trainer.max_epochs=2", "trainer.limit_predict_batches=1", "logger=none",
              "callbacks.last_checkpoint.min_interval_s=0",
              f"data.data_dir={shared_fewclue}", f"hydra.run.dir={tmp_path}/run"]
    pause = f"+callbacks.pause={{_target_:tests.faults.callbacks.PauseAt,phase:{phase},marker:'{marker}',seconds:600}}"
    stopped = start([*common, pause])
    wait_for(marker, stopped)
    stopped.send_signal(signum)
    _, stderr = stopped.communicate(timeout=600)
    assert stopped.returncode == code, stderr[-3000:]
    line = [entry for entry in stderr.split("\n") if entry.startswith("stopped:")]
    run_dir = tmp_path / "run"
    doing = {"test": "testing the selected checkpoint on the labelled sets",
             "predict": "predicting the leaderboard file"}[phase]
    assert line == [f"stopped: interrupted by {signal.Signals(signum).name} while {doing} (training ended at step 4, "
                    f"epoch 2); {run_dir / 'checkpoints' / 'best.ckpt'} (the last weights) is written, results.json is "
                    f"not; resume with ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'} (same overrides) to test and "
                    "predict again"], stderr[-3000:]
    assert "Traceback" not in stderr and not (run_dir / "results.json").exists()
    if phase == "predict" and signum == signal.SIGTERM:
        # the same overrides but the pause (a test's device, hence allow_resume_changes)
        resumed = run_cli([*common, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "allow_resume_changes=true"],
                          cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert json.loads((run_dir / "results.json").read_text())["global_step"] == 4


# -- 6. a bad job of a multirun ---------------------------------------------------------------------------------------
# the tests' defaults (tests/helpers.py), as Hydra writes a job's overrides (~key as ~key=null)
DEFAULTS = " ".join(f"{o}=null" if o.startswith("~") and "=" not in o else o for o in with_test_defaults([]))


@pytest.mark.parametrize(("sweep", "expected"), [
    (["task=eprstmt,nosuchtask"], f"error: job 1 (task=nosuchtask {DEFAULTS}): In 'train': Could not find "
                                  "'task/nosuchtask'; allowed in 'task': bustm, chid, cluewsc"),
    (["trainer.max_epochs=2,-3"], f"error: job 1 (trainer.max_epochs=-3 {DEFAULTS}): trainer.max_epochs=-3; "
                                  "allowed: an integer >= 0, or -1 for no limit"),
])
def test_a_bad_job_of_a_multirun_is_one_line_naming_its_overrides_before_any_job_runs(sweep, expected, tmp_path):
    done = run_cli(["-m", *sweep, f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert one_error_line(done).startswith(expected)
    assert not (tmp_path / "sweep").exists()  # no job ran


def test_a_refused_sampling_value_of_own_data_stops_the_sweep_before_any_job_runs(tmp_path):
    example = ROOT / "examples" / "my_task"
    own = [f"hydra.searchpath=[file://{example}/conf]", "task=reviews", "data=files",
           f"data.train={example}/data/train.csv", f"data.dev={example}/data/dev.jsonl"]
    done = run_cli(["-m", *own, "data.shots=4,0", f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_error_line(done)
    assert line.startswith("error: job 1 (") and line.endswith(
        "data.shots=0; allowed: an integer >= 1, or null for every row")
    assert not (tmp_path / "sweep").exists()  # no job ran
    missing = run_cli(["-m", *own, "data.test=null,nope.csv", f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    assert one_error_line(missing).endswith("data.test=nope.csv: no such file")


def test_a_job_that_fails_while_running_names_its_overrides(tmp_path, shared_fewclue):
    data = tmp_path / "data"
    shutil.copytree(shared_fewclue / "eprstmt", data / "eprstmt")
    train_1 = data / "eprstmt" / "train_1.json"
    train_1.chmod(0o644)
    lines = train_1.read_text(encoding="utf-8").split("\n")
    train_1.write_text("\n".join([lines[0], lines[1], '{"id": 3}', *lines[3:]]), encoding="utf-8")
    job = [*QUICK, "logger=none", "data.heldout_max=0", f"data.data_dir={data}"]  # split 0 reads no train_1.json
    done = run_cli(["-m", "data.split=0,1", *job, f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert (tmp_path / "sweep" / "0" / "results.json").is_file()  # job 0 ran
    assert one_error_line(done) == (f"error: job 1 (data.split=1 {' '.join(job)} {DEFAULTS}): {train_1}:3: missing "
                                    "field 'sentence'; row has ['id']")


# -- 7. predict.py on a ZeRO-3 run; a teacher's damaged cache -------------------------------------------------------
def predict_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "predict.py"), *map(str, args)], capture_output=True, text=True,
                          env=cli_environment(), timeout=600)


def test_predict_reads_a_zero3_runs_checkpoint_folder_and_names_it_as_the_runs_own(tmp_path, shared_fewclue):
    run_dir = tmp_path / "run"
    done = run_cli(["strategy=zero3", "trainer.max_steps=2", "logger=none", f"data.data_dir={shared_fewclue}",
                    f"hydra.run.dir={run_dir}"], cwd=tmp_path, env={"MASTER_PORT": str(free_port())})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    checkpoint = run_dir / results["checkpoint"]
    assert checkpoint.is_dir()  # DeepSpeed's folder of shards
    predicted = predict_cli(run_dir, "--input", shared_fewclue / "eprstmt" / "test.json")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    # the labels the run's own prediction (consolidated fp32 weights) wrote for test.json
    records = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [r["label"] for r in records] == [r["label"] for r in read_jsonl(run_dir / results["predictions"])]
    (checkpoint / "latest").unlink()  # a folder that is no DeepSpeed checkpoint: named as the run's, not --checkpoint
    shutil.rmtree(checkpoint / "checkpoint")
    broken = predict_cli(run_dir, "--text", "物流很快")
    assert broken.returncode == 2 and "--checkpoint" not in broken.stderr
    assert broken.stderr.strip().splitlines()[-1] == (
        f"error: {run_dir}: its selected checkpoint {checkpoint}: a folder, but not a DeepSpeed checkpoint (no "
        "'latest' file)")


def test_a_teachers_cut_cache_is_scored_again_or_named_when_it_cannot_be(tmp_path, shared_fewclue):
    common = ["trainer.max_epochs=1", "trainer.limit_predict_batches=1", "logger=none", "data.max_unlabeled=16",
              f"data.data_dir={shared_fewclue}"]
    teacher = tmp_path / "teacher"
    done = run_cli(["stage=fuzzy_pet", *common, f"hydra.run.dir={teacher}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    cache = teacher / "unlabeled_probs.pt"
    torch.save({"ids": list(range(16)), "probs": torch.rand(16, 2)}, cache)
    cut(cache)
    distill = ["stage=distill", "distill.weighting=dev_acc", *common]
    done = run_cli([*distill, f"distill.teachers={teacher}", f"hydra.run.dir={tmp_path}/distill"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"distill: {cache} is damaged (" in done.stdout + done.stderr  # the warning, then scored again
    assert len(torch.load(cache, weights_only=True)["ids"]) == 16
    # a teacher that kept no checkpoint cannot be scored again: one line names the file
    kept_none = tmp_path / "kept_none"
    shutil.copytree(teacher, kept_none, ignore=shutil.ignore_patterns("checkpoints"))
    results = json.loads((kept_none / "results.json").read_text())
    (kept_none / "results.json").write_text(json.dumps({**results, "checkpoint": None}))
    cut(kept_none / "unlabeled_probs.pt")
    done = run_cli([*distill, f"distill.teachers={kept_none}", f"hydra.run.dir={tmp_path}/again"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_error_line(done)
    assert line.startswith(f"error: distill.teachers: {kept_none} has no checkpoint to score its unlabeled rows with, "
                           f"and its {kept_none / 'unlabeled_probs.pt'} is damaged ("), line
    assert line.endswith("train the teacher again with keep_checkpoints=true"), line


def test_a_full_disk_reported_by_a_rust_library_is_one_line_and_leaves_no_partial_folder(tmp_path):
    """tokenizers' save_pretrained writes tokenizer.json from Rust: a full disk comes as a plain Exception that names
    the OS error; it is told like an OSError, and the half-written folder is removed."""
    from datamodules.errors import NotWritable
    from datamodules.runs.writing import replaced

    target = tmp_path / "tokenizer"
    with pytest.raises(NotWritable, match=r"cannot write .*tokenizer: No space left on device; free space there"):
        with replaced(target) as tmp:
            tmp.mkdir()
            (tmp / "tokenizer.json").write_text("{")
            raise Exception("No space left on device (os error 28)")  # noqa: TRY002 - what tokenizers raises
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="not about the disk"):
        with replaced(target):
            raise ValueError("not about the disk")
