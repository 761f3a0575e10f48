"""bf16 evaluation with float32 training: the master weights come back bit for bit, checkpoints hold float32,
and the CPU's bf16 units are detected, not assumed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from callbacks.eval_precision import CPU_FLAGS, EvalPrecision, cpu_has_bf16_units, evaluation_dtype
from datamodules.errors import ConfigError
from train import build, run


def test_detection_agrees_with_the_cpu_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = set(cpuinfo.read_text().split())
    assert cpu_has_bf16_units() == any(flag in flags for flag in CPU_FLAGS)


def test_an_unknown_dtype_names_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError, match=r"callbacks.eval_precision.dtype='fp8'; allowed: auto, float32, bfloat16"):
        EvalPrecision("fp8")


def test_bf16_evaluation_restores_the_float32_weights_bit_for_bit(make_config):
    built = build(make_config(["trainer.max_steps=2", "callbacks.eval_precision.dtype=bfloat16"]))
    callback = next(cb for cb in built.callbacks if isinstance(cb, EvalPrecision))
    module, trainer = built.module, built.trainer
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    rows = built.datamodule.val_rows[:8]
    float32_probs = module.class_probs(rows, 8)

    callback.on_validation_start(trainer, module)
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    bf16_probs = module.class_probs(rows, 8)
    callback.on_validation_end(trainer, module)

    assert all(torch.equal(p, before[name]) and p.dtype == torch.float32 for name, p in module.named_parameters())
    assert bf16_probs.shape == float32_probs.shape and torch.allclose(bf16_probs, float32_probs, atol=0.05)
    assert evaluation_dtype("float32", trainer.strategy.root_device, str(trainer.precision)) == torch.float32
    units = torch.bfloat16 if cpu_has_bf16_units() else torch.float32
    assert evaluation_dtype("auto", torch.device("cpu"), "32-true") == units
    assert evaluation_dtype("auto", torch.device("cpu"), "bf16-mixed") == units  # bf16 weights beat casting per op
    assert evaluation_dtype("auto", torch.device("cpu"), "16-mixed") == torch.float32


def test_a_run_with_bf16_evaluation_saves_float32_checkpoints(make_config):
    cfg = make_config(["trainer.max_epochs=2", "callbacks.eval_precision.dtype=bfloat16"])
    results = run(build(cfg))
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float32}
    assert results["val/acc"] is not None
