"""PET's ensemble of teachers: several runs' class probabilities on the unlabeled rows, averaged into soft labels.

A teacher is a finished run folder (stage=fuzzy_pet runs, e.g. a sweep over patterns or label-word sets).
``distill.teachers`` is a run folder, a sweep folder (every run under it with results.json), or a list of either.
A teacher is scored on the unlabeled rows when a distillation or iPET first needs them: its model is rebuilt
from its config.yaml with its own selected checkpoint (``datamodules/runs/predictor.py``, predict.py's code)
and the probabilities are cached in its folder (``unlabeled_probs.pt``: ``{"task", "split", "labels", "ids",
"probs" [N, C], "weights"}``), so a teacher is scored once; a cache that lacks some of the rows (another
``data.max_unlabeled``) is computed again. A teacher that kept no checkpoint (``keep_checkpoints=false``) can
teach only rows its cache holds (iPET's generations and ``callbacks/unlabeled_probs.py`` write one at the end
of training). As in PET, the teachers' log-probabilities are averaged with weights proportional to each run's
accuracy on its training rows before training (``weighting: train_acc_before``, results.json
``train/acc_before``; or ``dev_acc``, the dev accuracy that also chose the run's checkpoint; or ``uniform``), and
the soft label of a row is ``softmax(mean / temperature)``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from datamodules.tasks.rows import Row
from datamodules.errors import ConfigError
from datamodules.runs.results import RESULTS_FILE, UNLABELED_PROBS_FILE, RunFolder
from datamodules.runs.writing import replaced

log = logging.getLogger(__name__)

# train_acc_before (PET: each teacher's untrained cloze's accuracy on its training rows, no dev row involved),
# dev_acc (the dev accuracy that also chose the teacher's checkpoint), uniform.
WEIGHTINGS = ("train_acc_before", "dev_acc", "uniform")


@dataclass
class SoftRow(Row):
    """An unlabeled row with the ensemble's class distribution (``label`` is its argmax)."""

    soft: list[float] = field(default_factory=list)


@dataclass
class Teacher:
    run_dir: Path
    val_acc: float
    train_acc_before: float | None  # None: a teacher trained before runs measured it
    task: str
    split: str
    generation: int  # 0 for a plain run; g for a run of iPET's generation g
    ids: list | None = None  # the rows scored, once loaded or scored
    log_probs: torch.Tensor | None = None  # [N, C]

    @property
    def cache(self) -> Path:
        return RunFolder(self.run_dir).unlabeled_probs_path

    def scored(self) -> Teacher:
        """This teacher with the rows its cache holds (loaded once)."""
        if self.log_probs is None:
            if not self.cache.is_file():
                raise ConfigError(f"distill.teachers: {self.run_dir} has not been scored on unlabeled rows yet "
                                  f"(no {UNLABELED_PROBS_FILE})")
            saved, damage = read_cache(self.cache)
            if saved is None:
                raise ConfigError(f"distill.teachers: {self.cache} is damaged ({damage}); delete it and run again: the "
                                  "teacher's rows are then scored again with its checkpoint")
            self._take(saved)
        return self

    def score(self, rows: list[Row], batch_size: int | None = None) -> None:
        """Make sure every one of ``rows`` is scored: from the cache when it holds them all, else by the run's own
        selected weights, the new scores cached in the run folder. A damaged cache (a write cut short) is scored
        again, with a warning."""
        wanted = [json.dumps(row.id) for row in rows]
        damage = None
        if self.log_probs is None and self.cache.is_file():
            saved, damage = read_cache(self.cache)
            if saved is not None:
                self._take(saved)
            else:
                log.warning("distill: %s is damaged (%s); the teacher's unlabeled rows are scored again", self.cache,
                            damage)
        if self.ids is not None and set(wanted) <= {json.dumps(i) for i in self.ids}:
            return
        log.info("distill: scoring %d unlabeled rows with teacher %s", len(rows), self.run_dir)
        probs, labels, weights = score_rows(self.run_dir, rows, batch_size, damage)
        save_unlabeled_probs(self.cache, self.task, self.split, labels, [row.id for row in rows], probs, weights)
        self._take(torch.load(self.cache, weights_only=True))

    def _take(self, saved: dict) -> None:
        self.ids = list(saved["ids"])
        self.log_probs = saved["probs"].clamp_min(1e-12).log()


def read_cache(path: Path) -> tuple[dict | None, str | None]:
    """(a teacher's unlabeled_probs.pt, None), or (None, what is wrong) when the file is damaged or not a cache."""
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a cut or damaged archive fails in many ways (zip, pickle, storage)
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        return None, f"{type(err).__name__}: {first}" if first else type(err).__name__
    if not isinstance(saved, dict) or not {"ids", "probs"} <= set(saved):
        return None, "not a cache of class probabilities (no ids and probs)"
    return saved, None


def save_unlabeled_probs(path: Path, task: str, split: str, labels: list[str], ids: list, probs: torch.Tensor,
                         weights: str) -> None:
    """A run's class probabilities on unlabeled rows (the teacher cache), written atomically."""
    with replaced(path) as tmp:  # one per process: ranks of a distributed run may write at once
        torch.save({"task": task, "split": str(split), "labels": labels, "ids": ids, "probs": probs.float(),
                    "weights": weights}, tmp)


def score_rows(run_dir: Path, rows: list[Row], batch_size: int | None = None,
               damage: str | None = None) -> tuple[torch.Tensor, list[str], str]:
    """[N, C] class probabilities of ``rows`` under the run's selected weights, the class names, and the weights'
    file relative to the run folder. A run without a checkpoint (keep_checkpoints=false) cannot be scored: a
    ConfigError says so (and what was wrong with its cache, ``damage``). (Imported here: the predictor module builds
    models, which reading a teacher does not.)"""
    from datamodules.runs.predictor import MissingCheckpoint, Predictor

    try:
        predictor = Predictor.load(run_dir)
    except MissingCheckpoint:
        cache = (f"its {RunFolder(run_dir).unlabeled_probs_path} is damaged ({damage})" if damage else
                 f"no {UNLABELED_PROBS_FILE} that holds them")
        raise ConfigError(
            f"distill.teachers: {run_dir} has no checkpoint to score its unlabeled rows with, and {cache}: train the "
            "teacher again with keep_checkpoints=true"
        ) from None
    log_probs = predictor.class_log_probs(rows, batch_size)
    probs = torch.softmax(log_probs.double(), dim=-1).float()
    labels = predictor.task.label_list or [str(c) for c in range(probs.shape[1])]
    source = Path(predictor.source)
    weights = os.path.relpath(source, run_dir) if source.exists() else predictor.source
    return probs, list(labels), weights


def run_dirs(teachers: str | list[str]) -> list[Path]:
    """Run directories (with a results.json) named by ``distill.teachers``, in a stable order."""
    given = [teachers] if isinstance(teachers, (str, Path)) else list(teachers)
    if not given:
        raise ConfigError("distill.teachers is empty; give a run directory, a sweep directory or a list of them")
    found: list[Path] = []
    for entry in given:
        path = Path(str(entry)).expanduser()
        if RunFolder.is_run(path):
            found.append(path)
        elif path.is_dir():
            runs = sorted({p.parent for p in path.rglob(RESULTS_FILE)}, key=lambda p: str(p))
            if not runs:
                raise ConfigError(f"distill.teachers: {path} holds no run (no results.json under it)")
            found += runs
        else:
            raise ConfigError(f"distill.teachers: {path} does not exist")
    return list(dict.fromkeys(found))


def load_teacher(run_dir: Path) -> Teacher:
    """A teacher's run folder, read (not yet scored): its task, split, dev accuracy and iPET generation."""
    results = RunFolder(run_dir).results
    task, split = results.task, results.split
    if (task is None or split is None) and RunFolder(run_dir).unlabeled_probs_path.is_file():  # an older run
        saved, _ = read_cache(RunFolder(run_dir).unlabeled_probs_path)  # damaged: scored again when needed
        if saved is not None:
            task, split = task or saved.get("task"), split if split is not None else saved.get("split")
    val_acc = results.val_acc
    before = results.extras.get("train/acc_before")
    return Teacher(run_dir, float(val_acc) if val_acc is not None else 0.0,
                   float(before) if before is not None else None, str(task), str(split), int(results.generation or 0))


class TeacherEnsemble:
    def __init__(self, teachers: str | list[str], weighting: str, temperature: float) -> None:
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"distill.weighting={weighting!r}; allowed: {list(WEIGHTINGS)}")
        if temperature <= 0:
            raise ConfigError(f"distill.temperature={temperature}; it must be > 0")
        self.weighting = weighting
        self.temperature = temperature
        self.teachers = [load_teacher(d) for d in run_dirs(teachers)]
        tasks = {(t.task, t.split) for t in self.teachers}
        if len(tasks) > 1:
            raise ConfigError(f"distill.teachers mixes tasks/splits {sorted(tasks)}; give runs of one task and split")

    @property
    def generation(self) -> int:
        return max(t.generation for t in self.teachers)

    @property
    def task(self) -> str:
        return self.teachers[0].task

    @property
    def split(self) -> str:
        return self.teachers[0].split

    def weights(self) -> torch.Tensor:
        """One weight per teacher, summing to 1: proportional to the untrained cloze's training-set accuracy (PET),
        to dev accuracy, or equal."""
        if self.weighting == "uniform":
            raw = torch.ones(len(self.teachers))
        elif self.weighting == "train_acc_before":
            unmeasured = [str(t.run_dir) for t in self.teachers if t.train_acc_before is None]
            if unmeasured:
                raise ConfigError(f"distill.weighting=train_acc_before: {unmeasured[0]} has no train/acc_before in its "
                                  f"results.json (a run of an older version); use distill.weighting=dev_acc or uniform")
            raw = torch.tensor([t.train_acc_before for t in self.teachers], dtype=torch.float)
        else:
            raw = torch.tensor([t.val_acc for t in self.teachers], dtype=torch.float)
            if raw.sum() <= 0:
                raw = torch.ones(len(self.teachers))
        return raw / raw.sum()

    def score(self, rows: list[Row]) -> None:
        """Every teacher's scores on ``rows``: from its cache, or computed once with its own weights and cached."""
        for teacher in self.teachers:
            teacher.score(rows)

    def soft_labels(self, ids: list) -> tuple[list[int], torch.Tensor]:
        """(positions in ``ids`` that every teacher scored, their soft labels [M, C])."""
        for teacher in self.teachers:
            teacher.scored()
        keys = [json.dumps(i) for i in ids]
        tables = [{json.dumps(i): n for n, i in enumerate(t.ids)} for t in self.teachers]
        kept = [n for n, key in enumerate(keys) if all(key in table for table in tables)]
        weights = self.weights()
        mean = sum(w * t.log_probs[[table[keys[n]] for n in kept]]
                   for w, t, table in zip(weights.tolist(), self.teachers, tables))
        return kept, torch.softmax(mean / self.temperature, dim=-1)

    def agreement(self, ids: list) -> float:
        """Share of ``ids`` on which every teacher's argmax is the ensemble's (how much distilling averages)."""
        kept, soft = self.soft_labels(ids)
        keys = [json.dumps(ids[n]) for n in kept]
        tables = [{json.dumps(i): n for n, i in enumerate(t.ids)} for t in self.teachers]
        ensemble = soft.argmax(-1)
        agree = torch.ones(len(kept), dtype=torch.bool)
        for t, table in zip(self.teachers, tables):
            agree &= t.log_probs[[table[k] for k in keys]].argmax(-1) == ensemble
        return round(float(agree.float().mean()), 4) if len(kept) else 0.0

    def soft_rows(self, rows: list[Row], task: str, split: str) -> list[SoftRow]:
        """The unlabeled rows every teacher scored, each with the ensemble's soft label."""
        if (task, str(split)) != (self.task, self.split):
            raise ConfigError(
                f"distill.teachers were trained on task {self.task} split {self.split}; this run is task {task} "
                f"split {split} (give task={self.task} data.split={self.split})"
            )
        self.score(rows)
        kept, soft = self.soft_labels([row.id for row in rows])
        if len(kept) < len(rows):
            log.warning("distill: %d of %d unlabeled rows were not scored by every teacher and are left out",
                        len(rows) - len(kept), len(rows))
        if not kept:
            raise ConfigError(f"distill.teachers scored none of this run's {len(rows)} unlabeled rows (another "
                              "data.max_unlabeled?)")
        return [SoftRow(**{**vars(rows[n]), "label": int(s.argmax())}, soft=s.tolist()) for n, s in zip(kept, soft)]

    def summary(self) -> list[dict]:
        return [{"run": str(t.run_dir), "val/acc": t.val_acc, "train/acc_before": t.train_acc_before,
                 "weight": round(float(w), 6)}
                for t, w in zip(self.teachers, self.weights())]
