"""What a run guarantees when things go wrong: one-line errors (exit 2), divergence halts (exit 3),
kill -9 / SIGTERM / SIGINT followed by ``ckpt_path=.../last.ckpt`` give the uninterrupted result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datamodules.errors import DataError
from tests.conftest import datamodule_for
from tests.helpers import ROOT, cli_environment, run_cli, with_test_defaults
from tests.test_strategies import clean_rank_environment, free_port  # noqa: F401 (autouse fixture)

# Several epochs of a few steps each (eprstmt split 0: 32 rows), so that an interruption lands mid-run.
RESUMABLE = ["trainer.max_epochs=6", "callbacks.last_checkpoint.min_interval_s=0", "data.batch_size=8", "trainer.limit_predict_batches=1", "logger=none"]


def one_error_line(done: subprocess.CompletedProcess, prefix: str = "error:") -> str:
    lines = [line for line in done.stderr.split("\n") if line.startswith(prefix)]
    assert len(lines) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    return lines[0]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["seed=abc"], "seed='abc'; allowed: an integer from 0 to 4294967295"),
        (["seed=-1"], "seed=-1; allowed: an integer from 0 to 4294967295"),
        (["seed=99999999999"], "seed=99999999999; allowed: an integer from 0 to 4294967295"),
        (["trainer.max_epochs=-3"], "trainer.max_epochs=-3; allowed: an integer >= 0, or -1 for no limit"),
        (["trainer.max_steps=abc"], "trainer.max_steps='abc'; allowed: an integer >= 0, or -1 for no limit"),
        (["trainer.devices=0"], "trainer.devices=0; allowed: an integer >= 1, -1 (all), auto, or a list of ids"),
        (["data.max_unlabeled=-5"], "data.max_unlabeled=-5; allowed: an integer >= 1, or null for every row"),
        (["stage.max_length=0"], "stage.max_length=0; allowed: an integer >= 8 (tokens per input)"),
        (["data.batch_size=0"], "data.batch_size=0; allowed: an integer >= 1"),
        (["data.num_workers=-1"], "data.num_workers=-1; allowed: an integer >= 0 (0: load in the main process)"),
        (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0; allowed: an integer >= 1"),
        (["stage=fuzzy_pet", "stage.pattern=abc"], "stage.pattern='abc'; allowed: 0..1 (task.patterns of eprstmt)"),
        (["stage=fuzzy_pet", "stage.pattern=1.5"], "stage.pattern=1.5; allowed: 0..1 (task.patterns of eprstmt)"),
        (["stage=fuzzy_pet", "callbacks.self_training.rounds=2", "callbacks.self_training.epochs_per_round=1",
          "trainer.max_epochs=2", "min_updates=0", "min_class_examples=0"],
         "callbacks.self_training.rounds=2 with epochs_per_round=1 needs trainer.max_epochs >= 3 (an epoch after the "
         "last round); this run trains 2"),
        (["stage.optim.lr=-1"], "stage.optim.lr=-1; allowed: a number >= 0"),
        (["stage.lr=1"], "stage.lr is not a key of this configuration"),
        (["+stage.optimizer.lr=-1"], "stage.optimizer is not a setting of stage"),
        (["model=hf", "model.pretrained=null"], "model.pretrained is required with model=hf; point model.pretrained"),
        (["model=hf", "model.pretrained=../no/encoder"], "or train a small model from scratch with model=tiny"),
        (["model=hf", "model.pretrained=/no/such/checkpoint"], "model.pretrained=/no/such/checkpoint: no Hugging Face checkpoint"),
        (["model.attn_implementation=flash"], "model.attn_implementation='flash'; allowed: ['sdpa', 'eager']"),
        (["stage=fuzzy_pet", "callbacks.self_training.threshold=2"], "callbacks.self_training.threshold=2; allowed: 0..1"),
        (["task=nope"], "allowed in 'task': bustm, chid, cluewsc"),
        (["task=nope"], "a task of your own: put nope.yaml in <folder>/task/ and add hydra.searchpath=[file://"),
        (["stage.optim.lrr=1"], "stage.optim.lrr is not a key of this configuration; did you mean stage.optim.lr?"),
        (["data.shot=4"], "did you mean data.shots (a key of data=files: add data=files)?"),
        (["data=files", "data.trian=a.csv"], "data.trian is not a key of this configuration; did you mean data.train?"),
        (["data.train=a.csv"], "data.train is a key of data=files (a task's rows from your own files): add data=files"),
        (["trainer.max_epochs=0"], "would evaluate and predict with untrained weights"),
        (["ckpt_path=/no/such.ckpt"], "ckpt_path=/no/such.ckpt: no such file"),
    ],
)
def test_a_bad_setting_ends_with_one_line_and_exit_2(overrides, expected, tmp_path, shared_fewclue):
    done = run_cli([*overrides, f"data.data_dir={shared_fewclue}", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert expected in one_error_line(done)
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_truncated_checkpoint_is_an_error_naming_it(tmp_path, shared_fewclue):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, good)
    truncated = tmp_path / "last.ckpt"
    truncated.write_bytes(good.read_bytes()[:2000])
    done = run_cli([f"ckpt_path={truncated}", f"data.data_dir={shared_fewclue}", f"hydra.run.dir={tmp_path}/run"],
                   cwd=tmp_path)
    assert done.returncode == 2
    assert f"ckpt_path={truncated}: not a complete checkpoint" in one_error_line(done)


def test_divergence_halts_with_the_step_and_writes_nothing(tmp_path, shared_fewclue):
    done = run_cli(["stage.optim.lr=1e6", "trainer.max_epochs=4", f"data.data_dir={shared_fewclue}",
                    f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert done.returncode == 3
    line = one_error_line(done)
    assert "at step" in line and "training diverged" in line
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "predictions").exists()


def test_zero_shot_cloze_scoring_stays_allowed(tmp_path, shared_fewclue):
    done = run_cli(["stage=fuzzy_pet", "trainer.max_epochs=0", "trainer.limit_predict_batches=1", "logger=none",
                    f"data.data_dir={shared_fewclue}", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["global_step"] == 0 and results["zero_shot"] is True
    # experiment=zero_shot: the same, with calibrated word scores, whatever conf/tuned holds for the task
    done = run_cli(["experiment=zero_shot", "model=tiny", "trainer.limit_predict_batches=1", "logger=none",
                    f"data.data_dir={shared_fewclue}", f"hydra.run.dir={tmp_path}/zero"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "zero/results.json").read_text())
    assert (results["global_step"], results["zero_shot"], results["word_score"]) == (0, True, "calibrated")


def test_a_task_folder_is_used_whole_never_completed_from_the_cache(tmp_path, shared_fewclue):
    data = tmp_path / "data"
    shutil.copytree(shared_fewclue / "eprstmt", data / "eprstmt")
    (data / "eprstmt" / "test.json").unlink()
    shutil.copytree(shared_fewclue / "eprstmt", tmp_path / "cache" / "fewclue" / "eprstmt")  # a complete cache
    module = datamodule_for("eprstmt", tmp_path / "run", data)
    with pytest.raises(DataError, match=rf"{data / 'eprstmt'}: missing test.json"):
        module.prepare_data()


# -- interruptions and resumption ----------------------------------------------------------------
def start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *with_test_defaults(args)], env=cli_environment(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 1200) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def outcome(run_dir: Path) -> tuple:
    results = json.loads((run_dir / "results.json").read_text())
    return results["val/acc"], results["train/loss"], results["val/loss"], results["global_step"]


def straight_and_killed(tmp_path: Path, common: list[str]) -> Path:
    """The run ``common`` to its end in ``tmp_path/straight``, and again in ``tmp_path/killed`` killed (-9) once its
    last.ckpt exists; that last.ckpt."""
    straight = run_cli([*common, f"hydra.run.dir={tmp_path}/straight"], cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = start([*common, f"hydra.run.dir={tmp_path}/killed"])
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    wait_for(last, killed)
    killed.kill()
    killed.communicate()
    return last


def test_kill_9_then_resume_gives_the_uninterrupted_result(tmp_path, shared_fewclue):
    common = [*RESUMABLE, f"data.data_dir={shared_fewclue}"]
    last = straight_and_killed(tmp_path, common)
    saved = torch.load(last, map_location="cpu", weights_only=False)["callbacks"]["PhaseTimes"]["seconds"]
    resumed = run_cli([*common, f"ckpt_path={last}", f"hydra.run.dir={tmp_path}/resumed"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The run continues in its own folder: the best checkpoint so far and the results stay together.
    assert outcome(tmp_path / "killed") == outcome(tmp_path / "straight")
    # Its timing counts the killed process's seconds up to last.ckpt too.
    timing = json.loads((tmp_path / "killed" / "results.json").read_text())["timing"]
    assert saved["train"] > 0 and timing["validate"] >= saved["validate"]
    assert timing["train"] + timing["validate"] >= saved["train"]


@pytest.mark.parametrize(("strategy", "signum", "code"), [("zero2", signal.SIGTERM, 143), ("auto", signal.SIGINT, 130)])
def test_a_signal_ends_the_run_honestly_and_resuming_gives_the_same_result(
    strategy, signum, code, tmp_path, shared_fewclue
):
    common = [*RESUMABLE, f"strategy={strategy}", f"data.data_dir={shared_fewclue}"]
    env = {"MASTER_PORT": str(free_port())}
    straight = run_cli([*common, f"hydra.run.dir={tmp_path}/straight"], cwd=tmp_path, env=env)
    assert straight.returncode == 0, straight.stderr[-3000:]
    stopped = start([*common, f"hydra.run.dir={tmp_path}/stopped"], env={"MASTER_PORT": str(free_port())})
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    wait_for(last / "latest" if strategy.startswith("zero") else last, stopped)
    stopped.send_signal(signum)
    _, stderr = stopped.communicate(timeout=1200)
    if stopped.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert stopped.returncode == code, stderr[-3000:]
    line = [entry for entry in stderr.split("\n") if entry.startswith("stopped:")]
    assert len(line) == 1 and f"interrupted by {signal.Signals(signum).name}" in line[0] and "ckpt_path=" in line[0]
    assert not (tmp_path / "stopped" / "results.json").exists()
    resumed = run_cli([*common, f"ckpt_path={last}", f"hydra.run.dir={tmp_path}/resumed"], cwd=tmp_path,
                      env={"MASTER_PORT": str(free_port())})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert outcome(tmp_path / "stopped") == outcome(tmp_path / "straight")


def test_a_search_path_that_is_not_a_folder_is_named_before_the_task_error(tmp_path, shared_fewclue):
    done = run_cli(["hydra.searchpath=[file://my_task/conf]", "task=reviews", f"hydra.run.dir={tmp_path}/run"],
                   cwd=tmp_path)
    assert done.returncode == 2
    warning = next(line for line in done.stderr.split("\n") if line.startswith("warning: hydra.searchpath"))
    assert f"{tmp_path / 'my_task' / 'conf'} is not a folder" in warning
    assert "a task of your own: put reviews.yaml in <folder>/task/" in one_error_line(done)


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU where there is none")
def test_a_gpu_asked_for_on_a_machine_without_one_is_one_line(tmp_path, shared_fewclue):
    done = run_cli(["trainer.accelerator=gpu", f"data.data_dir={shared_fewclue}", f"hydra.run.dir={tmp_path}/run"],
                   cwd=tmp_path)
    assert done.returncode == 2
    assert one_error_line(done) == "error: trainer.accelerator=gpu: no CUDA GPU on this machine; allowed here: cpu or auto"


def test_a_run_folder_belongs_to_one_run(tmp_path, shared_fewclue):
    """A finished run's folder is not written into again unasked; a live run's folder is refused while it runs."""
    from datamodules.runs import ownership

    common = ["trainer.max_steps=1", "trainer.limit_predict_batches=1", "logger=none", f"data.data_dir={shared_fewclue}"]
    first = run_cli([*common, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli([*common, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert again.returncode == 2
    assert one_error_line(again) == (f"error: {tmp_path / 'run'} holds a finished run (results.json); give another "
                                     "hydra.run.dir, or overwrite=true to replace it")
    assert run_cli([*common, f"hydra.run.dir={tmp_path}/run", "overwrite=true"], cwd=tmp_path).returncode == 0
    held = ownership.claim(tmp_path / "live", resuming=False, overwrite=False)  # a live run, here this test
    try:
        refused = run_cli([*common, f"hydra.run.dir={tmp_path}/live"], cwd=tmp_path)
    finally:
        ownership.release(held)
    assert refused.returncode == 2
    assert one_error_line(refused) == (f"error: {tmp_path / 'live'} is in use by a live run (pid {os.getpid()}); "
                                       "give another hydra.run.dir")
    assert run_cli([*common, f"hydra.run.dir={tmp_path}/live"], cwd=tmp_path).returncode == 0  # released


def test_a_resume_with_other_settings_is_refused_naming_each_key(tmp_path, shared_fewclue):
    """The optimizer's state would keep the old learning rate while config.yaml recorded the new one."""
    common = [*RESUMABLE, "trainer.max_epochs=2", f"data.data_dir={shared_fewclue}", f"hydra.run.dir={tmp_path}/run"]
    first = run_cli(common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    changed = run_cli([*common, f"ckpt_path={last}", "stage.optim.lr=0.01", "seed=7"], cwd=tmp_path)
    assert changed.returncode == 2
    assert one_error_line(changed) == (
        f"error: ckpt_path={last}: resuming with other settings than the run's {tmp_path / 'run' / 'config.yaml'}: "
        "data.seed: 42 -> 7; seed: 42 -> 7; stage.optim.lr: 3e-05 -> 0.01; resume with the run's own settings, or "
        "allow_resume_changes=true to go on with the checkpoint's state anyway")
    longer = run_cli([*common, f"ckpt_path={last}", "trainer.max_epochs=3"], cwd=tmp_path)  # Lightning honours it
    assert longer.returncode == 0, longer.stderr[-3000:]


def test_resuming_from_the_selected_weights_or_another_archive_is_one_line(tmp_path, shared_fewclue):
    import zipfile

    common = [*RESUMABLE, "trainer.max_epochs=1", f"data.data_dir={shared_fewclue}"]
    first = run_cli([*common, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    weights = run_cli([*common, f"ckpt_path={best}", f"hydra.run.dir={tmp_path}/again"], cwd=tmp_path)
    assert weights.returncode == 2
    assert one_error_line(weights) == (
        f"error: ckpt_path={best}: the weights alone (the checkpoint the run tested), without the optimizer and loop "
        "state a resume needs; resume from <run>/checkpoints/last.ckpt")
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("notes.txt", "not a checkpoint")
    other = run_cli([*common, f"ckpt_path={archive}", f"hydra.run.dir={tmp_path}/other"], cwd=tmp_path)
    assert other.returncode == 2
    assert one_error_line(other).startswith(f"error: ckpt_path={archive}: not a Lightning checkpoint")
