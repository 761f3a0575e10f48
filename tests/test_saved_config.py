"""A run saved by an older version: classes that moved are found where they are now, missing keys get today's
defaults, and the run's own values stay."""

from __future__ import annotations

import importlib

from omegaconf import OmegaConf

from datamodules.runs.saved_config import MOVED_MODULES, upgrade_saved_config


def test_a_config_naming_the_old_flat_modules_loads_todays_classes(make_config):
    cfg = make_config(["stage=fuzzy_pet", "stage.pattern=1"])
    saved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    saved.stage._target_ = "lightning_modules.fuzzy_pet.FuzzyPetModule"
    saved.data._target_ = "datamodules.fewclue.FewClueDataModule"
    saved.task._target_ = "datamodules.task_spec.TaskSpec"
    saved.trainer.plugins[0]._target_ = "lightning_modules.checkpoint_io.AtomicCheckpointIO"
    del saved.stage["objective"]  # a key added since
    upgraded = upgrade_saved_config(saved, "fuzzy_pet")
    assert (upgraded.stage._target_, upgraded.data._target_, upgraded.task._target_,
            upgraded.trainer.plugins[0]._target_) == (cfg.stage._target_, cfg.data._target_, cfg.task._target_,
                                                      cfg.trainer.plugins[0]._target_)
    assert upgraded.stage.objective == "per_set" and upgraded.stage.pattern == 1  # today's default; the run's value
    for new in MOVED_MODULES.values():  # every module an old name leads to exists
        assert importlib.import_module(new)
