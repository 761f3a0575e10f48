"""Evaluation and prediction in bfloat16 on a CPU that has bf16 matrix units, training in float32.

On a CPU with AVX512-BF16 or AMX, a forward pass with bf16 weights runs several times faster than in fp32
(``torch.autocast`` on the CPU is no alternative: BERT's LayerNorm refuses its mixed dtypes). Training stays
in float32 (the optimizer's master weights are never rounded): before each validation, test and prediction
loop the weights are cast to bf16, and the float32 tensors are put back before anything else sees the
module (Lightning runs checkpoint callbacks after all others, so ``best.ckpt`` holds float32 weights).

``dtype: auto`` uses bf16 where the CPU has the units and the run trains in 32-bit on a CPU; ``float32``
keeps every loop in float32; ``bfloat16`` forces bf16 evaluation (slow where the CPU lacks the units). Under
DeepSpeed the engine owns the (partitioned) weights and evaluation stays in the run's precision.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy

from datamodules.errors import ConfigError
# The dtype rule is torch only (lightning_modules/scale/precision.py), so predict.py reads it without Lightning.
from lightning_modules.scale.precision import CPU_FLAGS, cpu_has_bf16_units, evaluation_dtype  # noqa: F401

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16")


class EvalPrecision(Callback):
    def __init__(self, dtype: str) -> None:
        if dtype not in DTYPES:
            raise ConfigError(f"callbacks.eval_precision.dtype={dtype!r}; allowed: {', '.join(DTYPES)}")
        self.dtype = dtype
        self.used: torch.dtype | None = None
        self._float32: dict[str, torch.Tensor] = {}

    def _lower(self, trainer: Trainer, module: LightningModule) -> None:
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            self.used = torch.float32 if str(trainer.precision) in ("32-true", "32") else None
            return
        self.used = evaluation_dtype(self.dtype, trainer.strategy.root_device, str(trainer.precision))
        if self.used == torch.float32 or self._float32:
            return
        self._float32 = {name: tensor.data for name, tensor in _floating(module)}
        for _, tensor in _floating(module):
            tensor.data = tensor.data.to(self.used)

    def _restore(self, trainer: Trainer, module: LightningModule) -> None:
        if not self._float32:
            return
        for name, tensor in _floating(module):
            tensor.data = self._float32[name]
        self._float32 = {}

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._lower(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._lower(trainer, pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._lower(trainer, pl_module)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore(trainer, pl_module)

    @property
    def precision_name(self) -> str | None:
        """What evaluation ran in (results.json ``eval_precision``); None before any evaluation."""
        return None if self.used is None else str(self.used).removeprefix("torch.")


def _floating(module: torch.nn.Module):
    """The module's floating-point parameters and buffers, by name (shared tensors once)."""
    seen: set[int] = set()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and id(tensor) not in seen:
            seen.add(id(tensor))
            yield name, tensor
