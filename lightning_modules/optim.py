"""Optimizer parameter groups and the learning-rate schedule shared by every stage."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


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


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1) -> LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to zero."""
    total_steps = max(1, int(total_steps))
    warmup = int(math.ceil(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return LambdaLR(optimizer, factor)


def optimizers_for(module) -> torch.optim.Optimizer | dict:
    """``configure_optimizers`` of every stage: the optimizer partial completed with the parameter groups
    of ``trainer.model`` (what a sharded strategy wraps) and ``module.lr``, plus the per-step schedule."""
    model = module.trainer.model if module.trainer is not None else module
    optimizer = module.optimizer_factory(parameter_groups(model.named_parameters(), module.weight_decay), lr=module.lr)
    if module.scheduler_factory is None:
        return optimizer
    scheduler = module.scheduler_factory(optimizer, total_steps=module.trainer.estimated_stepping_batches)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
