"""A multirun ends with each job's accuracies, the job chosen on dev and the report command."""

from __future__ import annotations

import json

from tests.helpers import run_cli


def test_a_sweep_prints_its_jobs_the_best_on_dev_and_the_report_command(tmp_path, shared_fewclue):
    sweep = tmp_path / "sweep"
    done = run_cli(["-m", "trainer.max_steps=1", "trainer.limit_predict_batches=1", "logger=none", "seed=1,2",
                    f"data.data_dir={shared_fewclue}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((sweep / job / "results.json").read_text()) for job in ("0", "1")]
    best = max((0, 1), key=lambda job: results[job]["val/acc"])
    lines = done.stdout.strip().splitlines()[-9:]
    assert lines[0] == f"sweep {sweep}: 2 job(s) finished"
    assert lines[2] == "| job | seed | val/acc | heldout/acc |"
    for job in (0, 1):
        mark = " (best on dev)" if job == best else ""
        assert lines[4 + job] == (f"| {job}{mark} | {job + 1} | {100 * results[job]['val/acc']:.1f} | "
                                  f"{100 * results[job]['heldout/acc']:.1f} |")
    assert lines[-2] == f"best on dev: {sweep / str(best)} (val/acc {100 * results[best]['val/acc']:.1f})"
    assert lines[-1] == f"report: python report.py {sweep}"
