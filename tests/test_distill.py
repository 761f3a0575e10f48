"""PET's ensemble and distillation, and iPET: teachers' unlabeled probabilities, soft labels, the loss, the runs."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from callbacks.pseudo_labels import most_confident_by_class
import datamodules.teachers.ensemble as ensemble_module
from datamodules.runs.results import RunFolder
from datamodules.teachers.ensemble import TeacherEnsemble
from datamodules.errors import ConfigError
from lightning_modules.stages.distill import distillation_loss
from tests.conftest import compose_config
from tests.helpers import read_jsonl, run_cli
from train import build, run, train


def fake_teacher(run_dir, val_acc, ids, probs, task="eprstmt", split="0", generation=None, before=None):
    run_dir.mkdir(parents=True)
    torch.save({"task": task, "split": split, "labels": ["Negative", "Positive"], "ids": ids,
                "probs": torch.tensor(probs)}, run_dir / "unlabeled_probs.pt")
    results = {"val/acc": val_acc, "task": task, "split": split}
    if before is not None:
        results["train/acc_before"] = before
    if generation is not None:
        results["generation"] = generation
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def test_distillation_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    log_probs = F.log_softmax(logits, -1)
    soft = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    is_soft = torch.tensor([False, True])
    # Row 0 (labelled, class 0): -log softmax([2, 0])[0] = log(1 + e^-2).
    hard = math.log(1 + math.exp(-2))
    # Row 1 (soft, T = 2): student = softmax(log_probs / 2) = softmax([0, 1] / 2) (shifts cancel).
    q1 = 1 / (1 + math.exp(0.5))
    q = [q1, 1 - q1]
    kl = 4 * sum(p * math.log(p / s) for p, s in zip([0.3, 0.7], q))
    assert distillation_loss(log_probs, soft, is_soft, 2.0).item() == pytest.approx((hard + kl) / 2, abs=1e-6)


def test_ensemble_weights_teachers_by_dev_accuracy_and_keeps_rows_every_teacher_scored(tmp_path):
    a = fake_teacher(tmp_path / "sweep" / "0", 0.5, [1, 2, 3], [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    fake_teacher(tmp_path / "sweep" / "1", 0.75, [2, 1], [[0.6, 0.4], [0.7, 0.3]])
    ensemble = TeacherEnsemble(str(tmp_path / "sweep"), "dev_acc", 2.0)
    assert [t.run_dir for t in ensemble.teachers] == [a, tmp_path / "sweep" / "1"]
    assert ensemble.weights().tolist() == pytest.approx([0.4, 0.6])
    kept, soft = ensemble.soft_labels([3, 1, 2])  # id 3 only has one teacher's score
    assert kept == [1, 2]
    for row, (p, r) in zip(soft, [([0.9, 0.1], [0.7, 0.3]), ([0.2, 0.8], [0.6, 0.4])]):
        mean = [0.4 * math.log(x) + 0.6 * math.log(y) for x, y in zip(p, r)]
        expected = torch.softmax(torch.tensor(mean) / 2.0, -1)
        assert row.tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    # Teacher 1 says class 0 for id 2, teacher 0 says class 1: they agree on id 1 only.
    assert ensemble.agreement([1, 2]) == 0.5
    assert TeacherEnsemble([str(a)], "uniform", 1.0).weights().tolist() == [1.0]


def test_pets_rule_weights_teachers_by_their_accuracy_on_the_training_rows_before_training(tmp_path):
    fake_teacher(tmp_path / "sweep" / "0", 0.9, [1], [[0.9, 0.1]], before=0.25)
    fake_teacher(tmp_path / "sweep" / "1", 0.5, [1], [[0.6, 0.4]], before=0.75)
    assert TeacherEnsemble(str(tmp_path / "sweep"), "train_acc_before", 2.0).weights().tolist() == pytest.approx(
        [0.25, 0.75])  # the dev accuracies (0.9, 0.5) play no part
    fake_teacher(tmp_path / "old", 0.5, [1], [[0.6, 0.4]])
    with pytest.raises(ConfigError, match=r"old has no train/acc_before .* use distill.weighting=dev_acc or uniform"):
        TeacherEnsemble([str(tmp_path / "sweep" / "0"), str(tmp_path / "old")], "train_acc_before", 2.0).weights()


def test_ensemble_refusals_name_the_problem(tmp_path):
    fake_teacher(tmp_path / "a", 0.5, [1], [[0.5, 0.5]])
    fake_teacher(tmp_path / "b", 0.5, [1], [[0.5, 0.5]], split="1")
    with pytest.raises(ConfigError, match="mixes tasks/splits"):
        TeacherEnsemble([str(tmp_path / "a"), str(tmp_path / "b")], "dev_acc", 2.0)
    with pytest.raises(ConfigError, match="does not exist"):
        TeacherEnsemble(str(tmp_path / "nowhere"), "dev_acc", 2.0)
    with pytest.raises(ConfigError, match="allowed"):
        TeacherEnsemble(str(tmp_path / "a"), "best", 2.0)
    with pytest.raises(ConfigError, match="trained on task eprstmt split 1"):
        TeacherEnsemble(str(tmp_path / "b"), "dev_acc", 2.0).soft_rows([], "eprstmt", "0")


def test_select_by_class_takes_each_classs_most_confident_rows():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.95, 0.05], [0.45, 0.55]])
    assert most_confident_by_class(probs, [2, 3]) == [(3, 0), (0, 0), (2, 1), (4, 1)]


FAST = ["trainer.max_epochs=1", "data.batch_size=16", "trainer.limit_predict_batches=1", "data.max_unlabeled=24"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, shared_fewclue):
    """Two tiny fuzzy_pet runs of eprstmt split 0 (patterns 0 and 1), each with its unlabeled probabilities."""
    root = tmp_path_factory.mktemp("teachers")
    for pattern in (0, 1):
        train(compose_config(["stage=fuzzy_pet", "task=eprstmt", f"stage.pattern={pattern}", *FAST],
                             root / str(pattern), shared_fewclue))
    return root


def test_a_fuzzy_pet_run_scores_no_unlabeled_rows(teachers):
    """Nobody asked for a distillation yet: training scores no unlabeled rows (the teachers are scored on demand)."""
    for pattern in ("0", "1"):
        assert not (teachers / pattern / "unlabeled_probs.pt").exists()
        assert "unlabeled_probs" not in json.loads((teachers / pattern / "results.json").read_text())


def test_distill_trains_one_classifier_on_the_soft_labels_plus_the_labelled_rows(teachers, make_config, monkeypatch,
                                                                                tmp_path, shared_fewclue):
    scored = []
    real = ensemble_module.score_rows
    monkeypatch.setattr(ensemble_module, "score_rows", lambda run_dir, *a, **k: scored.append(run_dir) or real(run_dir, *a, **k))
    r = build(make_config(["stage=distill", "task=eprstmt", f"distill.teachers={teachers}", *FAST]))
    results = run(r)
    # Each teacher scored once, with its own selected checkpoint, and cached in its folder.
    assert scored == [teachers / "0", teachers / "1"]
    unlabeled = [row.id for row in r.datamodule.unlabeled_rows()]
    for pattern in ("0", "1"):
        saved = torch.load(teachers / pattern / "unlabeled_probs.pt", weights_only=True)
        assert saved["ids"] == unlabeled and saved["weights"] == "checkpoints/best.ckpt"
        assert saved["probs"].shape == (24, 2) and saved["probs"].sum(-1).tolist() == pytest.approx([1.0] * 24)
        assert (saved["task"], saved["split"], saved["labels"]) == ("eprstmt", "0", ["Negative", "Positive"])
    assert [t["run"] for t in results["teachers"]] == [str(teachers / "0"), str(teachers / "1")]
    assert sum(t["weight"] for t in results["teachers"]) == pytest.approx(1.0)
    # PET's weights: each teacher's untrained cloze on its 32 training rows (a count of 32), measured at its start.
    before = [RunFolder(teachers / p).results.extras["train/acc_before"] for p in ("0", "1")]
    assert all(b * 32 == round(b * 32) for b in before)
    assert [t["train/acc_before"] for t in results["teachers"]] == before
    if sum(before):
        assert [t["weight"] for t in results["teachers"]] == pytest.approx([b / sum(before) for b in before], abs=1e-5)
    assert results["distill_rows"] == 24 and results["generation"] == 0 and 0 <= results["distill_agreement"] <= 1
    assert len(r.datamodule.train_rows) == 32 + 24 and results["global_step"] == math.ceil(56 / 16)
    assert results["val/acc"] is not None and len(read_jsonl(results["predictions"])) == 64
    batch = r.module.collate(r.datamodule.train_rows[30:34])
    assert batch["is_soft"].tolist() == [False, False, True, True]
    assert batch["soft"][0].tolist() in ([1.0, 0.0], [0.0, 1.0]) and batch["soft"][2].sum().item() == pytest.approx(1.0)

    # A second distillation reads the teachers' caches: no teacher is scored again.
    mtimes = [(teachers / p / "unlabeled_probs.pt").stat().st_mtime_ns for p in ("0", "1")]
    again = run(build(compose_config(["stage=distill", "task=eprstmt", f"distill.teachers={teachers}", *FAST],
                                     tmp_path / "again", shared_fewclue)))
    assert scored == [teachers / "0", teachers / "1"] and again["distill_rows"] == 24
    assert [(teachers / p / "unlabeled_probs.pt").stat().st_mtime_ns for p in ("0", "1")] == mtimes
    # More rows than the cache holds (another data.max_unlabeled): scored again, with the checkpoint.
    teacher = TeacherEnsemble(str(teachers / "0"), "dev_acc", 1.0)
    more = build(compose_config(["stage=fuzzy_pet", "task=eprstmt", *FAST[:-1], "data.max_unlabeled=40"],
                                tmp_path / "more", shared_fewclue))
    teacher.score(more.datamodule.unlabeled_rows())
    assert scored[-1] == teachers / "0" and len(torch.load(teachers / "0" / "unlabeled_probs.pt", weights_only=True)["ids"]) == 40


def test_a_teacher_without_checkpoint_or_cache_says_to_keep_checkpoints(teachers, tmp_path, make_config):
    gone = tmp_path / "no_checkpoint"
    shutil.copytree(teachers / "1", gone, ignore=shutil.ignore_patterns("checkpoints", "unlabeled_probs.pt"))
    results = json.loads((gone / "results.json").read_text())
    (gone / "results.json").write_text(json.dumps({**results, "checkpoint": None}))  # as keep_checkpoints=false
    rows = build(make_config(["stage=fuzzy_pet", "task=eprstmt", "data.max_unlabeled=4"])).datamodule.unlabeled_rows()
    with pytest.raises(ConfigError, match=f"{gone} has no checkpoint .* keep_checkpoints=true"):
        TeacherEnsemble(str(gone), "dev_acc", 2.0).soft_rows(rows, "eprstmt", "0")


def test_ipet_generation_labels_a_growing_share_for_each_teacher_and_distils_the_last(teachers, make_config):
    results = train(make_config(["stage=distill", "task=eprstmt", f"distill.teachers={teachers}",
                                 "distill.generations=1", "distill.growth=2", *FAST]))
    assert results["generation"] == 1
    runs = [RunFolder(t["run"]).results.to_dict() for t in results["teachers"]]
    assert len(runs) == 2
    for i, (child, t) in enumerate(zip(runs, results["teachers"])):
        assert child["generation"] == 1 and child["stage"] == "fuzzy_pet"
        assert child["ipet_parent"] == str(teachers / str(i)) and child["ipet_teachers"] == [str(teachers / str(1 - i))]
        # (growth^1 - 1) x 32 labelled rows = 32, split 16/16 as the labelled rows are; at most 24 unlabeled rows exist.
        assert child["ipet_pseudo_labelled"] == sum(child["ipet_kept_per_class"]) <= 24
        assert all(k <= 32 for k in child["ipet_kept_per_class"])
        # A generation's run keeps no checkpoint: it scored its unlabeled rows at its end, for the distillation.
        assert len(torch.load(RunFolder(t["run"]).unlabeled_probs_path, weights_only=True)["ids"]) == 24


def test_distill_refuses_a_task_without_unlabeled_data_in_one_line(tmp_path, shared_fewclue):
    teacher = tmp_path / "ocnli"
    done = run_cli(["stage=fuzzy_pet", "task=ocnli", f"hydra.run.dir={teacher}", "trainer.max_steps=1",
                    "trainer.limit_predict_batches=1", "logger=none"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (teacher / "unlabeled_probs.pt").exists()
    done = run_cli(["stage=distill", "task=ocnli", f"distill.teachers={teacher}", f"hydra.run.dir={tmp_path / 'd'}"],
                   tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: task ocnli has no unlabeled data: stage=distill needs unlabeled rows to distil the teachers on")


def test_a_teacher_from_an_older_version_gets_todays_defaults_for_the_keys_it_lacks(teachers, tmp_path):
    from callbacks.ipet import generation_config

    old = tmp_path / "old_teacher"
    old.mkdir()
    config = OmegaConf.load(teachers / "1" / "config.yaml")
    del config.stage["slots"]  # stage.slots came after this teacher
    OmegaConf.save(config, old / "config.yaml")
    results = json.loads((teachers / "1" / "results.json").read_text())
    (old / "results.json").write_text(json.dumps({**results, "config": str(old / "config.yaml")}))
    cfg = generation_config(old, tmp_path / "child")
    assert cfg.stage.slots == "exact" and cfg.stage.pattern == 1  # today's default; the teacher's own pattern
    assert cfg.paths.output_dir == str(tmp_path / "child") and cfg.ckpt_path is None
