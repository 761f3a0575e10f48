"""What train.py, the stages and the callbacks may use of a DataModule, as typed protocols.

Every DataModule (FewCLUE tasks, entailment pairs, the KG-aligned corpus) is a ``StageData``;
the ones that serve one task's labelled rows (``data=fewclue``, ``data=files``) are also ``TaskData``,
which self-training, Fuzzy-PET and distillation rely on.

Callbacks take what they need of a run from here (``trainer.datamodule``), never from the stage's
attributes: the run's task (its name, classes, label names and leaderboard file name) is
``TaskData.task``; a DataModule that is not a ``TaskData`` (the pretraining corpus, entailment pairs)
serves no one task and has no ``predict_rows``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from datamodules.tasks.task_spec import TaskSpec


@runtime_checkable
class StageData(Protocol):
    # Counts and facts of the data (rows per split, alignment coverage, ...), logged at the start of
    # training and written into results.json.
    stats: dict[str, Any]

    def texts(self) -> list[str]:
        """Every text the stage will see, for building a character vocabulary."""

    def connect(self, collate: Callable[[list], dict], collate_mlm: Callable[[list], dict] | None = None) -> None:
        """The stage's collate functions; ``collate_mlm`` adds a loader of unlabeled texts to training."""

    @property
    def evaluation_sets(self) -> tuple[str, ...]:
        """The labelled sets scored with the selected checkpoint after training, in the order of
        ``test_dataloader``'s loaders: ``test`` (test_public.json, data.test) and ``heldout`` (labelled rows the
        run never trained on or selected with); () for none."""

    @property
    def predict_rows(self) -> list:
        """Rows to write predictions for (the leaderboard's test.json); [] for none."""


@runtime_checkable
class TaskData(StageData, Protocol):
    task: TaskSpec
    train_rows: list
    val_rows: list
    batch_size: int
    eval_batch_size: int

    def unlabeled_rows(self) -> list:
        """The task's unlabeled rows (capped by ``data.max_unlabeled``); [] when it has none."""

    def set_pseudo_labelled(self, rows: list) -> None:
        """Train on the labelled rows plus these pseudo-labelled ones (replacing earlier ones)."""
