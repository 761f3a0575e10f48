"""A finished run's saved config.yaml, brought up to this version: keys added since the run take today's defaults."""

from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
# The sections whose keys the stage module and the datamodule take as arguments without Python defaults.
FILLED_SECTIONS = ("stage", "data")


def compose_train_config(overrides: list[str]) -> DictConfig:
    """conf/train.yaml with ``overrides`` as this version composes it (inside train.py's Hydra app or outside)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def upgrade_saved_config(cfg: DictConfig, stage: str) -> DictConfig:
    """``cfg`` (a run's saved config of ``stage``) with the stage and data keys it lacks set to today's defaults;
    every key it has keeps the run's value."""
    from hydra.errors import HydraException

    try:  # the task does not matter here (and a data=files task has no conf/task file)
        today = compose_train_config([f"stage={stage}", "~tuned"])
    except HydraException:  # a stage this version does not know: nothing to fill from
        return cfg
    filled = copy.deepcopy(cfg)
    for section in FILLED_SECTIONS:
        # only the same class: a data=files run must not gain the FewCLUE datamodule's keys
        if section in cfg and today[section].get("_target_") == cfg[section].get("_target_"):
            _fill_missing(filled[section], today[section])
    return filled


def _fill_missing(run: DictConfig, today: DictConfig) -> None:
    """Add the keys of ``today`` that ``run`` lacks, at any depth; the task spec is the run's own, never filled
    (today's default task is another task)."""
    raw = OmegaConf.to_container(today, resolve=False)  # interpolations stay interpolations, resolved in the run
    for key in today:
        if key not in run:
            run[key] = raw[key]
        elif key != "task" and OmegaConf.is_dict(run[key]) and OmegaConf.is_dict(today[key]):
            _fill_missing(run[key], today[key])
