"""iPET (``stage=distill distill.generations=N``): generations of teachers that label data for each other.

Generation g retrains every teacher of generation g-1 from its own config (same pattern, label words,
encoder; self-training off) on a training set ``growth``^g times the labelled rows (PET's d^g |T|): the labelled rows
plus (``growth``^g - 1) × as many rows labelled by an ensemble of a random ``share`` of the *other* teachers (at
least one; PET's λ = 0.25, d = 5).
The given teachers are scored on the unlabeled rows when first needed (their selected checkpoints, cached in
their folders); each new run, which keeps no checkpoint, scores them at its end (``callbacks/unlabeled_probs.py``),
so it can teach the next generation; the distillation then uses the last generation. Runs go to
``<run>/ipet/g<g>/<i>/``, each with its own results.json (``generation``, ``ipet_teachers``, ``ipet_parent``: paths
relative to that run's folder).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.pseudo_labels import PseudoLabels
from callbacks.unlabeled_probs import UnlabeledProbs
from datamodules.teachers.ensemble import TeacherEnsemble, run_dirs
from datamodules.errors import ConfigError
from datamodules.runs.results import RunFolder
from datamodules.runs.saved_config import upgrade_saved_config

log = logging.getLogger(__name__)
# Rows per batch when a generation's run scores the unlabeled rows at its end.
SCORING_BATCH = 64


class ScoreTeachers(Callback):
    """Before PseudoLabels (the callback after it) labels a generation's rows: every teacher of the ensemble scored
    on this run's unlabeled rows (from its cache, or once with its own checkpoint)."""

    reads_unlabeled = True

    def __init__(self, ensemble: TeacherEnsemble) -> None:
        self.ensemble = ensemble

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self.ensemble.score(trainer.datamodule.unlabeled_rows())


def generation_config(teacher: Path, output_dir: Path) -> DictConfig:
    """The teacher's own resolved config, writing into ``output_dir``, self-training off, checkpoints dropped."""
    folder = RunFolder(teacher)
    source = folder.config_path  # inside the teacher's folder, wherever it was copied
    if not source.is_file():
        raise ConfigError(f"distill.generations: teacher {teacher} has no config.yaml to retrain it from")
    old_dir = str(OmegaConf.load(source).paths.output_dir)
    cfg = OmegaConf.create(source.read_text(encoding="utf-8").replace(old_dir, str(output_dir)))
    cfg = upgrade_saved_config(cfg, folder.results.stage or "fuzzy_pet")  # a teacher run by an older version
    cfg.paths.output_dir = str(output_dir)
    cfg.ckpt_path = None
    cfg.keep_checkpoints = False
    if cfg.get("callbacks") and cfg.callbacks.get("self_training"):
        cfg.callbacks.self_training.rounds = 0
    return cfg


def run_generations(cfg: DictConfig, train_one: Callable[[DictConfig, list, dict], dict]) -> list[str]:
    """Run ``distill.generations`` generations; returns the last generation's run directories.
    ``train_one(cfg, extra_callbacks, extra_results)`` trains one run (train.py's build + run)."""
    distill = cfg.distill
    if distill.growth < 1 or not 0 < distill.share <= 1:
        raise ConfigError(f"distill.growth={distill.growth}, distill.share={distill.share}; need growth >= 1, 0 < share <= 1")
    given = OmegaConf.to_object(distill.teachers) if OmegaConf.is_config(distill.teachers) else distill.teachers
    current = [str(d) for d in run_dirs(given)]
    if len(current) < 2:
        log.warning("iPET with one teacher: it labels its own next generation (self-training)")
    rng = random.Random(int(cfg.seed))
    for generation in range(1, int(distill.generations) + 1):
        next_dirs = []
        for i, teacher in enumerate(current):
            others = [d for d in current if d != teacher] or [teacher]
            chosen = sorted(rng.sample(others, max(1, round(distill.share * len(others)))))
            ensemble = TeacherEnsemble(chosen, distill.weighting, 1.0)
            output_dir = Path(cfg.paths.output_dir) / "ipet" / f"g{generation}" / str(i)
            run_cfg = generation_config(Path(teacher), output_dir)
            log.info("iPET generation %d, run %d: %s retrained with rows labelled by %s", generation, i, teacher, chosen)
            parent = RunFolder(teacher).results
            callbacks = [ScoreTeachers(ensemble), PseudoLabels(ensemble, int(distill.growth) ** generation - 1),
                         UnlabeledProbs(str(output_dir), SCORING_BATCH)]
            train_one(run_cfg, callbacks,
                      {"stage": parent.stage, "model": parent.model, "generation": generation,
                       "ipet_teachers": chosen, "ipet_parent": teacher})
            next_dirs.append(str(output_dir))
        current = next_dirs
    return current
