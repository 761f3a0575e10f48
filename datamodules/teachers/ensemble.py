"""PET's ensemble of teachers: the unlabeled-row probabilities of several runs, averaged into soft labels.

A teacher is a run directory whose results.json names an ``unlabeled_probs`` file (every fuzzy_pet run
of a task with unlabeled.json writes one, ``callbacks/unlabeled_probs.py``). ``distill.teachers`` is a
run directory, a sweep directory (every run under it with results.json), or a list of either.
As in PET, the teachers' log-probabilities are averaged with weights proportional to each run's
dev accuracy (``weighting: dev_acc``; or ``uniform``), and the soft label of a row is
``softmax(mean / temperature)``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from datamodules.tasks.rows import Row
from datamodules.errors import ConfigError
from datamodules.runs.results import RESULTS_FILE, RunFolder

log = logging.getLogger(__name__)

WEIGHTINGS = ("dev_acc", "uniform")


@dataclass
class SoftRow(Row):
    """An unlabeled row with the ensemble's class distribution (``label`` is its argmax)."""

    soft: list[float] = field(default_factory=list)


@dataclass
class Teacher:
    run_dir: Path
    val_acc: float
    task: str
    split: str
    ids: list
    log_probs: torch.Tensor  # [N, C]
    generation: int  # 0 for a plain run; g for a run of iPET's generation g


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
    folder = RunFolder(run_dir)
    results = folder.results
    path = folder.unlabeled_probs_path  # inside the teacher's folder, wherever it was copied
    if "unlabeled_probs" in results.to_dict() and not results.unlabeled_probs:
        raise ConfigError(f"distill.teachers: {run_dir} (task {results.task}) has no unlabeled rows: "
                          "stage=distill needs a task with unlabeled data")
    if not path.is_file():
        raise ConfigError(f"distill.teachers: {path} (of {run_dir}) does not exist")
    saved = torch.load(path, weights_only=True)
    val_acc = results.val_acc
    return Teacher(run_dir, float(val_acc) if val_acc is not None else 0.0, str(saved["task"]), str(saved["split"]),
                   list(saved["ids"]), saved["probs"].clamp_min(1e-12).log(), int(results.generation or 0))


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
        """One weight per teacher, summing to 1: proportional to dev accuracy (PET), or equal."""
        if self.weighting == "uniform":
            raw = torch.ones(len(self.teachers))
        else:
            raw = torch.tensor([t.val_acc for t in self.teachers], dtype=torch.float)
            if raw.sum() <= 0:
                raw = torch.ones(len(self.teachers))
        return raw / raw.sum()

    def soft_labels(self, ids: list) -> tuple[list[int], torch.Tensor]:
        """(positions in ``ids`` that every teacher scored, their soft labels [M, C])."""
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
        kept, soft = self.soft_labels([row.id for row in rows])
        if len(kept) < len(rows):
            log.warning("distill: %d of %d unlabeled rows were not scored by every teacher and are left out",
                        len(rows) - len(kept), len(rows))
        if not kept:
            raise ConfigError(f"distill.teachers scored none of this run's {len(rows)} unlabeled rows (another "
                              "data.max_unlabeled?)")
        return [SoftRow(**{**vars(rows[n]), "label": int(s.argmax())}, soft=s.tolist()) for n, s in zip(kept, soft)]

    def summary(self) -> list[dict]:
        return [{"run": str(t.run_dir), "val/acc": t.val_acc, "weight": round(float(w), 6)}
                for t, w in zip(self.teachers, self.weights())]
