"""W&B runs that answer "which label-word set, which split, which method" (``logger=wandb``).

``run_logger`` is Lightning's ``WandbLogger`` with the run named ``<task>-<stage>-<verbalizer>-s<split>``
(parts a run lacks are left out: ``entailment-s0``), grouped by its multirun sweep (the sweep directory;
a single run: its task) and tagged ``task:``, ``stage:``, ``verbalizer:``, ``split:``. train.py adds the
resolved config as the run's config.

``WandbPanels`` (added by ``conf/logger/wandb.yaml``, so only under ``logger=wandb``) logs at every
validation a table of dev predictions (``val/predictions``: id, text, gold, predicted, probability; the
first ``max_rows`` dev rows in file order) and a confusion matrix over the whole dev set
(``val/confusion_matrix``); after training, when the run scores a labelled test set (test_public.json,
``data.test``), the same two for its rows under the selected checkpoint (``test/predictions``, the first
``max_rows`` test rows in file order, and ``test/confusion_matrix`` over all of them); and it writes the run's
project, group, name, id and directory into results.json (``wandb/*``), where ``report.py --wandb`` finds the
group. Runs whose DataModule serves no one task (not a ``datamodules.protocol.TaskData``: kgbert, mlm,
entailment) get none of the tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger

from callbacks.test_predictions import ScoredRows, row_text
from datamodules.protocol import TaskData
from lightning_modules.knowledge.masking import IGNORE
from lightning_modules.stages.base import StepOutput

# W&B refuses longer group names; a sweep directory keeps its last characters.
MAX_GROUP = 128


def run_logger(
    save_dir: str,
    project: str,
    task: str | None,
    stage: str | None,
    verbalizer: str | list[str] | None,
    split: Any,
    name: str | None,
    group: str | None,
    tags: list[str] | None,
    offline: bool,
    log_model: bool,
) -> WandbLogger:
    """``WandbLogger``; ``name``, ``group`` and ``tags`` left null are derived from the run (see the module doc)."""
    split_part = None if split is None else f"s{split}"
    if verbalizer is not None and not isinstance(verbalizer, str):
        verbalizer = "+".join(str(name) for name in verbalizer)  # verbalizer=[v1,v3]
    derived_tags = [f"{key}:{value}" for key, value in
                    (("task", task), ("stage", stage), ("verbalizer", verbalizer), ("split", split)) if value is not None]
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name or "-".join(str(part) for part in (task, stage, verbalizer, split_part) if part is not None),
        group=group or sweep_group() or task or stage,
        tags=list(tags) if tags is not None else derived_tags,
        offline=offline,
        log_model=log_model,
    )


def sweep_group() -> str | None:
    """The multirun's sweep directory (``hydra.sweep.dir`` as resolved), None outside a multirun."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return str(HydraConfig.get().sweep.dir)[-MAX_GROUP:]


class WandbPanels(Callback):
    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._seen: list[tuple[Any, int, int, float]] = []  # (row id, gold, predicted, probability)
        self._test = ScoredRows("test")

    @staticmethod
    def _logger(trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def on_fit_start(self, trainer, pl_module) -> None:
        logger = self._logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        run = logger.experiment
        pl_module.results.update({"wandb/project": run.project, "wandb/group": run.group, "wandb/name": run.name,
                                  "wandb/run_id": run.id, "wandb/dir": str(Path(run.dir).parent)})

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._seen = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not isinstance(outputs, StepOutput) or outputs.log_probs is None or "ids" not in batch:
            return
        probs, predicted = outputs.log_probs.detach().float().exp().max(-1)
        for row_id, gold, pred, prob in zip(batch["ids"], outputs.targets.tolist(), predicted.tolist(), probs.tolist()):
            if gold != IGNORE:
                self._seen.append((row_id, gold, pred, prob))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        seen = _gathered(self._seen, trainer.world_size)
        logger = self._logger(trainer)
        datamodule = trainer.datamodule
        if (logger is None or not trainer.is_global_zero or trainer.sanity_checking or not seen
                or not isinstance(datamodule, TaskData) or not datamodule.val_rows):
            return
        task, rows = datamodule.task, datamodule.val_rows
        import wandb

        by_id = {row.id: row for row in rows}
        unique = {row_id: (gold, pred, prob) for row_id, gold, pred, prob in seen if row_id in by_id}  # DDP pads with repeats
        in_file_order = sorted(unique, key=lambda row_id: by_id[row_id].line)
        table = wandb.Table(columns=["id", "text", "gold", "predicted", "probability"])
        for row_id in in_file_order[: self.max_rows]:
            gold, pred, prob = unique[row_id]
            row = by_id[row_id]
            table.add_data(str(row_id), row_text(task, row), class_name(task, row, gold), class_name(task, row, pred),
                           round(prob, 4))
        golds = [unique[r][0] for r in in_file_order]
        preds = [unique[r][1] for r in in_file_order]
        names = [class_name(task, None, c) for c in range(task.num_classes)]
        matrix = wandb.plot.confusion_matrix(y_true=golds, preds=preds, class_names=names,
                                             title=f"{task.name} dev, step {trainer.global_step}")
        logger.log_metrics({"val/predictions": table, "val/confusion_matrix": matrix}, step=trainer.global_step)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._test.start(trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._test.add(outputs, batch, dataloader_idx)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        """The labelled test rows under the selected checkpoint: a table of the first ``max_rows`` in file order
        and the confusion matrix over all of them."""
        scored = self._test.gathered(trainer)
        logger = self._logger(trainer)
        if logger is None or not trainer.is_global_zero or not scored:
            return
        import wandb

        task = trainer.datamodule.task
        table = wandb.Table(columns=["id", "text", "gold", "predicted", "probability"])
        for item in scored[: self.max_rows]:
            table.add_data(str(item.row.id), row_text(task, item.row), class_name(task, item.row, item.gold),
                           class_name(task, item.row, item.predicted), item.probs[item.predicted])
        names = [class_name(task, None, c) for c in range(task.num_classes)]
        matrix = wandb.plot.confusion_matrix(y_true=[item.gold for item in scored],
                                             preds=[item.predicted for item in scored], class_names=names,
                                             title=f"{task.name} test ({len(scored)} rows)")
        logger.log_metrics({"test/predictions": table, "test/confusion_matrix": matrix}, step=trainer.global_step)


def _gathered(items: list, world_size: int) -> list:
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list = [None] * world_size
        torch.distributed.all_gather_object(parts, items)
        return [item for part in parts for item in part]
    return items


def class_name(task, row, index: int) -> str:
    """A class as ``<official label> <Chinese name>``; chid: the candidate idiom (its index without a row)."""
    if task.kind == "multiple_choice":
        candidates = row.fields.get("candidates") if row is not None else None
        return f"{index} {candidates[index]}" if isinstance(candidates, list) and index < len(candidates) else str(index)
    label = task.label_list[index]
    name = task.labels[label]
    return label if name == label else f"{label} {name}"
