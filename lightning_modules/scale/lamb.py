"""``optim=lamb``: LAMB (You et al., 2020), layer-wise trust ratio for large-batch pretraining.

On a CUDA device DeepSpeed's fused kernel (``deepspeed.ops.lamb.FusedLamb``, compiled on first use);
elsewhere the maintained pure-PyTorch implementation of ``pytorch-optimizer`` (``pytorch_optimizer.Lamb``).
Both take the parameter groups of ``configure_optimizers`` (per-group weight decay).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def lamb(
    params: Iterable,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    fused: bool | None,
    weight_decay: float = 0.0,  # the parameter groups of stage.optim carry the weight decay
) -> torch.optim.Optimizer:
    """LAMB; ``fused=None`` picks DeepSpeed's FusedLamb when CUDA is available, pytorch-optimizer's Lamb otherwise."""
    fused = torch.cuda.is_available() if fused is None else fused
    if fused:
        from deepspeed.ops.lamb import FusedLamb

        return FusedLamb(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    from pytorch_optimizer import Lamb

    return Lamb(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
