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
from pathlib import Path

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
        self.files = {key: _checked_file(key, value) for key, value in
                      (("train", train), ("dev", dev), ("test", test), ("predict", predict), ("unlabeled", unlabeled))}
        self.shots = _checked_count("shots", shots)
        self.dev_shots = _checked_count("dev_shots", dev_shots)
        if isinstance(sample_seed, bool) or not isinstance(sample_seed, int):
            raise ConfigError(f"data.sample_seed={sample_seed!r}; allowed: an integer")
        self.sample_seed = sample_seed
        self.ids_file = Path(ids_file)
        self._ready = False

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        files = self.files
        train = self._read("train", labelled=True)
        dev = self._read("dev", labelled=True)
        self.labelled_rows = self._sample(train, "train", self.shots)
        self.train_rows = list(self.labelled_rows)
        self.val_rows = self._sample(dev, "dev", self.dev_shots)
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
        rng = random.Random(f"{self.sample_seed}:{key}")
        chosen: list[int] = []
        for label in range(self.task.num_classes):
            members = [i for i, row in enumerate(rows) if row.label == label]
            if len(members) < shots:
                name = self.task.label_list[label] if self.task.label_list else str(label)
                raise ConfigError(
                    f"data.{setting}={shots}: {self.files[key]} has {len(members)} row(s) of class {name!r}; "
                    f"allowed: at most {min(self._class_counts(rows))} (the rarest class), or null for every row"
                )
            chosen += rng.sample(members, shots)
        return [rows[i] for i in sorted(chosen)]

    def _class_counts(self, rows: list[Row]) -> list[int]:
        return [sum(row.label == c for row in rows) for c in range(self.task.num_classes)]

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


def _checked_count(key: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"data.{key}={value!r}; allowed: an integer >= 1, or null for every row")
    return value
