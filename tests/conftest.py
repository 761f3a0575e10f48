"""Shared fixtures: the real conf/ composed with Hydra, and writable copies of FewCLUE from ../shared."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from datamodules.tasks.task_configs import FEWCLUE_TASKS
from tests.helpers import with_test_defaults

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED = ROOT.parent / "shared"
# `python -m pytest -q` as the README types it, with nothing exported: the shared data beside the checkout, W&B offline.
for variable, folder in {"FEWCLUE_DIR": "fewclue", "KG_DIR": "kg", "CORPUS_DIR": "corpus",
                         "ZH_MLM_SMALL": "encoders/zh-mlm-small"}.items():
    if variable not in os.environ and (SHARED / folder).exists():
        os.environ[variable] = str(SHARED / folder)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
TASKS = list(FEWCLUE_TASKS)  # the tests parametrize over it


def fewclue_dir() -> Path:
    path = Path(os.environ.get("FEWCLUE_DIR", ROOT.parent / "shared" / "fewclue"))
    if not (path / "eprstmt" / "train_0.json").is_file():
        pytest.skip(f"FewCLUE data not found at {path}; set FEWCLUE_DIR")
    return path


@pytest.fixture(scope="session")
def shared_fewclue() -> Path:
    return fewclue_dir()


@pytest.fixture(scope="session")
def fewclue_with_test_public(tmp_path_factory, shared_fewclue) -> Path:
    """Split 0 and test.json of every task, plus a labelled test_public.json (dev_few_all rows stand in)."""
    root = tmp_path_factory.mktemp("fewclue_public")
    for task in TASKS:
        target = root / task
        target.mkdir()
        for name in ("train_0.json", "dev_0.json", "test.json"):
            shutil.copy(shared_fewclue / task / name, target / name)
        shutil.copy(shared_fewclue / task / "dev_few_all.json", target / "test_public.json")
    return root


@pytest.fixture(autouse=True)
def no_hydra_config_left_over():
    """A test that composed the config in this process leaves no HydraConfig behind: later tests would read its
    command-line overrides (``typed_keys``) as their own."""
    yield
    HydraConfig.instance().cfg = None


def compose_config(overrides: list[str], output_dir: Path, data_dir: Path | None = None):
    """The project's real config, as `python train.py <overrides>` would see it, writing into output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                f"paths.output_dir={output_dir}",
                f"paths.cache_dir={output_dir.parent / 'cache'}",
                *( [f"data.data_dir={data_dir}"] if data_dir else [] ),
                *with_test_defaults(overrides),
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def datamodule_for(task: str, run_dir: Path, data_dir: Path | None, *overrides: str):
    """``data=fewclue`` for ``task`` as train.py builds it (``run_dir/../cache`` as the cache)."""
    from train import instantiate_with

    return instantiate_with(compose_config([f"task={task}", *overrides], run_dir, data_dir).data)


@pytest.fixture
def make_config(tmp_path, shared_fewclue):
    def make(overrides: list[str], data_dir: Path | None = None):
        return compose_config(overrides, tmp_path / "run", data_dir or shared_fewclue)

    return make
