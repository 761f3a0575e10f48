"""Full fp32 weights of a (sub)module under any strategy, for a Hugging Face export.

Under ZeRO-3 each rank holds a slice of every parameter (the module's own tensors are empty
placeholders), and under ZeRO 1/2 with bf16/fp16 the fp32 master weights live in the optimizer;
``model.save_pretrained(dir)`` would write placeholders or rounded weights. ``full_state_dict``
gathers the fp32 master copy from every rank instead (DeepSpeed's ``safe_get_full_fp32_param``),
so a ZeRO-3 run's export feeds the next stage exactly like a single-device run's.

Call it on every rank (it is a collective under DeepSpeed); write the result on rank 0 only::

    state = full_state_dict(self.masked_lm, self.trainer.strategy)
    if self.trainer.is_global_zero:
        self.masked_lm.save_pretrained(directory, state_dict=dict(state))  # save_pretrained pops entries
"""

from __future__ import annotations

import torch
from torch import nn


def full_state_dict(module: nn.Module, strategy=None) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every parameter whole, in fp32 where training kept an fp32 master, on CPU."""
    keys = module.state_dict().keys()  # persistent entries, tied weights under each of their names
    parameters = dict(module.named_parameters(remove_duplicate=False))
    buffers = dict(module.named_buffers(remove_duplicate=False))
    deepspeed = _is_deepspeed(strategy)
    state = {}
    for name in keys:
        if name in parameters:
            state[name] = _full_parameter(parameters[name]) if deepspeed else parameters[name].detach()
        else:
            state[name] = buffers[name].detach()
    return {name: tensor.cpu().clone() for name, tensor in state.items()}


def _is_deepspeed(strategy) -> bool:
    if strategy is None:
        return False
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return isinstance(strategy, DeepSpeedStrategy)


def _full_parameter(param: torch.nn.Parameter) -> torch.Tensor:
    from deepspeed import zero
    from deepspeed.utils import safe_get_full_fp32_param

    has_master = hasattr(param, "_hp_mapping") or (hasattr(param, "ds_id") and hasattr(param, "_z3_optimizer"))
    if has_master:
        full = safe_get_full_fp32_param(param)  # fp32 master, gathered across ranks
        if full is not None:
            return full.detach().float()
    if hasattr(param, "ds_id"):  # ZeRO-3 without an optimizer (frozen or inference): gather the shards
        with zero.GatheredParameters([param]):
            return param.detach().clone()
    return param.detach()
