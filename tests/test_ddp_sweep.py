"""Hydra multirun with DDP on CPU (gloo): every job launches its own ranks, in its own directory, and ends clean
(callbacks/ddp_sweep.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil

from callbacks.ddp_sweep import RANK_MARKER, DdpSweepJobs
from tests.helpers import ROOT, run_cli

TINY = ["stage=finetune", "model=tiny", "trainer.max_epochs=1", "trainer.limit_val_batches=1", "trainer.limit_predict_batches=1",
        "keep_checkpoints=false", "callbacks.progress_bar.refresh_rate=0"]


def test_ddp_sweep_runs_every_job_with_its_own_two_processes(tmp_path, shared_fewclue):
    sweep = tmp_path / "sweep"
    # no MASTER_PORT: each job finds a free port of its own
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "LOCAL_RANK", "WORLD_SIZE")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "strategy=ddp",
         "trainer.devices=2", "task=eprstmt,bustm", *TINY, f"data.data_dir={shared_fewclue}",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["task"]: r for r in (json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json")))}
    assert sorted(results) == ["bustm", "eprstmt"]
    for job, task in enumerate(["eprstmt", "bustm"]):
        # 32 training rows, batch 16 per process, 2 processes: one step in the one epoch (one process: two)
        assert results[task]["global_step"] == 1
        assert results[task]["split"] == "0" and results[task]["val/acc"] is not None
        # rank 1 ran this job, in this job's directory (Lightning names it train_ddp_process_1)
        assert (sweep / str(job) / "train_ddp_process_1.log").is_file()
    # each job initialised its own two-member process group (before the fix, job 2 reused job 1's)
    assert done.stderr.count("MEMBER: 2/2") == 2 and done.stderr.count("MEMBER: 1/2") == 2
    # no rank re-ran the sweep somewhere else, and none outlives the sweep
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()
    assert not [p for p in psutil.process_iter(["cmdline"]) if any(str(sweep) in a for a in p.info["cmdline"] or [])]


def test_one_and_then_two_processes_in_one_sweep(tmp_path, shared_fewclue):
    """trainer.devices=1,2: before the fix job 2 launched no process and trained on job 1's one-member group
    with a two-replica sampler (half the rows), then failed."""
    sweep = tmp_path / "sweep"
    done = run_cli(["-m", "strategy=ddp", "trainer.devices=1,2", *TINY, f"data.data_dir={shared_fewclue}",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [json.loads((sweep / str(job) / "results.json").read_text())["global_step"] for job in (0, 1)]
    assert steps == [2, 1]  # 32 rows, batch 16: two steps on one process, one on two
    assert done.stderr.count("MEMBER: 1/1") == 1 and done.stderr.count("MEMBER: 2/2") == 1


def test_a_failed_job_ends_its_ranks_and_the_lightning_observer_lets_go(tmp_path):
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"{RANK_MARKER}1"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # not a rank: left alone
    observer = _ChildProcessObserver(main_pid=os.getpid(), child_processes=[rank], sleep_period=3600)
    observer.start()
    try:
        started = time.monotonic()
        DdpSweepJobs(rank_exit_timeout=60)._end_ranks(failed=True)
        assert rank.poll() is not None and time.monotonic() - started < 10
        # the observer would SIGKILL this process for the rank's non-zero exit: it watches nothing now
        assert observer._child_processes == []
        assert other.poll() is None
    finally:
        for process in (rank, other):
            process.kill()
            process.wait()
