"""A finished run's saved config.yaml, brought up to this version: classes that moved to another module are found
where they are now, and keys added since the run take today's defaults."""

from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
# The sections whose keys the stage module and the datamodule take as arguments without Python defaults.
FILLED_SECTIONS = ("stage", "data")
# Modules that moved when the packages were split by concern: a run saved before names the old ones in _target_.
MOVED_MODULES = {
    "lightning_modules.stage": "lightning_modules.stages.base",
    **{f"lightning_modules.{name}": f"lightning_modules.stages.{name}"
       for name in ("finetune", "fuzzy_pet", "distill", "kgbert", "mlm", "entailment")},
    **{f"lightning_modules.{name}": f"lightning_modules.scoring.{name}" for name in ("verbalizer", "patterns", "submission")},
    "lightning_modules.masking": "lightning_modules.knowledge.masking",
    "lightning_modules.knowledge_fusion": "lightning_modules.knowledge.fusion",
    "lightning_modules.kg_heads": "lightning_modules.knowledge.heads",
    **{f"lightning_modules.{name}": f"lightning_modules.scale.{name}"
       for name in ("strategies", "consolidate", "checkpoint_io", "lamb", "optim")},
    **{f"lightning_modules.{name}": f"lightning_modules.encoders.{name}" for name in ("backbones", "char_vocab")},
    "datamodules.fewclue": "datamodules.tasks.fewclue",
    "datamodules.fewclue_rows": "datamodules.tasks.rows",
    "datamodules.fewclue_download": "datamodules.tasks.download",
    **{f"datamodules.{name}": f"datamodules.tasks.{name}" for name in ("task_spec", "task_configs", "files")},
    **{f"datamodules.{name}": f"datamodules.pretraining.{name}" for name in ("corpus", "kg", "alignment", "negatives",
                                                                             "entailment")},
    "datamodules.pretraining": "datamodules.pretraining.aligned_corpus",
    "datamodules.teachers": "datamodules.teachers.ensemble",
}


def compose_train_config(overrides: list[str], hydra_config: bool = False) -> DictConfig:
    """conf/train.yaml with ``overrides`` as this version composes it (inside train.py's Hydra app or outside);
    ``hydra_config``: with Hydra's own node (``hydra.run.dir``, ...)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=overrides, return_hydra_config=hydra_config)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=hydra_config)


def upgrade_saved_config(cfg: DictConfig, stage: str) -> DictConfig:
    """``cfg`` (a run's saved config of ``stage``) with the stage and data keys it lacks set to today's defaults;
    every key it has keeps the run's value."""
    from hydra.errors import HydraException

    try:  # the task does not matter here (and a data=files task has no conf/task file)
        today = compose_train_config([f"stage={stage}", "~tuned"])
    except HydraException:  # a stage this version does not know: nothing to fill from
        return cfg
    filled = copy.deepcopy(cfg)
    follow_moved_modules(filled)
    for section in FILLED_SECTIONS:
        # only the same class: a data=files run must not gain the FewCLUE datamodule's keys
        if section in filled and today[section].get("_target_") == filled[section].get("_target_"):
            _fill_missing(filled[section], today[section])
    return filled


def follow_moved_modules(node) -> None:
    """Every ``_target_`` in ``node`` that names a class in a module that has moved, renamed in place (all that a
    saved ``task`` section needs: the other keys are the run's own)."""
    keys = list(node.keys()) if OmegaConf.is_dict(node) else range(len(node))
    for key in keys:
        if OmegaConf.is_missing(node, key):
            continue
        child = node._get_node(key)
        if OmegaConf.is_config(child):
            follow_moved_modules(child)
        elif key == "_target_" and isinstance(child._value(), str):
            module, _, name = child._value().rpartition(".")
            if module in MOVED_MODULES:
                node[key] = f"{MOVED_MODULES[module]}.{name}"


def _fill_missing(run: DictConfig, today: DictConfig) -> None:
    """Add the keys of ``today`` that ``run`` lacks, at any depth; the task spec is the run's own, never filled
    (today's default task is another task)."""
    raw = OmegaConf.to_container(today, resolve=False)  # interpolations stay interpolations, resolved in the run
    for key in today:
        if key not in run:
            run[key] = raw[key]
        elif key != "task" and OmegaConf.is_dict(run[key]) and OmegaConf.is_dict(today[key]):
            _fill_missing(run[key], today[key])
