"""The TaskSpecs of several tasks at once, read from ``conf/task/<task>.yaml``.

Stages that pool tasks (entailment pretraining, the pretraining corpus) need every task's facts,
not only the one ``task=`` selects; they read the same YAML files that ``task=<name>`` composes.
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules.tasks.task_spec import TaskSpec
from datamodules.errors import ConfigError

TASK_DIR = Path(__file__).resolve().parents[2] / "conf" / "task"
# FewCLUE's nine tasks (conf/task/<task>.yaml each), cheapest first (rows x classes x label-word lengths).
FEWCLUE_TASKS = ("eprstmt", "bustm", "ocnli", "csl", "cluewsc", "chid", "tnews", "iflytek", "csldcp")
# FewCLUE's five train/dev splits (data.split=0..4; data.split=all reads train_few_all/dev_few_all).
FEWCLUE_SPLITS = ("0", "1", "2", "3", "4")


def available_tasks(task_dir: str | Path | None = None) -> list[str]:
    return sorted(path.stem for path in Path(task_dir or TASK_DIR).glob("*.yaml"))


def load_task_specs(names: list[str] | None = None, task_dir: str | Path | None = None) -> list[TaskSpec]:
    """TaskSpecs for ``names`` (all tasks in ``task_dir`` when None), in the order given."""
    folder = Path(task_dir or TASK_DIR)
    allowed = available_tasks(folder)
    names = list(allowed if names is None else names)
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ConfigError(f"unknown task(s) {unknown} in the task list; allowed: {allowed} (files in {folder})")
    return [instantiate(OmegaConf.load(folder / f"{name}.yaml"), _convert_="all") for name in names]
