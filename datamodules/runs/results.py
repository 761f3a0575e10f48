"""A run folder's results.json: one typed schema, one writer (``RunResults.write``), one reader (``RunFolder``).

train.py writes results.json when a run ends; predict.py, report.py, iPET, the distillation teachers and
scripts/method_table.py read it here. Every path in the file is relative to the run folder, so a copied or
archived run keeps working: the run's own files (``checkpoint``, ``config``, ``predictions``,
``test_predictions``) as ``checkpoints/best.ckpt``, ``config.yaml``, ``predictions/eprstmt_predict.json``,
``test_predictions.jsonl``; paths outside the run (iPET's
parent and teacher runs, distillation teachers, an export folder or encoder given outside it, data files) as
``os.path.relpath`` from the run folder (``../teachers/0``).

In memory, a ``RunResults`` holds paths as this process uses them (absolute, or relative to the working
directory); ``write(run_dir)`` stores them relative to ``run_dir`` and ``RunFolder(run_dir).results`` resolves them
against the folder it was read from. The run's own files are always looked up inside that folder: a path
that leads out of it (an older results.json held absolute paths, e.g. of the folder a run was copied from)
gives only its file name in the folder's own subfolder (``checkpoints/<name>``), never the file it named.

Stage- and callback-specific values (losses, verbalizer, self-training history, W&B ids, data counts) are
``extras``: written as they are, beside the typed keys, except the file paths among them (``PATH_EXTRAS``), stored
relative to the run folder too (``RunFolder.resolve`` resolves one).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from datamodules.errors import ConfigError
from datamodules.runs.writing import replaced

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
# Where a teacher's class probabilities on unlabeled rows are cached (datamodules/teachers/ensemble.py).
UNLABELED_PROBS_FILE = "unlabeled_probs.pt"
# The labelled test rows' predictions, one JSON line per row (callbacks/test_predictions.py).
TEST_PREDICTIONS_FILE = "test_predictions.jsonl"
# The run's own files and the subfolder each lives in (its name is all an older, absolute path keeps).
OWN_FILES = {"checkpoint": "checkpoints", "config": "", "predictions": "predictions", "unlabeled_probs": "",
             "test_predictions": ""}
# Paths that may point outside the run (other runs, an encoder, an export folder given elsewhere).
OUTSIDE_PATHS = ("pretrained", "export_dir", "ipet_parent", "wandb/dir")
# Other keys whose values are (or hold) file paths: stored relative to the run folder as well. Every other value is
# written as it is (a W&B group named after a sweep folder is a name, not a path to follow).
PATH_EXTRAS = ("test_set", "data/files", "data/sampled_ids", "ensemble/members")
# JSON keys of the typed fields whose names are not valid Python names.
KEYS = {"val_acc": "val/acc", "test_acc": "test/acc", "heldout_acc": "heldout/acc", "wandb_dir": "wandb/dir"}
# Written even when None (what every train.py run reports); the other typed keys only when set.
ALWAYS = ("stage", "task", "split", "seed", "model", "pretrained", "val_acc", "test_acc", "heldout_acc", "test_set",
          "predictions",
          "checkpoint", "config", "global_step", "zero_shot", "tuned")


@dataclass
class RunResults:
    """results.json. Paths are usable paths in memory; relative to the run folder in the file."""

    stage: str | None = None
    task: str | None = None
    split: str | None = None  # None for data=files (no FewCLUE split)
    seed: int | None = None
    model: str | None = None
    pretrained: str | None = None  # a hub name, or the encoder's folder
    val_acc: float | None = None
    test_acc: float | None = None
    # Labelled rows the run never trained on or selected with, scored with the selected checkpoint (data/heldout_*).
    heldout_acc: float | None = None
    test_set: str | None = None
    predictions: str | None = None
    # The labelled test set's rows with gold and predicted label and class probabilities (TEST_PREDICTIONS_FILE).
    test_predictions: str | None = None
    checkpoint: str | None = None  # None: not kept (keep_checkpoints=false) or none written
    config: str | None = None
    global_step: int | None = None
    precision: str | None = None  # what training ran in (trainer.precision; precision=auto resolved)
    eval_precision: str | None = None  # what validation, test and prediction ran in (float32, bfloat16)
    timing: dict[str, float] | None = None  # seconds per phase (callbacks/phase_times.py, train.py)
    commit: str | None = None  # the trainer's git commit, "+changes" when it had uncommitted changes (provenance.py)
    machine: str | None = None  # the processor (and GPU) the run trained on
    zero_shot: bool = False
    tuned: str | None = None  # conf/tuned/<task>_<stage>.yaml, relative to the repository
    export_dir: str | None = None
    unlabeled_probs: str | None = None  # older runs: their unlabeled_probs.pt, written after training
    generation: int | None = None  # iPET: 0 for a plain distillation, g for generation g
    ipet_parent: str | None = None
    ipet_teachers: list[str] | None = None
    teachers: list[dict] | None = None  # stage=distill: {"run", "val/acc", "weight"} per teacher
    wandb_dir: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    # -- the flat dict (train.py's return value, report.py's columns) --------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunResults:
        """Typed keys into fields, every other key into ``extras`` (a later key wins, as in a dict literal)."""
        by_key = {KEYS.get(f.name, f.name): f.name for f in fields(cls) if f.name != "extras"}
        typed = {by_key[k]: v for k, v in values.items() if k in by_key}
        if typed.get("split") is not None:
            typed["split"] = str(typed["split"])
        return cls(**typed, extras={k: v for k, v in values.items() if k not in by_key})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "extras" and (f.name in ALWAYS or value is not None):
                out[KEYS.get(f.name, f.name)] = value
        return {**out, **self.extras}

    # -- the file ----------------------------------------------------------------------------------------------------
    def write(self, run_dir: str | Path) -> Path:
        """``run_dir/results.json``, every path relative to ``run_dir``; written atomically."""
        run_dir = Path(run_dir)
        stored = {key: _stored(key, value, run_dir) for key, value in self.to_dict().items()}
        target = run_dir / RESULTS_FILE
        with replaced(target) as tmp:
            tmp.write_text(json.dumps(stored, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return target


class RunFolder:
    """A finished train.py run folder, read through its results.json; its files resolved inside it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._results: RunResults | None = None

    @staticmethod
    def is_run(path: str | Path) -> bool:
        return (Path(path) / RESULTS_FILE).is_file()

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def results(self) -> RunResults:
        if self._results is None:
            self._results = read(self.path)
        return self._results

    # -- the run's own files ---------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return Path(self.results.config) if self.results.config else self.path / CONFIG_FILE

    @property
    def checkpoint_path(self) -> Path | None:
        return Path(self.results.checkpoint) if self.results.checkpoint else None

    @property
    def predictions_path(self) -> Path | None:
        return Path(self.results.predictions) if self.results.predictions else None

    @property
    def test_predictions_path(self) -> Path | None:
        return Path(self.results.test_predictions) if self.results.test_predictions else None

    @property
    def unlabeled_probs_path(self) -> Path:
        """Where the run's class probabilities on unlabeled rows are, or are cached when first needed (an older
        results.json's ``unlabeled_probs`` named the same file)."""
        return self.path / UNLABELED_PROBS_FILE

    @property
    def overrides(self) -> dict[str, str]:
        """The run's command-line overrides (Hydra's .hydra/overrides.yaml), key -> value, without +/~ marks."""
        import yaml

        path = self.path / ".hydra" / "overrides.yaml"
        items = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else []
        return {key.lstrip("+~"): value for key, _, value in (str(item).partition("=") for item in items or [])}

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

    @property
    def export_path(self) -> Path | None:
        return Path(self.results.export_dir) if self.results.export_dir else None

    def resolve(self, stored: str) -> Path:
        """An extra's path (stored relative to this folder) as a usable path."""
        return Path(os.path.normpath(self.path / stored))

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"


def read(run_dir: str | Path) -> RunResults:
    """``run_dir/results.json`` with its paths resolved against ``run_dir`` (see the module's docstring)."""
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: no {RESULTS_FILE} (not a finished train.py run)") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: not a results.json (a JSON object is expected)")
    results = RunResults.from_dict(values)
    for key, subfolder in OWN_FILES.items():
        value = getattr(results, key)
        if value:
            setattr(results, key, str(_own_file(run_dir, value, subfolder)))
    results.pretrained = _encoder(run_dir, results.pretrained)
    for key in ("export_dir", "ipet_parent", "wandb_dir"):
        value = getattr(results, key)
        if value:
            setattr(results, key, str(_outside(run_dir, value)))
    if results.ipet_teachers:
        results.ipet_teachers = [str(_outside(run_dir, p)) for p in results.ipet_teachers]
    if results.teachers:
        results.teachers = [{**t, "run": str(_outside(run_dir, t["run"]))} if t.get("run") else t for t in results.teachers]
    return results


def _own_file(run_dir: Path, stored: str, subfolder: str) -> Path:
    """A file of the run itself, inside ``run_dir`` whatever the stored path says."""
    path = Path(stored)
    if not path.is_absolute() and ".." not in path.parts:
        return run_dir / path
    return run_dir / subfolder / path.name if subfolder else run_dir / path.name


def _outside(run_dir: Path, stored: str) -> Path:
    """A path that may lead outside the run (another run, an export folder): relative to ``run_dir``. An older,
    absolute one is kept as it is, except an export folder that moved along with the run."""
    path = Path(stored)
    if path.is_absolute():
        moved = run_dir / path.name
        return moved if path.name == "export" and moved.is_dir() else path
    return Path(os.path.normpath(run_dir / path))


def _encoder(run_dir: Path, stored: str | None) -> str | None:
    """``pretrained``: a hub name stays as it is; a stored relative folder is resolved against ``run_dir``."""
    if not stored or os.path.isabs(stored):
        return stored
    if stored.startswith("..") or (run_dir / stored).exists():
        return str(_outside(run_dir, stored))
    return stored


def _stored(key: str, value: Any, run_dir: Path) -> Any:
    """``value`` as results.json holds it: paths relative to ``run_dir``."""
    if value is None:
        return None
    if key in OWN_FILES or key in OUTSIDE_PATHS:
        if key == "pretrained" and not os.path.isabs(str(value)) and not Path(str(value)).exists():
            return value  # a hub name
        return _relative(str(value), run_dir)
    if key == "ipet_teachers":
        return [_relative(str(p), run_dir) for p in value]
    if key == "teachers":
        return [{**t, "run": _relative(str(t["run"]), run_dir)} if t.get("run") else t for t in value]
    return _relative_inside(value, run_dir) if key in PATH_EXTRAS else value


def _relative(path: str, run_dir: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(run_dir))).as_posix()


def _relative_inside(value: Any, run_dir: Path) -> Any:
    """An extra with every absolute path in it (at any depth) made relative to ``run_dir``."""
    if isinstance(value, str):
        return _relative(value, run_dir) if os.path.isabs(value) else value
    if isinstance(value, dict):
        return {k: _relative_inside(v, run_dir) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative_inside(v, run_dir) for v in value]
    return value
