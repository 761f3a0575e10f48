"""scripts/pooling_rules.py: a finished Fuzzy-PET run's own pooling rule, re-scored from its checkpoint, gives the
accuracies the run reported, and every rule is a distribution over the task's classes."""

from __future__ import annotations

import json

import pytest

from scripts.pooling_rules import RULES, analyse, main
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def pooled_run(tmp_path_factory, shared_fewclue):
    work = tmp_path_factory.mktemp("pooling_rules")
    done = run_cli([f"data.data_dir={shared_fewclue}", f"hydra.run.dir={work / 'run'}", "stage=fuzzy_pet", "task=bustm",
                    "trainer.max_epochs=2", "data.heldout_max=64", "trainer.limit_predict_batches=1"], cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    return work / "run"


def test_the_runs_own_rule_reproduces_its_reported_held_out_and_per_set_accuracies(pooled_run, tmp_path):
    results = json.loads((pooled_run / "results.json").read_text())
    assert results["pooling"] == "sets" and results["verbalizer_sets"] == ["v1", "v2", "v3"]
    out = analyse(pooled_run)
    assert (out["task"], out["split"]) == ("bustm", "0")
    # The run scored the same checkpoint on the same 64 held-out rows: its pooling (sets) and each set alone.
    assert out["heldout"]["sets"] == pytest.approx(results["heldout/acc"], abs=1e-4)
    for name in ("v1", "v2", "v3"):
        assert out["heldout"][name] == pytest.approx(results[f"heldout/acc_{name}"], abs=1e-4)
    assert set(RULES) <= set(out["heldout"]) and set(RULES) <= set(out["dev"])
    # dev_best is the set with the best dev accuracy; PET's weights are training-row accuracies before training.
    assert out["dev"]["dev_best"] == max(out["dev"][name] for name in ("v1", "v2", "v3"))
    assert all(0.0 <= w <= 1.0 for w in out["set_weights"].values())

    written = tmp_path / "rules.json"
    assert main([str(pooled_run), "--out", str(written)]) == 0
    assert json.loads(written.read_text())[0]["heldout"] == out["heldout"]


def test_starting_weights_are_the_weights_the_run_scored_before_training(pooled_run):
    from datamodules.runs.build import instantiate_with
    from datamodules.runs.predictor import Predictor

    trained = Predictor.load(pooled_run)
    initial = Predictor.load(pooled_run, starting_weights=True)
    assert initial.source == "the starting weights"
    data = instantiate_with(initial.cfg.data)
    data.prepare_data()
    data.setup("fit")
    labels = [row.label for row in data.train_rows]
    accuracy = sum(int(p.argmax()) == y for p, y in zip(initial.class_log_probs(data.train_rows), labels)) / len(labels)
    results = json.loads((pooled_run / "results.json").read_text())
    assert accuracy == pytest.approx(results["train/acc_before"], abs=1 / len(labels) + 1e-6)
    encoder = "backbone.bert.encoder.layer.0.attention.self.query.weight"
    assert not initial.module.state_dict()[encoder].equal(trained.module.state_dict()[encoder])
