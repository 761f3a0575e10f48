"""conf/tuned/<task>_<stage>.yaml: per-task settings of a stage, composed after the stage and before the
command line (train.yaml's `optional tuned: ${task}_${stage}`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import train
from tests.conftest import CONF, TASKS

STAGES = sorted(p.stem for p in (CONF / "stage").glob("*.yaml"))


def compose_in(conf: Path, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def conf_with_tuned(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    shutil.rmtree(conf / "tuned", ignore_errors=True)  # only the file below
    (conf / "tuned").mkdir()
    (conf / "tuned" / "eprstmt_fuzzy_pet.yaml").write_text(
        "# @package _global_\nstage:\n  word_score: mean\ntrainer:\n  max_epochs: 7\n", encoding="utf-8")
    monkeypatch.setattr(train, "TUNED_DIR", conf / "tuned")
    return conf


def test_tuned_settings_apply_to_their_task_and_stage_only(conf_with_tuned):
    cfg = compose_in(conf_with_tuned, ["task=eprstmt"])
    assert (cfg.stage.word_score, cfg.trainer.max_epochs) == ("mean", 7)
    assert train.tuned_file() == "conf/tuned/eprstmt_fuzzy_pet.yaml"

    cfg = compose_in(conf_with_tuned, ["task=bustm"])
    assert (cfg.stage.word_score, cfg.trainer.max_epochs) == ("sum", 4)
    assert train.tuned_file() is None

    cfg = compose_in(conf_with_tuned, ["task=eprstmt", "stage=finetune"])
    assert "word_score" not in cfg.stage and train.tuned_file() is None


def test_the_command_line_wins_over_tuned_settings_and_tilde_tuned_leaves_them_out(conf_with_tuned):
    cfg = compose_in(conf_with_tuned, ["task=eprstmt", "stage.word_score=calibrated"])
    assert (cfg.stage.word_score, cfg.trainer.max_epochs) == ("calibrated", 7)
    cfg = compose_in(conf_with_tuned, ["task=eprstmt", "experiment=fuzzy_pet_zh_mlm_small"])
    assert cfg.stage.word_score == "mean"
    cfg = compose_in(conf_with_tuned, ["task=eprstmt", "~tuned"])
    assert (cfg.stage.word_score, cfg.trainer.max_epochs) == ("sum", 4)
    assert train.tuned_file() is None


def leaves(node, prefix: str = ""):
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        yield from leaves(value, path) if isinstance(value, dict) else [(path, value)]


@pytest.mark.parametrize("path", sorted((CONF / "tuned").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_tuned_file_names_a_task_and_stage_and_changes_keys_that_exist(path):
    task, _, stage = path.stem.partition("_")
    assert task in TASKS and stage in STAGES, f"{path.name}: not <task>_<stage> (tasks {TASKS}, stages {STAGES})"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# @package _global_"), path.name
    assert "dev" in text, f"{path.name}: say which dev measurement chose these values"
    base = OmegaConf.to_container(compose_in(CONF, [f"task={task}", f"stage={stage}", "~tuned"]), resolve=False)
    for key, value in leaves(OmegaConf.to_container(OmegaConf.load(path))):
        node = base
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{path.name}: {key} is not a key of task={task} stage={stage}"
            node = node[part]
        assert node != value, f"{path.name}: {key}={value!r} is already the default"
