"""The labelled test rows as the selected checkpoint predicted them: ``<run>/test_predictions.jsonl``.

When a run scores a labelled test set (FewCLUE's test_public.json, ``data.test`` of ``data=files``),
``TestPredictions`` writes one JSON line per test row, in the file's order, from the same batches that give
``test/acc`` (so the file's accuracy is ``test/acc``):

    {"id": "t02", "line": 3, "text": "台灯用了三天就不亮了。", "gold": "bad", "label": "bad", "label_name": "差评",
     "correct": true, "probs": {"good": 0.1234, "bad": 0.8766}}

``gold`` and ``label`` are official labels as the leaderboard writes them (chid: the candidate's index), ``probs``
every class's probability rounded to 4 digits; ``text`` is the row's text fields joined with " ｜ ". results.json
names the file (``test_predictions``, ``RunFolder.test_predictions_path``). The held-out rows (``heldout/acc``) are
not written: they are a sample of the training files.

``ScoredRows`` matches a test loader's batches back to the rows they hold (by the loader's sampler order, which
also holds under DDP) and gathers them from every rank; the W&B test panels (callbacks/wandb_panels.py) use it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from datamodules.protocol import TaskData
from datamodules.runs.results import TEST_PREDICTIONS_FILE
from lightning_modules.stages.base import StepOutput

# Probabilities in the file, rounded as predict.py rounds them.
PROB_DIGITS = 4


@dataclass
class Scored:
    """One evaluated row: the row, its gold and predicted class indices, the class probabilities."""

    row: Any
    gold: int
    predicted: int
    probs: list[float]


class ScoredRows:
    """The predictions of one labelled evaluation set (``test`` by default) as its test loader's batches come."""

    def __init__(self, split: str = "test") -> None:
        self.split = split
        self._rows: list = []
        self._order: list[int] = []
        self._next = 0
        self._loader: int | None = None
        self._seen: list[tuple[int, int, list[float]]] = []  # (index into the rows, predicted, probabilities)
        self.mismatch = False

    def start(self, trainer: Trainer) -> bool:
        """Prepare for a test epoch; False when the run has no ``split`` set to score."""
        self._seen, self._next, self.mismatch = [], 0, False
        datamodule = trainer.datamodule
        if not isinstance(datamodule, TaskData) or self.split not in datamodule.evaluation_sets:
            self._loader = None
            return False
        self._loader = datamodule.evaluation_sets.index(self.split)
        self._rows = datamodule.test_rows if self.split == "test" else datamodule.heldout_rows
        loaders = trainer.test_dataloaders
        loader = loaders[self._loader] if isinstance(loaders, (list, tuple)) else loaders
        # The indices this rank's batches hold, in their order (LengthOrder; under DDP the rank's share of it).
        self._order = list(iter(loader.sampler))
        return True

    def add(self, outputs: Any, batch: dict, dataloader_idx: int) -> None:
        if self._loader is None or dataloader_idx != self._loader or self.mismatch:
            return
        if not isinstance(outputs, StepOutput) or outputs.log_probs is None:
            self.mismatch = True  # a stage that gives no class probabilities: nothing to write
            return
        log_probs = outputs.log_probs.detach()
        predicted = log_probs.argmax(-1) if outputs.predictions is None else outputs.predictions
        probs = torch.softmax(log_probs.double(), dim=-1)
        ids = batch.get("ids") if isinstance(batch, dict) else None
        indices = self._order[self._next : self._next + len(predicted)]
        self._next += len(predicted)
        if len(indices) != len(predicted) or (ids is not None and [self._rows[i].id for i in indices] != list(ids)):
            self.mismatch = True  # batches that do not follow the loader's sampler: better nothing than wrong rows
            return
        for index, pred, row_probs in zip(indices, predicted.tolist(), probs.tolist()):
            self._seen.append((index, int(pred), [round(p, PROB_DIGITS) for p in row_probs]))

    def gathered(self, trainer: Trainer) -> list[Scored] | None:
        """Every rank's rows, once each, in the file's order; None when there is nothing (or nothing sure) to give."""
        mismatch = self.mismatch
        seen = self._seen
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, (mismatch, seen))
            mismatch = any(part[0] for part in parts)
            seen = [item for part in parts for item in part[1]]
        if self._loader is None or mismatch or not seen:
            return None
        unique = {index: (pred, probs) for index, pred, probs in seen}  # a padding sampler repeats rows
        return [Scored(self._rows[i], self._rows[i].label, *unique[i]) for i in sorted(unique)]


class TestPredictions(Callback):
    __test__ = False  # not a pytest test class

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)
        self.scored = ScoredRows("test")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.scored.start(trainer)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self.scored.add(outputs, batch, dataloader_idx)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scored = self.scored.gathered(trainer)
        if scored is None:
            return
        path = self.output_dir / TEST_PREDICTIONS_FILE
        pl_module.results["test_predictions"] = str(path)
        if not trainer.is_global_zero:
            return
        task = trainer.datamodule.task
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for item in scored:
                handle.write(json.dumps(record(task, item), ensure_ascii=False) + "\n")
        tmp.replace(path)


def record(task, item: Scored) -> dict[str, Any]:
    """One line of the file (see the module's docstring)."""
    row = item.row
    if task.kind == "multiple_choice":
        candidates = row.fields.get("candidates") or []
        name = candidates[item.predicted] if item.predicted < len(candidates) else str(item.predicted)
        probs = {str(c): p for c, p in enumerate(item.probs)}
    else:
        name = task.labels[task.label_list[item.predicted]]
        probs = dict(zip(task.label_list, item.probs))
    return {"id": row.id, "line": row.line, "text": row_text(task, row), "gold": task.official_label(item.gold),
            "label": task.official_label(item.predicted), "label_name": name, "correct": item.gold == item.predicted,
            "probs": probs}


def row_text(task, row) -> str:
    """The row's text fields joined with " ｜ " (cluewsc adds its two spans)."""
    text = " ｜ ".join(str(row.fields[name]) for name in task.text_fields if name in row.fields)
    spans = [str(row.fields[k]) for k in ("span1", "span2") if k in row.fields]
    return f"{text} [{' / '.join(spans)}]" if spans else text
