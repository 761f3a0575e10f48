"""Writes the test.json predictions as a FewCLUE leaderboard file (one JSON object per line); for a task of one's
own (``data=files``), the predictions of ``data.predict`` in the same format."""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from datamodules.protocol import TaskData
from datamodules.runs.writing import replaced


class LeaderboardWriter(BasePredictionWriter):
    """Collects the rows that ``predict_step`` returns and writes ``<output_dir>/<task.prediction_file>`` (the task's
    FewCLUE ``submission_file``, else ``<task>_predict.json``); the task is the DataModule's (``TaskData.task``)."""

    def __init__(self, output_dir: str) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = Path(output_dir)
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions, batch_indices) -> None:
        rows = [row for batch in _flatten(predictions) for row in batch]
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            gathered: list = [None] * trainer.world_size
            dist.all_gather_object(gathered, rows)
            rows = _unique_by_id([row for part in gathered for row in part])
        if not trainer.is_global_zero:
            return
        # Batches come in length order (datamodules.epoch_shuffle.LengthOrder): write in test.json's order.
        datamodule: TaskData = trainer.datamodule
        position = {json.dumps(row.id): i for i, row in enumerate(datamodule.predict_rows)}
        rows.sort(key=lambda row: position.get(json.dumps(row["id"]), len(position)))
        path = self.output_dir / datamodule.task.prediction_file
        with replaced(path) as tmp:  # whole or not at all (a full disk, a signal)
            tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        self.path = path


def _flatten(predictions):
    # One predict dataloader gives a list of batches; several give a list of lists.
    if predictions and isinstance(predictions[0], list) and predictions[0] and isinstance(predictions[0][0], list):
        return [batch for loader in predictions for batch in loader]
    return predictions


def _unique_by_id(rows: list[dict]) -> list[dict]:
    # DistributedSampler pads the last batch by repeating rows.
    seen, unique = set(), []
    for row in rows:
        key = json.dumps(row["id"])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique
