"""``data=files``: a task's rows from a user's own files (JSON lines, csv or tsv), with optional k-shot sampling.

``data.train`` and ``data.dev`` are labelled and required; ``data.test`` (labelled: ``test/acc``),
``data.predict`` (unlabelled: predicted into the run's ``predictions/``) and ``data.unlabeled``
(self-training, the auxiliary MLM) are optional. Columns or keys are the task's ``text_fields``,
``label_field`` and ``id_fields``; a row without an id gets its line number (results.json counts them
under ``data/line_number_ids``). ``data.shots=k`` trains on k rows per class drawn from ``data.train`` with
``data.sample_seed`` (``data.dev_shots`` likewise from ``data.dev``); the drawn ids are written to
``data.ids_file`` in the run directory. Everything else (loaders, pseudo-labels, unlabeled rows) is the
shared ``TaskRowsDataModule``'s, as for FewCLUE.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datamodules.tasks.fewclue import TaskRowsDataModule
from datamodules.tasks.rows import Row, file_format, read_rows
from datamodules.tasks.task_spec import TaskSpec
from datamodules.errors import ConfigError
from datamodules.runs.writing import replaced

log = logging.getLogger(__name__)


class FilesDataModule(TaskRowsDataModule):
    def __init__(
        self,
        task: TaskSpec,
        train: str,
        dev: str,
        test: str | None,
        predict: str | None,
        unlabeled: str | None,
        shots: int | None,
        dev_shots: int | None,
        sample_seed: int,
        ids_file: str,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        max_unlabeled: int | None,
        mlm_batch_size: int,
        heldout_max: int,
        seed: int,
    ) -> None:
        super().__init__(task, batch_size, eval_batch_size, num_workers, max_unlabeled, mlm_batch_size, heldout_max, seed)
        self.files = _checked_files(train=train, dev=dev, test=test, predict=predict, unlabeled=unlabeled)
        self.shots, self.dev_shots, self.sample_seed = _checked_sampling(shots, dev_shots, sample_seed)
        self.ids_file = Path(ids_file)
        self._ready = False

    @staticmethod
    def check_settings(data: Mapping[str, Any]) -> None:
        """The files and sampling values a run would refuse, checked from the config alone (a sweep's preflight
        checks every job with it before the first one trains)."""
        _checked_files(**{key: data.get(key) for key in FILE_KEYS})
        _checked_sampling(data.get("shots"), data.get("dev_shots"), data.get("sample_seed", 0))

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        files = self.files
        train = self._read("train", labelled=True)
        dev = self._read("dev", labelled=True)
        self.labelled_rows = self._sample(train, "train", self.shots)
        self.train_rows = list(self.labelled_rows)
        self.val_rows = self._sample(dev, "dev", self.dev_shots)
        self._warn_unseen_classes()
        self._warn_dev_in_train()
        self.test_rows = self._read("test", labelled=True) if files["test"] else None
        self.test_set = str(files["test"]) if files["test"] else None
        self.predict_rows = self._read("predict", labelled=False) if files["predict"] else []
        self.stats = {
            "data/train_rows": len(self.train_rows), "data/val_rows": len(self.val_rows),
            "data/test_rows": len(self.test_rows or []), "data/predict_rows": len(self.predict_rows),
            "data/files": {key: str(path) for key, path in files.items() if path},
        }
        if self.shots or self.dev_shots:
            self._write_ids(train, dev)
        used = {id(row) for row in [*self.labelled_rows, *self.val_rows]}
        left_out = [row for row in [*train, *dev] if id(row) not in used] if self.heldout_max else []
        self.heldout_rows = self.held_out(left_out, "the labelled rows data.shots / data.dev_shots left out")
        self._count_line_ids({"train": self.train_rows, "dev": self.val_rows, "test": self.test_rows or [],
                              "predict": self.predict_rows})
        self._ready = True

    @property
    def unlabeled_path(self) -> Path | None:
        return self.files["unlabeled"]

    def read_unlabeled(self, path: Path) -> list[Row]:
        rows = read_rows(self.task, path, labelled=False, allow_empty=True, line_ids=True)
        self._count_line_ids({"unlabeled": rows})
        return rows

    # -- reading and sampling --------------------------------------------------------------------
    def _read(self, key: str, labelled: bool) -> list[Row]:
        return read_rows(self.task, self.files[key], labelled=labelled, line_ids=True)

    def _sample(self, rows: list[Row], key: str, shots: int | None) -> list[Row]:
        """``shots`` rows of each class, drawn with ``data.sample_seed`` (the train and dev draws are independent),
        in file order; every row when ``shots`` is None."""
        if shots is None:
            return rows
        setting = "shots" if key == "train" else "dev_shots"
        counts = self._class_counts(rows)
        absent = self._absent_classes(counts)
        if absent:
            raise ConfigError(
                f"data.{setting}={shots}: {self.files[key]} has no row of {_names(absent)}; data.{setting} "
                f"draws {shots} row(s) of every class: add such rows, or data.{setting}=null (every row)"
            )
        rng = random.Random(f"{self.sample_seed}:{key}")
        chosen: list[int] = []
        for label in range(self.task.num_classes):
            members = [i for i, row in enumerate(rows) if row.label == label]
            if len(members) < shots:
                raise ConfigError(
                    f"data.{setting}={shots}: {self.files[key]} has {len(members)} row(s) of class "
                    f"{self._class_name(label)!r}; allowed: at most {min(counts)} (the rarest class), or null for "
                    f"every row"
                )
            chosen += rng.sample(members, shots)
        return [rows[i] for i in sorted(chosen)]

    def _class_counts(self, rows: list[Row]) -> list[int]:
        return [sum(row.label == c for row in rows) for c in range(self.task.num_classes)]

    def _class_name(self, label: int) -> str:
        return self.task.label_list[label] if self.task.label_list else str(label)

    def _absent_classes(self, counts: list[int]) -> list[str]:
        return [self._class_name(c) for c, n in enumerate(counts) if n == 0]

    # -- what would make training or selection quietly meaningless --------------------------------------------
    def _warn_unseen_classes(self) -> None:
        """One line per file whose rows lack a class (data.shots/dev_shots refuse that outright): training on the
        other classes only, or selecting the checkpoint on a dev set that cannot test a class."""
        if self.task.kind == "multiple_choice":
            return  # the classes are candidate positions
        for key, rows, effect in (
            ("train", self.labelled_rows, "the run trains on the other classes only"),
            ("dev", self.val_rows, "val/acc, which selects the checkpoint, never tests it"),
        ):
            counts = self._class_counts(rows)
            absent = self._absent_classes(counts)
            if not absent:
                continue
            present = [self._class_name(c) for c, n in enumerate(counts) if n]
            alone = (f" (every row is {present[0]!r}: predicting {present[0]!r} for every row scores val/acc 1.0)"
                     if key == "dev" and len(present) == 1 else "")
            log.warning("data.%s=%s has no row of %s; %s%s", key, self.files[key], _names(absent), effect, alone)

    def _warn_dev_in_train(self) -> None:
        """One line when dev rows are training rows (the same text, compared as ``held_out`` does): val/acc then
        selects the checkpoint partly on rows it trained on."""
        training = {self._text_of(row) for row in self.labelled_rows}
        repeated = sum(self._text_of(row) in training for row in self.val_rows)
        if repeated:
            same = " (the same file)" if self.files["train"] == self.files["dev"] else ""
            log.warning("data.dev=%s: %d of its %d row(s) repeat a text of data.train=%s%s; val/acc, which selects "
                        "the checkpoint, is partly measured on rows the run trains on",
                        self.files["dev"], repeated, len(self.val_rows), self.files["train"], same)

    def _write_ids(self, train: list[Row], dev: list[Row]) -> None:
        """The drawn ids, by split, so that a k-shot run can be repeated and compared (data.ids_file)."""
        record = {"sample_seed": self.sample_seed}
        for key, shots, rows, pool in (("train", self.shots, self.train_rows, train), ("dev", self.dev_shots, self.val_rows, dev)):
            if shots is not None:
                record[key] = {"file": str(self.files[key]), "shots": shots, "rows_in_file": len(pool),
                               "ids": [row.id for row in rows]}
        with replaced(self.ids_file) as tmp:
            tmp.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        self.stats["data/sampled_ids"] = str(self.ids_file)
        log.info("k-shot sample (seed %d) written to %s", self.sample_seed, self.ids_file)

    def _count_line_ids(self, splits: dict[str, list[Row]]) -> None:
        """results.json says which files' rows have line numbers for ids (they had none of their own)."""
        counts = {key: sum(row.id_from_line for row in rows) for key, rows in splits.items()}
        counts = {key: n for key, n in counts.items() if n}
        if counts:
            self.stats.setdefault("data/line_number_ids", {}).update(counts)


FILE_KEYS = ("train", "dev", "test", "predict", "unlabeled")


def _checked_files(**files: str | None) -> dict[str, Path | None]:
    return {key: _checked_file(key, files[key]) for key in FILE_KEYS}


def _checked_sampling(shots: Any, dev_shots: Any, sample_seed: Any) -> tuple[int | None, int | None, int]:
    if isinstance(sample_seed, bool) or not isinstance(sample_seed, int):
        raise ConfigError(f"data.sample_seed={sample_seed!r}; allowed: an integer")
    return _checked_count("shots", shots), _checked_count("dev_shots", dev_shots), sample_seed


def _checked_file(key: str, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(str(value)).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"data.{key}={value}: no such file")
    try:
        file_format(path)
    except ValueError as err:
        raise ConfigError(f"data.{key}={value}: {str(err).split(': ', 1)[1]}") from None
    return path


def _names(classes: list[str]) -> str:
    """``class 'bad'``, ``classes 'a', 'b'``."""
    return ("class " if len(classes) == 1 else "classes ") + ", ".join(repr(name) for name in classes)


def _checked_count(key: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"data.{key}={value!r}; allowed: an integer >= 1, or null for every row")
    return value
