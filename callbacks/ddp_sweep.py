"""Multi-process strategies (``strategy=ddp``, ``zero*`` with ``trainer.devices>1``) inside a Hydra multirun.

Lightning's subprocess launcher starts ranks 1..N-1 by re-running the command line (``sys.argv``) with
``hydra.run.dir=<HydraConfig run.dir>``, sets ``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` in the launching process and never destroys the process group. Under
``python train.py -m ...`` that goes wrong three ways (Lightning-AI/pytorch-lightning#11300):

1. each rank-1 process re-runs the *whole sweep* (``-m`` and every comma list are in ``sys.argv``) in a sweep
   directory of its own, so job k's rank 1 is the child's job k only as long as both sides happen to walk
   the same jobs in the same order;
2. from the second job on, ``LOCAL_RANK`` (set by job 1) tells Lightning that processes are created
   externally: the job launches no process and runs on job 1's process group (same port, job 1's world
   size): ``trainer.devices=1,2`` trains job 2 on one process with a two-replica sampler (half the data)
   and then fails; ``trainer.devices=2,1`` kills the sweep in job 2 ("Connection closed by peer");
3. the launching process finishes while its children still run.

This Hydra callback (``conf/hydra/default.yaml``: ``hydra.callbacks.ddp_sweep``) makes every job of a
multirun look like a single run to Lightning. At the start of a job it sets the command line to this job's
own overrides (no ``-m``) and Hydra's ``run.dir`` to the job's directory, so the ranks Lightning starts run
exactly this job, in the same directory. At the end of the job it waits for those ranks to exit (and ends
them if the job failed), destroys the process group, and puts back the launch variables as they were
before the sweep (so the next job launches its own ranks, on a free port unless the user set
``MASTER_PORT``), the command line and torch's thread count. Single runs (no ``-m``) are left alone.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import psutil
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

log = logging.getLogger(__name__)

# What Lightning's launcher and process-group setup write into the launching process's environment
# (and OMP_NUM_THREADS, which it sets when unset, dividing the cores between the ranks).
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")
# Lightning names every rank it launches under Hydra with this job name (``hydra.job.name=train_ddp_process_<rank>``).
RANK_MARKER = "hydra.job.name=train_ddp_process_"


class DdpSweepJobs(Callback):
    def __init__(self, rank_exit_timeout: float) -> None:
        # Seconds a finished job waits for its other ranks to exit before terminating them.
        self.rank_exit_timeout = rank_exit_timeout
        self._env: dict[str, str | None] | None = None  # LAUNCH_ENV before the first job (the user's, a cluster's)
        self._job: dict[str, Any] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._env = {key: os.environ.get(key) for key in LAUNCH_ENV}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return
        self._restore_env()  # (a job run in a process of its own, as under a SLURM launcher, has nothing to undo)
        self._job = {"argv": list(sys.argv), "threads": torch.get_num_threads()}
        # Lightning's launcher builds the ranks' command from these two: this job, in this job's directory.
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
        with read_write(hydra_cfg.run):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self._job is None:
            return
        try:
            self._end_ranks(failed=job_return.status != JobStatus.COMPLETED)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        finally:
            self._restore_env()
            sys.argv = self._job["argv"]
            torch.set_num_threads(self._job["threads"])
            self._job = None

    def _restore_env(self) -> None:
        for key, value in (self._env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def _end_ranks(self, failed: bool) -> None:
        """Wait for the ranks this job launched; a failed job's ranks may be blocked in a collective: end them."""
        ranks = [p for p in psutil.Process().children() if _is_rank(p)]
        if not ranks:
            return
        if failed:
            _stop_lightning_observers()  # it would SIGKILL this process (the whole sweep) when they exit non-zero
            for process in ranks:
                process.terminate()
        gone, alive = psutil.wait_procs(ranks, timeout=5 if failed else self.rank_exit_timeout)
        for process in gone:
            if process.returncode and not failed:
                log.warning("rank process %d exited with code %s after its job completed", process.pid, process.returncode)
        for process in alive:
            log.warning("rank process %d did not exit %s; killing it", process.pid,
                        "after the job failed" if failed else f"within {self.rank_exit_timeout:g} s")
            _stop_lightning_observers()
            process.kill()
        psutil.wait_procs(alive, timeout=5)


def _is_rank(process: psutil.Process) -> bool:
    try:
        return any(arg.startswith(RANK_MARKER) for arg in process.cmdline())
    except psutil.Error:  # exited meanwhile
        return False


def _stop_lightning_observers() -> None:
    """Lightning's ``_ChildProcessObserver`` thread kills the launching process when a rank exits non-zero; with
    nothing left to watch it ends at its next poll."""
    for thread in threading.enumerate():
        if thread.name == "child-process-observer" and isinstance(getattr(thread, "_child_processes", None), list):
            thread._child_processes.clear()
