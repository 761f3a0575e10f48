"""``logger=csv``: Lightning's CSVLogger, whose resumed run continues its run's ``csv/metrics.csv``.

Lightning's writer deletes an existing metrics.csv when it starts, so a resumed run (``ckpt_path=``) would hold only
the rows logged after the resume, and a resume that fails before training would lose the whole history. Here a
resumed run keeps the file and appends to it with Lightning's own writer (it appends to a file that exists, under its
header). The steps between the checkpoint and the kill are trained and logged again: a row the earlier run already
wrote (the same step and metrics) is not written twice, and one whose values differ replaces the earlier row. A row
is written as soon as it is logged (``flush_logs_every_n_steps: 1``), so a killed run's rows are on disk.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from datamodules.errors import NotWritable
from datamodules.runs.writing import disk_error, reason, replaced

RowKey = tuple[int, frozenset]  # (step, the metrics the row holds)


class MetricsCSV(CSVLogger):
    def __init__(self, save_dir: str, name: str, version: str, flush_logs_every_n_steps: int,
                 continue_from: str | None) -> None:
        """``continue_from``: the checkpoint a resumed run starts from (``ckpt_path``); None for a new run."""
        super().__init__(save_dir=save_dir, name=name, version=version,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)
        self.continue_from = continue_from

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = (ContinuedWriter if self.continue_from else NamedWriter)(log_dir=self.log_dir)
        return self._experiment


class NamedWriter(ExperimentWriter):
    """Lightning's writer, whose failed write (a full disk) names metrics.csv."""

    def save(self) -> None:
        try:
            super().save()
        except OSError as err:
            if not disk_error(err):
                raise
            raise NotWritable(f"cannot write {self.metrics_file_path}: {reason(err)}") from None


class ContinuedWriter(NamedWriter):
    """Lightning's writer, continuing the metrics.csv that is there."""

    def _check_log_dir_exists(self) -> None:
        """(Lightning deletes metrics.csv here.) The earlier rows and their columns are read instead."""
        self.earlier: dict[RowKey, dict[str, str]] = {}
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        text = path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]  # a row cut by a kill while it was written
        reader = csv.DictReader(io.StringIO(text, newline=""))
        self.metrics_keys = list(reader.fieldnames or [])
        for row in reader:
            try:
                self.earlier[row_key(row)] = row
            except (TypeError, ValueError):  # no step: not a row Lightning wrote
                continue

    def save(self) -> None:
        """New rows that repeat an earlier row are dropped; an earlier row that a new one replaces is removed."""
        if self.earlier and self.metrics:
            replaced_rows = []
            kept = []
            for row in self.metrics:
                key = row_key(row)
                before = self.earlier.get(key)
                if before is not None and all(before.get(k) == str(v) for k, v in row.items()):
                    continue
                if before is not None:
                    replaced_rows.append(self.earlier.pop(key))
                kept.append(row)
            self.metrics = kept
            if replaced_rows:
                self._remove(replaced_rows)
            last = max((step for step, _ in self.earlier), default=-1)
            if self.metrics and min(int(row["step"]) for row in self.metrics) > last:
                self.earlier = {}  # past the earlier run's last row: Lightning's append from here on
        super().save()

    def _remove(self, rows: list[dict[str, str]]) -> None:
        path = Path(self.metrics_file_path)
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fieldnames = list(reader.fieldnames or self.metrics_keys)
            rest = [row for row in reader if row not in rows]
        with replaced(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rest)


def row_key(row: dict) -> RowKey:
    """A row's step and the metrics it holds (csv cells of absent metrics are empty)."""
    return int(float(row["step"])), frozenset(k for k, v in row.items() if k != "step" and v not in (None, ""))
