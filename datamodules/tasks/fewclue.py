"""The FewCLUE DataModule shared by every fine-tuning stage, on a base that any source of one task's rows shares.

It reads and validates rows; turning rows into tensors is the stage's job: train.py hands the
stage's ``collate(rows) -> batch`` (and ``collate_mlm`` for a stage with an auxiliary masked-LM loss
on unlabeled.json) to the DataModule through ``connect``. It is a ``datamodules.protocol.TaskData``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from datamodules.epoch_shuffle import EpochShuffle, LengthOrder, fixed_generator
from datamodules.tasks.download import locate_task_dir, split_files
from datamodules.tasks.rows import Row, read_rows
from datamodules.mlm_texts import MlmText, mlm_loader
from datamodules.tasks.task_configs import FEWCLUE_SPLITS
from datamodules.tasks.task_spec import TaskSpec
from datamodules.errors import ConfigError

log = logging.getLogger(__name__)


class TaskRowsDataModule(LightningDataModule):
    """The rows of one task and their loaders; where the rows come from is the subclass's ``setup``
    (``FewClueDataModule``: a FewCLUE task folder; ``datamodules.tasks.files.FilesDataModule``: a user's files)."""

    def __init__(
        self,
        task: TaskSpec,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        max_unlabeled: int | None,
        mlm_batch_size: int,
        heldout_max: int,
        seed: int,
    ) -> None:
        super().__init__()
        if isinstance(heldout_max, bool) or not isinstance(heldout_max, int) or heldout_max < 0:
            raise ConfigError(f"data.heldout_max={heldout_max!r}; allowed: an integer >= 0 (0: no held-out estimate)")
        self.task = task
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.max_unlabeled = max_unlabeled
        self.mlm_batch_size = mlm_batch_size
        self.heldout_max = heldout_max
        self.seed = seed
        self.collate_fn: Callable[[list[Row]], dict] | None = None
        self.collate_mlm: Callable[[list[MlmText]], dict] | None = None
        self.labelled_rows: list[Row] = []
        self.train_rows: list[Row] = []
        self.val_rows: list[Row] = []
        self.test_rows: list[Row] | None = None
        # The labelled test set's name in results.json ("test_set"), when there is one.
        self.test_set: str | None = None
        self.predict_rows: list[Row] = []
        # Labelled rows this run neither trains on nor selects with, scored as heldout/acc (``held_out``).
        self.heldout_rows: list[Row] = []
        self.stats: dict = {}
        self._unlabeled_rows: list[Row] | None = None

    def connect(self, collate: Callable[[list[Row]], dict], collate_mlm: Callable[[list[MlmText]], dict] | None = None) -> None:
        self.collate_fn = collate
        self.collate_mlm = collate_mlm

    def set_pseudo_labelled(self, rows: list[Row]) -> None:
        """Train on the labelled rows plus these (self-training replaces its earlier pseudo-labels)."""
        self.train_rows = [*self.labelled_rows, *rows]

    @property
    def evaluation_sets(self) -> tuple[str, ...]:
        return tuple(name for name, rows in (("test", self.test_rows), ("heldout", self.heldout_rows)) if rows)

    def held_out(self, candidates: list[Row], source: str) -> list[Row]:
        """At most ``heldout_max`` of ``candidates`` (drawn with the seed, kept in file order) whose text is
        neither a training nor a dev text of this run, nor repeated among the candidates."""
        seen = {self._text_of(row) for row in [*self.labelled_rows, *self.val_rows]}
        kept = []
        for row in candidates:
            text = self._text_of(row)
            if text not in seen:
                seen.add(text)
                kept.append(row)
        if len(kept) > self.heldout_max:
            chosen = random.Random(f"{self.seed}:heldout").sample(range(len(kept)), self.heldout_max)
            kept = [kept[i] for i in sorted(chosen)]
        self.stats.update({"data/heldout_rows": len(kept), "data/heldout_source": source})
        if kept:
            log.info("held-out estimate: %d labelled rows of %s (never trained on or selected with)", len(kept), source)
        return kept

    @property
    def unlabeled_path(self) -> Path | None:
        """The file of unlabeled rows, or None."""
        return None

    def read_unlabeled(self, path: Path) -> list[Row]:
        return read_rows(self.task, path, labelled=False, allow_empty=True)

    def unlabeled_rows(self) -> list[Row]:
        """Rows of unlabeled.json (the first ``max_unlabeled`` of them), or [] when the task has none. Rows whose
        text is also a dev, held-out, test.json or test_public.json row are left out: pseudo-labelling them would train on
        the evaluated texts (eprstmt's unlabeled.json holds dozens of test.json texts word for word)."""
        if self._unlabeled_rows is None:
            path = self.unlabeled_path
            rows = self.read_unlabeled(path) if path else []
            evaluated = {self._text_of(row) for row in
                         [*self.val_rows, *self.predict_rows, *(self.test_rows or []), *self.heldout_rows]}
            kept = [row for row in rows if self._text_of(row) not in evaluated]
            self.stats["data/unlabeled_overlap_dropped"] = len(rows) - len(kept)
            if len(kept) < len(rows):
                log.info("%s: %d rows repeat a dev/test text and are left out", path.name, len(rows) - len(kept))
            self._unlabeled_rows = kept[: self.max_unlabeled] if self.max_unlabeled else kept
        return self._unlabeled_rows

    @staticmethod
    def text_length(row: Row) -> int:
        return sum(len(value) for value in row.fields.values() if isinstance(value, str))

    def _text_of(self, row: Row) -> tuple:
        return tuple(str(row.fields.get(name, "")) for name in self.task.text_fields)

    def texts(self) -> list[str]:
        """Every text of the task's files, for building a character vocabulary."""
        rows = [*self.train_rows, *self.val_rows, *(self.test_rows or []), *self.predict_rows, *self.heldout_rows]
        texts = [str(v) for row in rows for v in row.fields.values() if isinstance(v, str)]
        texts += [c for row in rows for c in row.fields.get("candidates", [])]
        return texts

    def loader(self, rows: list, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        if self.collate_fn is None:
            raise RuntimeError(f"{type(self).__name__}.collate_fn is not set: the stage module provides it")
        return DataLoader(
            rows,
            batch_size=batch_size or (self.batch_size if shuffle else self.eval_batch_size),
            sampler=EpochShuffle(rows, self.seed) if shuffle else LengthOrder([self.text_length(row) for row in rows]),
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            generator=fixed_generator(self.seed),
        )

    def train_dataloader(self) -> DataLoader | dict[str, DataLoader]:
        main = self.loader(self.train_rows, shuffle=True)
        texts = self.mlm_texts() if self.collate_mlm is not None else []
        if not texts:
            return main
        extra = mlm_loader(texts, self.mlm_batch_size, len(main), self.collate_mlm, self.seed, self.num_workers)
        return {"main": main, "mlm": extra}

    def mlm_texts(self) -> list[MlmText]:
        """The unlabeled rows' texts (text fields joined by a space), for the auxiliary masked LM."""
        fields = self.task.text_fields
        return [MlmText(" ".join(str(row.fields[f]) for f in fields if f in row.fields)) for row in self.unlabeled_rows()]

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_rows)

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per labelled evaluation set, in the order of ``evaluation_sets``."""
        rows = {"test": self.test_rows, "heldout": self.heldout_rows}
        if not self.evaluation_sets:
            raise RuntimeError("there is no labelled evaluation set (evaluation_sets is empty)")
        return [self.loader(rows[name]) for name in self.evaluation_sets]

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.predict_rows)


class FewClueDataModule(TaskRowsDataModule):
    """A FewCLUE task folder: ``data.split`` picks train_k/dev_k (or few_all); test_public.json is evaluated when
    present, test.json predicted, unlabeled.json used by the stages that want it."""

    def __init__(
        self,
        task: TaskSpec,
        split: str | int,
        data_dir: str,
        cache_dir: str,
        download_url: str,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        max_unlabeled: int | None,
        mlm_batch_size: int,
        heldout_max: int,
        seed: int,
    ) -> None:
        super().__init__(task, batch_size, eval_batch_size, num_workers, max_unlabeled, mlm_batch_size, heldout_max, seed)
        self.split = str(split)
        split_files(self.split)  # fails early on a bad split name
        self.data_dir = data_dir
        self.cache_dir = cache_dir
        self.download_url = download_url
        self.task_dir: Path | None = None

    def prepare_data(self) -> None:
        locate_task_dir(self.task.name, self.split, self.data_dir, self.cache_dir, self.download_url)

    def setup(self, stage: str | None = None) -> None:
        if self.task_dir is not None:
            return
        self.task_dir = locate_task_dir(self.task.name, self.split, self.data_dir, self.cache_dir, self.download_url)
        train_name, dev_name = split_files(self.split)
        self.labelled_rows = read_rows(self.task, self.task_dir / train_name, labelled=True)
        self.train_rows = list(self.labelled_rows)
        self.val_rows = read_rows(self.task, self.task_dir / dev_name, labelled=True)
        test_public = self.task_dir / "test_public.json"
        self.test_rows = read_rows(self.task, test_public, labelled=True) if test_public.is_file() else None
        self.test_set = test_public.name if self.test_rows is not None else None
        self.predict_rows = read_rows(self.task, self.task_dir / "test.json", labelled=False)
        self.stats = {"data/train_rows": len(self.train_rows), "data/val_rows": len(self.val_rows),
                      "data/test_rows": len(self.test_rows or []), "data/predict_rows": len(self.predict_rows)}
        self.heldout_rows = self.held_out(*self._other_splits())

    def _other_splits(self) -> tuple[list[Row], str]:
        """The train and dev rows of the other four splits (none for split=all, which holds them all)."""
        if self.split not in FEWCLUE_SPLITS or not self.heldout_max:
            return [], "none"
        others = [k for k in FEWCLUE_SPLITS if k != self.split]
        rows = [row for k in others for name in split_files(k) if (self.task_dir / name).is_file()
                for row in read_rows(self.task, self.task_dir / name, labelled=True)]
        return rows, f"train/dev of splits {', '.join(others)}"

    @property
    def unlabeled_path(self) -> Path | None:
        path = self.task_dir / "unlabeled.json" if self.task_dir else None
        return path if path is not None and path.is_file() and path.stat().st_size > 0 else None
