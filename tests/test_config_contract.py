"""The contract between conf/ and the code: every key is used, every default is stated once, and the
stage contract (one base, one optimizer group, results in one place) holds for every stage."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from datamodules.errors import ConfigError
from lightning_modules.stages.base import StageModule
from tests.conftest import CONF
from train import build, derive_teachers, instantiate_all, instantiate_with

OUR_PACKAGES = ("lightning_modules.", "datamodules.", "callbacks.")
META_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_", "defaults"}
# Small value objects also built in Python (scripts, tests) keep their own defaults; conf/ may restate
# them, and must then agree with them.
VALUE_OBJECTS = {"datamodules.pretraining.corpus.CorpusSource", "datamodules.pretraining.kg.KgSource", "datamodules.pretraining.alignment.AlignmentRules"}
STAGES = ["finetune", "fuzzy_pet", "efl", "kgbert", "mlm", "entailment", "distill"]


def target_nodes(node, path: str = ""):
    """(path, node) of every dict with a _target_ in our packages, in a YAML file's content."""
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        # (TaskSpec: task files are data; the strategy subclasses Lightning's DeepSpeedStrategy, whose many
        # defaults a strategy option picks among.)
        ours = isinstance(target, str) and target.startswith(OUR_PACKAGES)
        if ours and "task_spec" not in target and "strategies" not in target:
            yield path, node
        for key in node:
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                yield from target_nodes(child, f"{path}.{key}" if path else str(key))


def yaml_files() -> list[Path]:
    return sorted(p for p in CONF.rglob("*.yaml") if p.parent.name not in ("task", "hydra", "launcher"))


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(CONF)))
def test_every_key_is_an_argument_and_every_default_is_stated_once(path):
    content = OmegaConf.load(path)
    for where, node in target_nodes(content):
        target = get_object(node._target_)
        parameters = inspect.signature(target).parameters
        keys = [k for k in node if k not in META_KEYS]
        unknown = [k for k in keys if k not in parameters]
        assert not unknown, f"{path.name}:{where}: keys {unknown} are not arguments of {node._target_}"
        for key in keys:
            default = parameters[key].default
            if default is inspect.Parameter.empty:
                continue
            assert node._target_ in VALUE_OBJECTS, (
                f"{path.name}:{where}.{key}: {node._target_} also has a Python default ({default!r}); state it once"
            )
            value = node._get_node(key)._value()
            if not OmegaConf.is_interpolation(node, key) and not isinstance(value, (DictConfig, list)) and value != "???":
                assert OmegaConf.to_container(node)[key] == default or key in ("files",), (path.name, where, key)


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_derives_from_the_one_base_and_takes_only_what_it_uses(stage, make_config):
    cfg = make_config([f"stage={stage}"])
    derive_teachers(cfg)  # stage=distill's teachers, built from distill.* as build() does
    target = get_object(cfg.stage._target_)
    assert issubclass(target, StageModule)
    parameters = set(inspect.signature(target).parameters)
    given = {k for k in cfg.stage if k not in META_KEYS} | {"masked_lm", "tokenizer"}
    assert parameters == given, (stage, parameters ^ given)
    # What train.py hands in and what the YAML builds into objects (a _target_) are the live arguments, left out
    # of the saved settings; every other argument is a setting.
    built = {k for k in given - {"masked_lm", "tokenizer"}
             if isinstance(cfg.stage[k], DictConfig) and "_target_" in cfg.stage[k]}
    assert target.live_argument_names() == built | {"masked_lm", "tokenizer"}, stage
    assert "lr" not in cfg.stage and "scheduler" not in cfg.stage  # one place: stage.optim
    assert set(cfg.stage.optim) >= {"lr", "weight_decay", "optimizer", "scheduler", "warmup_ratio"}


def test_a_key_a_target_does_not_take_is_a_config_error_naming_it(make_config):
    cfg = make_config(["+stage.optimizer.lr=-1"])
    with pytest.raises(ConfigError, match=r"stage.optimizer is not a setting of stage"):
        build(cfg)
    with pytest.raises(ConfigError, match=r"stage.optim.optimizer.lr is not used; set stage.optim.lr instead"):
        instantiate_with(make_config(["+stage.optim.optimizer.lr=0.1"]).stage.optim)
    with pytest.raises(ConfigError, match=r"stage.optim.lr=-1; allowed: a number >= 0"):
        instantiate_with(make_config(["stage.optim.lr=-1"]).stage.optim)


def test_tiny_model_has_no_checkpoint_key(make_config):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="pretrained"):
        make_config(["model=tiny", "model.pretrained=/some/checkpoint"])


def test_callbacks_none_means_none_also_for_a_stage_that_adds_one(make_config):
    names = {type(c).__name__ for c in instantiate_all(make_config(["stage=fuzzy_pet"]).callbacks)}
    default = {type(c).__name__ for c in instantiate_all(make_config(["stage=finetune"]).callbacks)}
    assert names - default == {"SelfTraining"} and default - names == {"EarlyStopping"}
    assert instantiate_all(make_config(["stage=fuzzy_pet", "callbacks=none"]).get("callbacks")) == []
    assert instantiate_all(make_config(["stage=finetune", "callbacks=none"]).get("callbacks")) == []


def test_self_training_has_one_key_and_one_cap_data_max_unlabeled(make_config):
    cfg = make_config(["stage=fuzzy_pet"])
    assert "self_training" not in cfg and "max_unlabeled" not in cfg.callbacks.self_training
    assert cfg.data.max_unlabeled == 2000 == make_config(["stage=finetune"]).data.max_unlabeled
    stage_files = [p.name for p in (CONF / "stage").glob("*.yaml") if "max_unlabeled" in OmegaConf.load(p).get("data", {})]
    assert stage_files == []  # stated in conf/data only, so that data.max_unlabeled=N reaches every use


def test_distill_settings_have_one_place_the_user_facing_distill_keys(make_config, tmp_path):
    cfg = make_config(["stage=distill", f"distill.teachers={tmp_path}", "distill.temperature=1.5"])
    assert "teachers" not in cfg.stage  # stage.teachers cannot be overridden apart from distill.*
    derive_teachers(cfg)
    assert OmegaConf.to_container(cfg.stage.teachers, resolve=True) == {
        "_target_": "datamodules.teachers.ensemble.TeacherEnsemble", "teachers": str(tmp_path),
        "weighting": "train_acc_before", "temperature": 1.5}


def test_one_place_for_the_fewclue_folder():
    mentions = [p for p in CONF.rglob("*.yaml") if "FEWCLUE_DIR" in p.read_text(encoding="utf-8")]
    assert [p.relative_to(CONF).as_posix() for p in mentions] == ["paths/default.yaml"]
