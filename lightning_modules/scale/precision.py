"""``precision=auto``: bf16 autocast for training where the CPU multiplies bf16 matrices in hardware.

On a CPU with AVX512-BF16 or AMX a training step of zh-mlm-small under ``torch.autocast("cpu", bfloat16)``
runs about twice as fast as in float32 (docs/scale.md); the weights, gradients and optimizer state stay in
float32. Elsewhere (a CPU without the units, where bf16 is emulated and slower, or a CUDA GPU, where the
user picks 16-mixed or bf16-mixed) ``auto`` means ``32-true``. The dtype evaluation runs in
(``callbacks.eval_precision``, and predict.py on a finished run) follows the same units, by the rule here.

torch only: predict.py and the backbones read these rules without importing Lightning.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lightning_modules.scale.devices import on_gpu

AUTO = "auto"
CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16_units() -> bool:
    """True when the CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX)."""
    detectors = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(detector is not None for detector in detectors):
        return any(detector() for detector in detectors if detector is not None)
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().split() if cpuinfo.is_file() else []
    return any(flag in flags for flag in CPU_FLAGS)


def evaluation_dtype(dtype: str, device: torch.device, precision: str) -> torch.dtype:
    """The dtype evaluation runs in for the setting ``callbacks.eval_precision.dtype`` (see that module's doc), on
    ``device`` for a run trained with the Trainer's ``precision``; predict.py applies the same rule to a finished run."""
    if dtype == "bfloat16":
        return torch.bfloat16
    # A run trained under bf16 autocast evaluates with bf16 weights too: faster than casting them at every op.
    cpu_precision = str(precision) in ("32-true", "32", "bf16-mixed")
    if dtype == "auto" and device.type == "cpu" and cpu_precision and cpu_has_bf16_units():
        return torch.bfloat16
    return torch.float32


def resolved_precision(precision: str, accelerator: str) -> str:
    """The Lightning precision a run trains with for the setting ``trainer.precision``."""
    if str(precision) != AUTO:
        return str(precision)
    if not on_gpu(accelerator) and cpu_has_bf16_units():
        return "bf16-mixed"
    return "32-true"


def _input_in_weight_dtype(module: nn.LayerNorm, args: tuple) -> tuple:
    hidden = args[0]
    if module.weight is not None and hidden.dtype != module.weight.dtype:
        return (hidden.to(module.weight.dtype), *args[1:])
    return args


def layer_norms_follow_weights(model: nn.Module) -> nn.Module:
    """Every LayerNorm casts its input to its weights' dtype.

    Under CPU autocast a residual sum reaches LayerNorm in bf16 while its weights are float32, and torch's CPU
    kernel refuses the mix ("mixed dtype (CPU): expect parameter to have scalar type of Float"); normalising
    in float32 is also what CUDA autocast does. With bf16 weights (evaluation, callbacks/eval_precision.py)
    the input is cast to bf16 instead, so the hook never changes a dtype the layers agree on.
    """
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.register_forward_pre_hook(_input_in_weight_dtype)
    return model

