"""``stage.optim`` (the ``optim`` config group): optimizer, learning rate, weight decay and schedule.

The one place for the learning rate and weight decay is ``stage.optim.lr`` / ``stage.optim.weight_decay``;
the optimizer itself (``stage.optim.optimizer``) and the schedule (``stage.optim.scheduler``, called
as ``scheduler(optimizer, num_warmup_steps=..., num_training_steps=...)`` like transformers'
``get_*_schedule_with_warmup``) are partials, completed in ``configure_optimizers`` with the
parameter groups of ``trainer.model`` (what a sharded strategy wraps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from datamodules.errors import ConfigError

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
# Set by stage.optim itself; a partial that also names them would be silently overridden.
OWNED_KEYS = ("lr", "weight_decay")


def parameter_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Weight decay on weights only, not on biases and normalisation scales (BERT's recipe)."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(NO_DECAY) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class Optim:
    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr: float,
        weight_decay: float,
        scheduler: Callable | None,
        warmup_ratio: float,
    ) -> None:
        for key, value in (("lr", lr), ("weight_decay", weight_decay)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"stage.optim.{key}={value!r}; allowed: a number >= 0")
        if not 0.0 <= warmup_ratio <= 1.0:
            raise ConfigError(f"stage.optim.warmup_ratio={warmup_ratio!r}; allowed: 0..1")
        keywords = getattr(optimizer, "keywords", {}) or {}
        for key in OWNED_KEYS:
            if key in keywords:
                raise ConfigError(f"stage.optim.optimizer.{key} is not used; set stage.optim.{key} instead")
        self.optimizer = optimizer
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.scheduler = scheduler
        self.warmup_ratio = float(warmup_ratio)

    def schedule(self, optimizer: torch.optim.Optimizer, total_steps: int):
        """The per-step schedule over ``total_steps``: warm-up over ``warmup_ratio`` of them first."""
        total_steps = max(1, int(total_steps))
        return self.scheduler(
            optimizer, num_warmup_steps=math.ceil(self.warmup_ratio * total_steps), num_training_steps=total_steps
        )

    def configure(self, named_parameters: Iterable[tuple[str, torch.nn.Parameter]], total_steps: int):
        """What ``configure_optimizers`` returns."""
        optimizer = self.optimizer(parameter_groups(named_parameters, self.weight_decay), lr=self.lr)
        if self.scheduler is None:
            return optimizer
        scheduler = self.schedule(optimizer, total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
