"""Samplers of the task loaders. Shuffling that is a function of (seed, epoch) only, so that a resumed run sees the batches the
uninterrupted run would have seen.

torch's RandomSampler draws its permutation from the global RNG when an epoch's iterator is created,
and Lightning creates that iterator at a different moment when it restarts from a checkpoint; this
sampler instead takes the epoch from Lightning (``set_epoch``, called before every epoch, also after
a restart) and never touches the global RNG.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler


class EpochShuffle(Sampler[int]):
    """A permutation of ``data`` (or ``num_samples`` draws: by ``weights``, or uniform with replacement when
    ``num_samples`` exceeds the data), drawn from a generator seeded by (seed, epoch)."""

    def __init__(self, data: Sized, seed: int, num_samples: int | None = None,
                 weights: torch.Tensor | None = None) -> None:
        self.data = data
        self.seed = seed
        self.num_samples = len(data) if num_samples is None else num_samples
        self.weights = weights
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        size = len(self.data)
        if self.weights is not None:
            drawn = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        elif self.num_samples > size:
            drawn = torch.randint(size, (self.num_samples,), generator=generator)
        else:
            drawn = torch.randperm(size, generator=generator)[: self.num_samples]
        return iter(drawn.tolist())


def fixed_generator(seed: int) -> torch.Generator:
    """For a DataLoader's own draws (its workers' base seed), kept off the global RNG for the same reason."""
    return torch.Generator().manual_seed(seed)


class LengthOrder(Sampler[int]):
    """Evaluation order by text length (longest first), so that a batch pads to similar lengths; writers that
    need the file's order put predictions back by id."""

    def __init__(self, lengths: list[int]) -> None:
        self.order = sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)
