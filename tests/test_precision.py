"""precision=32-true / bf16-mixed on CPU (plain and ZeRO), 16-mixed stopping early, loss-scale overflow counting."""

from __future__ import annotations

import json
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision

from callbacks.loss_scale import LossScaleMonitor
from tests.helpers import run_cli
from tests.test_strategies import clean_rank_environment, fit_directly  # noqa: F401 (autouse fixture)


class HiddenDtype(Callback):
    """The dtype of a projection's output in the first layer (autocast keeps LayerNorm in fp32, so not the
    encoder's output), and the dtype of the stored weights, at the first step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            query = pl_module.encoder.encoder.layer[0].attention.self.query
            handle = query.register_forward_hook(lambda m, args, out: setattr(self, "hidden", out.dtype))
            self.handle = handle
            self.weight = pl_module.encoder.embeddings.word_embeddings.weight.dtype

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            self.handle.remove()
            self.loss = float(outputs["loss"])


@pytest.mark.parametrize(
    ("strategy", "precision", "hidden", "weight"),
    [
        ("auto", "32-true", torch.float32, torch.float32),
        ("auto", "bf16-mixed", torch.bfloat16, torch.float32),  # autocast: fp32 weights, bf16 matmuls
        ("zero2", "bf16-mixed", torch.bfloat16, torch.bfloat16),  # DeepSpeed bf16: bf16 weights, fp32 master copy
    ],
)
def test_precision_trains_on_cpu_in_the_dtype_it_names(strategy, precision, hidden, weight, make_config,
                                                       fewclue_with_test_public):
    probe = HiddenDtype()
    cfg = make_config([f"strategy={strategy}", f"precision={precision}", "trainer.max_steps=2"],
                      fewclue_with_test_public)
    _, trainer, _ = fit_directly(cfg, callbacks=[probe])
    assert trainer.global_step == 2
    assert probe.hidden == hidden and probe.weight == weight
    assert 0.3 < probe.loss < 1.5  # binary task, cross-entropy near ln 2 at the start


@pytest.mark.parametrize("strategy", ["auto", "zero3"])
def test_fp16_on_cpu_stops_before_training_with_one_line(strategy, tmp_path, shared_fewclue):
    done = run_cli([f"strategy={strategy}", "precision=16-mixed", f"data.data_dir={shared_fewclue}"], cwd=tmp_path)
    assert done.returncode == 2
    lines = [line for line in done.stderr.split("\n") if line.startswith("error:")]
    assert len(lines) == 1 and "precision=16-mixed needs a CUDA GPU" in lines[0] and "bf16-mixed" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout and "Epoch" not in done.stderr + done.stdout


class Overflowing(L.LightningModule):
    """A linear model whose loss is made infinite at the given steps."""

    def __init__(self, overflow_at: tuple[int, ...]):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.overflow_at = overflow_at
        self.weights: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.weights.append(self.layer.weight.detach().clone())
        loss = self.layer(batch[0]).float().pow(2).mean()
        return loss * float("inf") if batch_idx in self.overflow_at else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fp16_loss_scaling_skips_and_counts_overflow_steps():
    """GradScaler (CPU has one too, so the mechanics run here): a step with inf gradients is skipped,
    the weights stay, the scale halves, and LossScaleMonitor counts it."""
    monitor = LossScaleMonitor()
    module = Overflowing(overflow_at=(1, 3))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    trainer = L.Trainer(
        accelerator="cpu", plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], max_steps=5,
        callbacks=[monitor], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = torch.utils.data.TensorDataset(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)))
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    final = module.layer.weight.detach()
    weights = [*module.weights, final]  # weights before each of the 5 steps, then after the last
    assert monitor.skipped_steps == 2
    assert scaler.get_scale() == 2.0**6  # halved twice
    assert torch.equal(weights[1], weights[2]) and torch.equal(weights[3], weights[4])  # skipped: unchanged
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[2], weights[3])
    assert trainer.callback_metrics["train/skipped_steps"] == 2.0


def test_auto_trains_in_bf16_exactly_where_the_cpu_has_bf16_units(monkeypatch):
    from lightning_modules.scale import precision

    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: True)
    assert precision.resolved_precision("auto", "cpu") == "bf16-mixed"
    assert precision.resolved_precision("32-true", "cpu") == "32-true"
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: False)
    assert precision.resolved_precision("auto", "cpu") == "32-true"
    assert precision.resolved_precision("bf16-mixed", "cpu") == "bf16-mixed"


@pytest.mark.skipif(not os.environ.get("ZH_MLM_SMALL"), reason="the shared encoder zh-mlm-small is not there")
def test_the_shared_encoder_trains_under_cpu_autocast_with_the_float32_loss_of_float32():
    """Without the LayerNorm hook (lightning_modules/scale/precision.py) this forward pass stops with torch's
    "mixed dtype (CPU)" error; with it, bf16 autocast gives the float32 loss to bf16's precision."""
    from lightning_modules.encoders.backbones import PretrainedMLM

    model = PretrainedMLM(os.environ["ZH_MLM_SMALL"], None, False, "sdpa", False).masked_lm().eval()
    ids = torch.randint(100, 5000, (2, 24), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(ids, -100)
    labels[:, 3:5] = ids[:, 3:5]
    full = model(input_ids=ids, labels=labels).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(input_ids=ids, labels=labels)
    mixed.loss.backward()
    assert mixed.logits.dtype == torch.bfloat16
    assert torch.isfinite(mixed.loss) and abs(float(mixed.loss) - float(full)) < 0.05 * float(full)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


def test_precision_auto_is_resolved_before_the_run_and_recorded(tmp_path, shared_fewclue):
    from lightning_modules.scale.precision import resolved_precision

    done = run_cli(["precision=auto", "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["precision"] == resolved_precision("auto", "cpu")
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert f"precision: {results['precision']}" in saved
