"""``strategy=zero1|zero2|zero2_offload|zero3|zero3_offload``: Lightning's DeepSpeedStrategy, on GPU and on CPU.

Lightning 2.6's ``DeepSpeedStrategy`` refuses a CPU accelerator in three places, although DeepSpeed
itself (its CPU accelerator, the gloo backend) runs ZeRO stages 1-3 and optimizer/parameter offload
on CPU. ``CPUCapableDeepSpeedStrategy`` below is a subclass that handles those three places when the
accelerator is a CPU and defers to Lightning everywhere else, so a GPU run takes Lightning's
standard path unchanged:

1. ``setup_environment``: Lightning raises unless the accelerator is CUDA;
2. ``setup_distributed``: Lightning checks that the device indices are 0..n-1 (CPU devices have none);
3. ``deepspeed.initialize(args=Namespace(device_rank=root_device.index))``: a CPU device has index
   ``None``, which DeepSpeed compares with 0; on CPU the local rank is handed over instead.

One more fix applies on every device: DeepSpeed 0.19's inference engine cannot load a ZeRO-3
checkpoint (``DeepSpeedZeRoOffload`` has no ``_restore_from_bit16_weights``), so ``trainer.test`` /
``validate`` / ``predict`` with ``ckpt_path=<zero3 dir>`` read the consolidated fp32 weights from the
checkpoint's shards instead (DeepSpeed's ``zero_to_fp32``) and load them layer by layer, the way
Lightning's own ``load_full_weights=True`` path does. Fitting from a checkpoint (resume) keeps
DeepSpeed's sharded load with optimizer states.

And one for gradient accumulation, also on every device: Lightning divides the loss by
``accumulate_grad_batches`` before backward and DeepSpeed's ``engine.backward`` divides it again
(``scale_wrt_gas=True``), so accumulated gradients came out ``accumulate_grad_batches`` times too
small (tests/test_accumulation.py measured it: 1/4 of the large-batch update with 4 micro-batches).
``backward`` passes ``scale_wrt_gas=False``.

With ZeRO-Offload DeepSpeed insists on its own CPU optimizer: a ``torch.optim.Adam``/``AdamW`` built by
``configure_optimizers`` is rebuilt as ``DeepSpeedCPUAdam`` on the same parameter groups (so the
learning-rate scheduler keeps driving it). DeepSpeedCPUAdam compiles a C++ extension on first use
(about 2 minutes on a 2-core CPU, then cached under ``~/.cache/torch_extensions``); a lock left there by a
killed build is removed first (``build_locks``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.strategies.deepspeed import _validate_checkpoint_directory
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies import DeepSpeedStrategy as LightningDeepSpeedStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.nn import Module
from torch.optim import Optimizer

from lightning_modules.scale.build_locks import remove_stale_build_locks


class CPUCapableDeepSpeedStrategy(LightningDeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy that also runs on a CPU accelerator (gloo backend)."""

    strategy_name = "deepspeed_cpu_capable"

    @property
    def on_cpu(self) -> bool:
        return isinstance(self.accelerator, CPUAccelerator)

    # -- the three places Lightning refuses a CPU -------------------------------------------------
    def setup_environment(self) -> None:
        remove_stale_build_locks()  # DeepSpeed compiles its kernels during setup; a killed build's lock hangs it
        if not self.on_cpu:
            super().setup_environment()
            return
        _check_deepspeed_accelerator_is_cpu()
        DDPStrategy.setup_environment(self)  # Lightning's CUDA-only check skipped; DDP's setup follows

    def setup_distributed(self) -> None:
        if not self.on_cpu:
            super().setup_distributed()
            return
        # CPU devices carry no index: nothing to validate against the local ranks.
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()  # gloo, chosen by DDPStrategy for a CPU root device

    def _deepspeed_args(self) -> argparse.Namespace:
        # DeepSpeed reads device_rank to pick its device and world: the CUDA index on GPU, the local rank on CPU.
        return argparse.Namespace(device_rank=self.local_rank if self.on_cpu else self.root_device.index)

    def _setup_model_and_optimizer(self, model: Module, optimizer: Optimizer | None, lr_scheduler: Any = None):
        if not self.on_cpu:
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)
        import deepspeed

        engine, deepspeed_optimizer, _, _ = deepspeed.initialize(
            args=self._deepspeed_args(),
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, deepspeed_optimizer

    def _initialize_deepspeed_inference(self, model: Module) -> None:
        if not self.on_cpu:
            super()._initialize_deepspeed_inference(model)
            return
        import deepspeed
        from lightning.pytorch.strategies.deepspeed import remove_module_hooks

        inference_config: dict[str, Any] = {"train_micro_batch_size_per_gpu": 1}
        for key in ("fp16", "bf16"):
            if key in self.config:
                inference_config[key] = self.config[key]
        if self.zero_stage_3:
            inference_config["zero_allow_untested_optimizer"] = self.config["zero_allow_untested_optimizer"]
            inference_config["zero_optimization"] = self.config["zero_optimization"]
        remove_module_hooks(model)
        self.model, _, _, _ = deepspeed.initialize(
            args=self._deepspeed_args(),
            config=inference_config,
            model=model,
            optimizer=None,
            lr_scheduler=None,
            model_parameters=[],
            dist_init_required=False,
        )

    # -- gradient accumulation ---------------------------------------------------------------
    def backward(self, closure_loss, optimizer, *args: Any, **kwargs: Any):
        # Lightning already divided the loss by accumulate_grad_batches: DeepSpeed must not divide again.
        kwargs.setdefault("scale_wrt_gas", False)
        return super().backward(closure_loss, optimizer, *args, **kwargs)

    # -- checkpoints ---------------------------------------------------------------------------
    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        fitting = self.lightning_module.trainer.state.fn == TrainerFn.FITTING
        self._consolidated = self.zero_stage_3 and not fitting and not self.load_full_weights
        if not self._consolidated:
            return super().load_checkpoint(checkpoint_path, weights_only)
        _validate_checkpoint_directory(checkpoint_path)
        return consolidated_checkpoint(checkpoint_path, weights=self.is_global_zero)

    def load_model_state_dict(self, checkpoint, strict: bool = True) -> None:
        if getattr(self, "_consolidated", False):
            self.model_to_device()
            self._restore_zero_state(checkpoint, strict=strict)  # gathers each layer, rank 0 loads, re-partitions
            return
        super().load_model_state_dict(checkpoint, strict)

    # -- optimizers ----------------------------------------------------------------------------
    @property
    def offloads_optimizer(self) -> bool:
        zero = (self.config or {}).get("zero_optimization") or {}
        return bool(zero.get("offload_optimizer")) and zero["offload_optimizer"].get("device", "none") != "none"

    @property
    def zero_stage(self) -> int:
        zero = (self.config or {}).get("zero_optimization") or {}
        return int(zero.get("stage", 0))

    def _init_optimizers(self):
        optimizer, scheduler_config = super()._init_optimizers()
        if self.zero_stage >= 1 and "lamb" in type(optimizer).__name__.lower():
            rank_zero_warn(
                "LAMB under ZeRO: DeepSpeed steps the optimizer on flattened partitions, so the trust ratio is "
                "computed per partition, not per layer. Use strategy=auto or ddp for textbook LAMB."
            )
        if self.offloads_optimizer:
            optimizer = self._cpu_optimizer(optimizer, scheduler_config)
        return optimizer, scheduler_config

    def _cpu_optimizer(self, optimizer: Optimizer, scheduler_config) -> Optimizer:
        """ZeRO-Offload steps on CPU: Adam/AdamW become DeepSpeedCPUAdam, on the same parameter groups."""
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        if isinstance(optimizer, DeepSpeedCPUAdam):
            return optimizer
        if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
            rank_zero_warn(
                f"ZeRO-Offload with {type(optimizer).__name__}: DeepSpeed has no CPU kernel for it; it steps as "
                "a plain torch optimizer on the CPU copy (zero_force_ds_cpu_optimizer=false)."
            )
            self.config["zero_force_ds_cpu_optimizer"] = False
            return optimizer
        defaults = optimizer.defaults
        # The same group dicts (lr, initial_lr, weight_decay): the scheduler keeps driving them.
        cpu_adam = DeepSpeedCPUAdam(
            optimizer.param_groups,
            lr=defaults["lr"],
            betas=tuple(defaults["betas"]),
            eps=defaults["eps"],
            weight_decay=defaults["weight_decay"],
            adamw_mode=isinstance(optimizer, torch.optim.AdamW),
        )
        if scheduler_config is not None:
            scheduler_config.scheduler.optimizer = cpu_adam
        rank_zero_info(f"ZeRO-Offload: {type(optimizer).__name__} rebuilt as DeepSpeedCPUAdam")
        return cpu_adam


DEEPSPEED_STATES = (
    "module", "optimizer", "lr_scheduler", "csr_tensor_module_names", "skipped_steps", "global_steps",
    "dp_world_size", "mp_world_size", "buffer_names", "param_shapes", "frozen_param_shapes",
    "shared_params", "frozen_param_fragments", "ds_config", "ds_version",
)


def consolidated_checkpoint(checkpoint_dir: str | Path, weights: bool = True) -> dict[str, Any]:
    """A Lightning checkpoint dict from a DeepSpeed checkpoint directory, with full fp32 weights.

    ``state_dict`` is gathered from every ZeRO shard (stage 1, 2 or 3, any world size) by DeepSpeed's
    ``zero_to_fp32``; the rest is the client state Lightning saved (epoch, step, callbacks, hparams).
    ``weights=False`` skips the gathering (ranks other than 0 need only the client state).
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag_dir = Path(checkpoint_dir) / (Path(checkpoint_dir) / "latest").read_text().strip()
    # rank 0's model-states file carries the client state: named mp_rank_00_* (ZeRO 1/2) or zero_pp_rank_0_* (ZeRO 3)
    model_file = next(p for p in (tag_dir / "mp_rank_00_model_states.pt",
                                  tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt") if p.is_file())
    client = torch.load(model_file, map_location="cpu", weights_only=False)
    checkpoint = {key: value for key, value in client.items() if key not in DEEPSPEED_STATES}
    checkpoint["state_dict"] = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir)) if weights else {}
    return checkpoint


def _check_deepspeed_accelerator_is_cpu() -> None:
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    if name != "cpu":
        raise RuntimeError(
            f"trainer.accelerator is cpu but DeepSpeed detected accelerator '{name}'. "
            "Set DS_ACCELERATOR=cpu in the environment to run DeepSpeed on CPU."
        )
