"""Building a run's parts from its resolved config, shared by train.py (a new run) and predict.py / the
distillation teachers (a finished run rebuilt from its config.yaml): instantiation that lets a user's error
out as itself, the checkpoint check, the texts a from-scratch tokenizer is built on."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from datamodules.errors import ConfigError, DataError
from datamodules.protocol import StageData
from datamodules.tasks.task_spec import TaskSpec


def instantiate_with(node: DictConfig, **objects: Any) -> Any:
    """Instantiate ``node``, with live objects as extra arguments (kept out of OmegaConf's hands).

    A user error raised inside a constructor (ConfigError, DataError) comes out as itself, not wrapped
    in Hydra's InstantiationException, and a key the target does not take (``+stage.foo=1``) becomes a
    ConfigError naming it, so that either ends the run with a one-line message."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, _partial_=True)(**objects) if objects else instantiate(node)
    except (InstantiationException, TypeError) as err:  # TypeError: from the partial's call with the live objects
        raise user_error(err, node._get_full_key(None)) from None


def user_error(err: Exception, where: str) -> Exception:
    """The ConfigError/DataError inside ``err``, or a ConfigError for an argument the target does not take
    or lacks; ``err`` itself when it is neither (a bug, which keeps its traceback)."""
    text = str(err)
    located = re.search(r"full_key: (\S+)", text)
    where = located.group(1) if located else where
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, (ConfigError, DataError)):
            return cause
        if isinstance(cause, TypeError):
            unknown = re.search(r"unexpected keyword argument '(\w+)'", str(cause))
            if unknown:
                return ConfigError(f"{where}.{unknown.group(1)} is not a setting of {where}; remove it")
            missing = re.search(r"missing \d+ required \w+(?:-only)? arguments?: (.+)$", str(cause))
            if missing:
                return ConfigError(f"{where} needs {missing.group(1)}")
        cause = cause.__cause__
    return err


def check_checkpoint(ckpt: str, named: str | None = None) -> None:
    """An existing, complete Lightning checkpoint file (a zip archive) or DeepSpeed checkpoint folder; the messages
    name it as ``named`` (where the user gave it: ``ckpt_path=...`` by default, ``--checkpoint ...``)."""
    named = named or f"ckpt_path={ckpt}"
    path = Path(ckpt)
    if not path.exists():
        raise ConfigError(f"{named}: no such file")
    if path.is_dir():
        if not (path / "latest").is_file() and not (path / "checkpoint").is_dir():
            raise ConfigError(f"{named}: a folder, but not a DeepSpeed checkpoint (no 'latest' file)")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise ConfigError(f"{named}: not a complete checkpoint ({err}); it may be truncated") from None


def vocabulary_texts(datamodule: StageData, task: TaskSpec) -> list[str]:
    return [*datamodule.texts(), *task.patterns, *task.label_words(), *task.descriptions.values()]
