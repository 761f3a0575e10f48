"""scripts/ensemble_heldout.py: separately trained runs pooled as PET's ensemble on the held-out rows; each member
re-scores to the accuracy it reported, and the ensemble is the weighted mean of the members' distributions."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from scripts.ensemble_heldout import ensemble_log_probs, main
from tests.helpers import run_cli


def test_the_ensemble_is_the_weighted_mean_of_the_members_distributions():
    members = [torch.tensor([[0.9, 0.1]]).log(), torch.tensor([[0.2, 0.8]]).log()]
    assert ensemble_log_probs(members, [1.0, 1.0]).exp().tolist()[0] == pytest.approx([0.55, 0.45])
    # weights 1 and 3: 0.25 * 0.9 + 0.75 * 0.2 = 0.375
    assert ensemble_log_probs(members, [1.0, 3.0]).exp().tolist()[0] == pytest.approx([0.375, 0.625])


@pytest.fixture(scope="module")
def set_runs(tmp_path_factory, shared_fewclue):
    work = tmp_path_factory.mktemp("ensemble")
    folders = {}
    for name, extra in (("v1", "verbalizer=v1"), ("v2", "verbalizer=v2"), ("other_rows", "data.heldout_max=32")):
        folders[name] = work / name
        done = run_cli([f"data.data_dir={shared_fewclue}", f"hydra.run.dir={work / name / 'bustm' / '0'}",
                        "stage=fuzzy_pet", "task=bustm", "trainer.max_epochs=1", "min_updates=0", "data.heldout_max=64",
                        "trainer.limit_predict_batches=1", "logger=none", extra], cwd=work)
        assert done.returncode == 0, done.stderr[-3000:]
    return folders


def test_members_rescore_to_their_reported_accuracies_and_the_table_reads_the_ensemble(set_runs, tmp_path, capsys):
    out = tmp_path / "ensemble"
    assert main([str(set_runs["v1"]), str(set_runs["v2"]), "--out", str(out), "--weighting", "train_acc_before"]) == 0
    written = json.loads((out / "bustm" / "0" / "results.json").read_text())
    reported = [json.loads((set_runs[v] / "bustm" / "0" / "results.json").read_text()) for v in ("v1", "v2")]
    assert written["ensemble/member_heldout_acc"] == pytest.approx([r["heldout/acc"] for r in reported], abs=1e-4)
    assert written["ensemble/member_val_acc"] == pytest.approx([r["val/acc"] for r in reported], abs=1e-4)
    assert written["ensemble/weights"] == pytest.approx([r["train/acc_before"] for r in reported], abs=1e-4)
    assert (written["task"], written["split"], written["data/heldout_rows"]) == ("bustm", "0", 64)
    # the members relative to the ensemble's folder, so that a copied tree of runs still names them
    folder = out / "bustm" / "0"
    assert written["ensemble/members"] == [os.path.relpath(set_runs[v] / "bustm" / "0", folder) for v in ("v1", "v2")]
    # Accuracies on 64 rows are multiples of 1/64.
    assert math.isclose(written["heldout/acc"] * 64, round(written["heldout/acc"] * 64), abs_tol=0.01)

    from scripts.heldout_table import main as table
    table([f"v1={set_runs['v1']}", f"ensemble={out}"])
    assert f"| bustm | {100 * reported[0]['heldout/acc']:.1f} ± 0.0 (1)" in capsys.readouterr().out


def test_one_run_twice_is_that_run_and_members_must_score_the_same_rows(set_runs, tmp_path):
    same = tmp_path / "same"
    assert main([str(set_runs["v1"]), str(set_runs["v1"]), "--out", str(same)]) == 0
    written = json.loads((same / "bustm" / "0" / "results.json").read_text())
    reported = json.loads((set_runs["v1"] / "bustm" / "0" / "results.json").read_text())
    assert written["heldout/acc"] == pytest.approx(reported["heldout/acc"], abs=1e-4)
    with pytest.raises(SystemExit, match="data.heldout_max=64, where .*other_rows.* has 32"):
        main([str(set_runs["other_rows"]), str(set_runs["v1"]), "--out", str(tmp_path / "mixed")])
