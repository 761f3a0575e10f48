"""Locating a task's files, and fetching them from the FewCLUE repository when missing.

Downloads go to a cache folder, never into ``data_dir`` (which may be a read-only copy).
"""

from __future__ import annotations

import logging
import os
import urllib.error
from pathlib import Path

import torch

from datamodules.errors import DataError
from datamodules.tasks.task_configs import FEWCLUE_SPLITS

log = logging.getLogger(__name__)

FEWCLUE_URL = "https://raw.githubusercontent.com/CLUEbenchmark/FewCLUE/main/datasets"
OPTIONAL_FILES = ("test_public.json", "unlabeled.json")


def split_files(split: str) -> tuple[str, str]:
    """The train and dev file names of ``data.split`` (0..4 or all)."""
    split = str(split)
    if split == "all":
        return "train_few_all.json", "dev_few_all.json"
    if split in FEWCLUE_SPLITS:
        return f"train_{split}.json", f"dev_{split}.json"
    raise DataError(f"data.split={split!r} is not a FewCLUE split; allowed: {', '.join(FEWCLUE_SPLITS)}, all")


def required_files(split: str) -> list[str]:
    return [*split_files(split), "test.json"]


def _has_files(folder: Path, names: list[str]) -> bool:
    return all((folder / name).is_file() for name in names)


def _fetch(url: str, target: Path) -> bool:
    """Download ``url`` to ``target`` with a progress bar (via a temporary file); False when the server has no
    such file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return False
        raise
    return True


def locate_task_dir(
    task: str, split: str, data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike, url: str = FEWCLUE_URL
) -> Path:
    """The folder that holds the task's files: ``data_dir/task``, else the download cache (filled on demand)."""
    needed = required_files(split)
    if data_dir and (Path(data_dir) / task).is_dir():
        local = Path(data_dir) / task
        missing = [name for name in needed if not (local / name).is_file()]
        if missing:
            raise DataError(
                f"{local}: missing {', '.join(missing)} (needed for data.split={split}); a task folder in "
                "data.data_dir is used whole, never completed from the download cache"
            )
        return local
    cached = Path(cache_dir) / "fewclue" / task
    if data_dir:
        log.info("%s is absent: task %s comes from the download cache %s", Path(data_dir) / task, task, cached)
    if _has_files(cached, needed):
        return cached
    where = f"{Path(data_dir) / task}" if data_dir else "(no data.data_dir and no FEWCLUE_DIR)"
    try:
        for name in needed:
            if not (cached / name).is_file() and not _fetch(f"{url}/{task}/{name}", cached / name):
                raise DataError(f"{url}/{task}/{name} does not exist (HTTP 404)")
        for name in OPTIONAL_FILES:
            if not (cached / name).is_file():
                _fetch(f"{url}/{task}/{name}", cached / name)
    except (OSError, urllib.error.URLError, DataError) as err:
        raise DataError(
            f"FewCLUE files for task {task!r} ({', '.join(needed)}) are not in {where} and could not be "
            f"downloaded from {url}/{task}/ ({err}). Point the trainer at a copy of FewCLUE's datasets/ "
            f"folder: `export FEWCLUE_DIR=/path/to/FewCLUE/datasets` or `python train.py data.data_dir=/path`."
        ) from None
    return cached
