"""Unlabeled texts for an auxiliary masked-LM loss, and the DataLoader that feeds them beside training.

Stages that train on unlabeled text next to their own objective (Fuzzy-PET's auxiliary MLM,
entailment pretraining) receive ``{"main": batch, "mlm": batch}``: the DataModule returns both
loaders and Lightning combines them batch by batch; the stage's ``collate_mlm`` masks the texts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import DataLoader

from datamodules.epoch_shuffle import EpochShuffle, fixed_generator


@dataclass
class MlmText:
    text: str
    # Fixes the masks of this text (validation); None draws new masks every time it is seen.
    mask_seed: int | None = None


def mlm_loader(
    texts: list[MlmText],
    batch_size: int,
    steps: int,
    collate: Callable[[list[MlmText]], dict],
    seed: int,
    num_workers: int = 0,
) -> DataLoader:
    """``steps`` batches of ``batch_size`` texts drawn at random (with replacement when there are too few)."""
    sampler = EpochShuffle(texts, seed, num_samples=steps * batch_size)
    return DataLoader(texts, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      generator=fixed_generator(seed))
