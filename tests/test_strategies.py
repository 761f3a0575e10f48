"""ZeRO 1/2/3 (+ offload) and DDP on CPU: train -> test -> predict, resume, consolidated fp32 export."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import open_dict
from transformers import BertModel

from lightning_modules.scale.build_locks import remove_stale_build_locks
from lightning_modules.scale.consolidate import full_state_dict
from lightning_modules.scale.strategies import CPUCapableDeepSpeedStrategy, consolidated_checkpoint
from tests.conftest import CONF
from tests.helpers import read_jsonl, run_cli
from train import build, train

ZERO = ["zero1", "zero2", "zero3"]
OFFLOAD = ["zero2_offload", "zero3_offload"]


@pytest.fixture(autouse=True)
def clean_rank_environment(monkeypatch):
    """In-process DeepSpeed runs export MASTER_PORT & co. (and keep their gloo group, which DeepSpeed caches):
    a CLI run started later must not inherit them."""
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def cpu_adam():
    """DeepSpeedCPUAdam compiles a C++ extension on first use (about 2 min on 2 cores, then cached)."""
    from deepspeed.ops.op_builder import CPUAdamBuilder

    remove_stale_build_locks()
    return CPUAdamBuilder().load()


def test_every_strategy_file_composes_and_is_the_cpu_capable_class(make_config):
    names = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml"))
    assert {"auto", "ddp", *ZERO, *OFFLOAD} <= set(names)
    expected = {"zero1": (1, False, False), "zero2": (2, False, False), "zero3": (3, False, False),
                "zero2_offload": (2, True, False), "zero3_offload": (3, True, True)}
    for name, (stage, offload_optimizer, offload_params) in expected.items():
        strategy = instantiate(make_config([f"strategy={name}"]).trainer.strategy)
        assert isinstance(strategy, CPUCapableDeepSpeedStrategy)
        zero = strategy.config["zero_optimization"]
        assert zero["stage"] == stage
        assert ("offload_optimizer" in zero) == offload_optimizer and strategy.offloads_optimizer == offload_optimizer
        assert ("offload_param" in zero) == offload_params


@pytest.mark.parametrize("name", ZERO)
def test_zero_strategy_fits_tests_and_predicts_on_cpu(name, make_config, fewclue_with_test_public, shared_fewclue):
    # 32 rows, batch 16: validation (and the best checkpoint) after step 2, training stops at step 3
    cfg = make_config([f"strategy={name}", "trainer.max_steps=3"], fewclue_with_test_public)
    results = train(cfg)
    assert results["global_step"] == 3
    assert 0.0 <= results["val/acc"] <= 1.0 and 0.0 <= results["test/acc"] <= 1.0
    checkpoint = Path(results["checkpoint"])
    assert checkpoint.is_dir() and (checkpoint / "latest").read_text().strip() == "checkpoint"  # DeepSpeed's layout
    rows = read_jsonl(results["predictions"])
    assert [r["id"] for r in rows] == [r["id"] for r in read_jsonl(shared_fewclue / "eprstmt/test.json")]


@pytest.mark.parametrize("name", OFFLOAD)
def test_offload_strategy_steps_with_deepspeed_cpu_adam(name, cpu_adam, make_config, fewclue_with_test_public):
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    seen = {}

    class Probe(Callback):
        def on_train_batch_end(self, trainer, *args):
            seen["optimizer"] = trainer.model.optimizer.optimizer
            seen["lr"] = [g["lr"] for g in trainer.model.optimizer.optimizer.param_groups]

    cfg = make_config([f"strategy={name}", "trainer.max_steps=3", "data.batch_size=8"], fewclue_with_test_public)
    _, trainer, _ = fit_directly(cfg, callbacks=[Probe()])
    assert isinstance(seen["optimizer"], DeepSpeedCPUAdam)
    # linear warm-up over ceil(0.1 * 3) = 1 step then decay: after step 3 of 3 the lr factor is 0
    assert trainer.lr_scheduler_configs[0].scheduler.optimizer is seen["optimizer"]
    assert seen["lr"] == [0.0, 0.0]
    assert trainer.global_step == 3


def test_zero3_weights_match_a_plain_run_and_export_in_hugging_face_format(tmp_path, make_config, fewclue_with_test_public):
    """ZeRO-3 (1 rank, fp32) trains the same weights as strategy=auto; the export reloads with from_pretrained.

    Full batches and no dropout (DeepSpeed's setup re-seeds, so random draws differ between the runs),
    SGD (linear in the gradient; Adam's first steps are lr * sign(g), which turns float noise on
    near-zero gradients into differences of 2 lr). Measured here: largest difference 5e-7.
    """
    overrides = ["trainer.max_steps=3", "data.batch_size=32", "model.dropout=0.0", "stage.dropout=0.0",
                 "trainer.limit_val_batches=0",
                 "stage.optim.optimizer._target_=torch.optim.SGD", "~stage.optim.optimizer.betas", "~stage.optim.optimizer.eps",
                 "stage.optim.lr=0.5"]
    _, _, plain = fit_directly(make_config(overrides, fewclue_with_test_public), keep_initial=True)
    initial = plain.initial_state
    reference = {k: v.detach().clone() for k, v in plain.encoder.state_dict().items()}
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", save_weights_only=False)
    _, trainer, module = fit_directly(
        make_config(["strategy=zero3", *overrides], fewclue_with_test_public), callbacks=[checkpoint]
    )
    assert module.encoder.embeddings.word_embeddings.weight.numel() == 0  # partitioned: a placeholder
    state = full_state_dict(module.encoder, trainer.strategy)
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=key)
    moved = (state["encoder.layer.0.output.dense.weight"].cpu() - initial["encoder.layer.0.output.dense.weight"]).abs().max()
    assert moved > 1e-4  # training did change the weights the comparison is about
    # the same weights, read back from the sharded checkpoint on disk
    saved = consolidated_checkpoint(checkpoint.best_model_path)
    assert saved["global_step"] == 3
    for key, value in state.items():
        if f"backbone.{key}" in saved["state_dict"]:
            torch.testing.assert_close(saved["state_dict"][f"backbone.{key}"], value, msg=key)
    # Hugging Face export of the consolidated weights
    module.encoder.save_pretrained(tmp_path / "export", state_dict=dict(state))  # it pops entries
    reloaded = BertModel.from_pretrained(tmp_path / "export", add_pooling_layer=False).state_dict()
    assert reloaded.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(reloaded[key], value, msg=key)


def test_zero3_evaluates_the_best_checkpoint_it_saved(make_config, fewclue_with_test_public):
    """test/validate with ckpt_path=best (a ZeRO-3 directory) load the saved weights, not the last ones."""
    cfg = make_config(["strategy=zero3", "trainer.max_epochs=2", "data.batch_size=8", "selection=best_dev"],
                      fewclue_with_test_public)
    datamodule, trainer, module = fit_directly(cfg)
    best = trainer.checkpoint_callback
    metrics = trainer.validate(module, datamodule=datamodule, ckpt_path=best.best_model_path, verbose=False)[0]
    assert metrics["val/acc"] == pytest.approx(float(best.best_model_score))


class StopAfterEpoch(Callback):
    """Interrupts the run after its first epoch (same max_steps, so the same learning-rate schedule)."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


class Losses(Callback):
    def __init__(self):
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def test_zero3_resume_continues_the_losses_of_an_uninterrupted_run(tmp_path, make_config, fewclue_with_test_public):
    """Weights, AdamW moments, LR schedule and step counters come back from the sharded checkpoint.

    One full batch per epoch and no dropout: Lightning checkpoints do not carry the global RNG, so
    shuffling and dropout would differ after a resume for reasons unrelated to the strategy.
    """
    overrides = ["strategy=zero3", "trainer.max_steps=4", "data.batch_size=32", "trainer.limit_val_batches=0",
                 "model.dropout=0.0", "stage.dropout=0.0"]
    full = Losses()
    fit_directly(make_config(overrides, fewclue_with_test_public), callbacks=[full])
    first = Losses()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="epoch1", save_weights_only=False)
    fit_directly(make_config(overrides, fewclue_with_test_public), callbacks=[first, StopAfterEpoch(), checkpoint])
    resumed = Losses()
    _, trainer, _ = fit_directly(make_config(overrides, fewclue_with_test_public), callbacks=[resumed],
                                 ckpt_path=checkpoint.best_model_path)
    assert len(first.values) == 1 and len(resumed.values) == 3 and trainer.global_step == 4
    assert first.values == pytest.approx(full.values[:1], abs=1e-6)
    assert resumed.values == pytest.approx(full.values[1:], abs=1e-6)
    assert full.values[3] < full.values[0]  # it did learn, so a lost optimizer state would show


def test_ddp_two_processes_on_cpu_through_the_cli(tmp_path, shared_fewclue):
    done = run_cli(
        ["strategy=ddp", "trainer.devices=2", "trainer.max_steps=2", f"data.data_dir={shared_fewclue}",
         f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, env={"MASTER_PORT": str(free_port())},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run/results.json").read_text())
    # 32 rows, batch 16 per process, 2 processes: one step per epoch, so 2 steps took 2 epochs
    assert results["global_step"] == 2
    assert "GLOBAL_RANK: 1" in done.stderr + done.stdout or "MEMBER: 2/2" in done.stderr + done.stdout


@pytest.mark.slow
def test_zero3_two_processes_on_cpu_through_the_cli(tmp_path, shared_fewclue):
    done = run_cli(
        ["strategy=zero3", "trainer.devices=2", "trainer.max_steps=2", f"data.data_dir={shared_fewclue}",
         f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, env={"MASTER_PORT": str(free_port())},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["global_step"] == 2 and results["val/acc"] is not None
    shards = list((tmp_path / "run" / results["checkpoint"]).glob("checkpoint/*optim_states.pt"))
    assert len(shards) == 2  # one optimizer shard per rank


# -- helpers -----------------------------------------------------------------------------------------
def fit_directly(cfg, callbacks=(), ckpt_path=None, keep_initial=False):
    """train.py's build, without loggers, with the test's own callbacks (a ModelCheckpoint among them replaces
    the default ones), then fit."""
    with open_dict(cfg):
        cfg.logger = None
        if any(isinstance(c, ModelCheckpoint) for c in callbacks):
            del cfg.callbacks["model_checkpoint"], cfg.callbacks["last_checkpoint"]
    built = build(cfg, extra_callbacks=callbacks)
    if keep_initial:
        built.module.initial_state = {k: v.detach().clone() for k, v in built.module.encoder.state_dict().items()}
    built.trainer.fit(built.module, datamodule=built.datamodule, ckpt_path=ckpt_path)
    return built.datamodule, built.trainer, built.module


# -- beyond one machine ---------------------------------------------------------------------------------
def test_slurm_launcher_composes_one_task_per_device(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="optional: pip install -e '.[slurm]' (hydra-submitit-launcher) for hydra/launcher=slurm")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=[
            "experiment=slurm_zero3", "stage=finetune", "trainer.num_nodes=3", "trainer.devices=4",
            f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}",
        ])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (3, 4, 4)
    assert cfg.trainer.strategy._target_ == "lightning_modules.scale.strategies.CPUCapableDeepSpeedStrategy"
    assert cfg.trainer.strategy.stage == 3 and cfg.trainer.precision == "bf16-mixed"


@pytest.mark.slow
def test_torchrun_launch_two_processes_on_cpu(tmp_path, shared_fewclue):
    """What a multi-node launch runs on each node (here: one node, 2 CPU processes, rendezvous c10d)."""
    import subprocess
    import sys

    from tests.helpers import ROOT, cli_environment, with_test_defaults

    args = ["strategy=ddp", "trainer.devices=2", "trainer.max_steps=2", f"data.data_dir={shared_fewclue}",
            f"hydra.run.dir={tmp_path}/run"]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(ROOT / "train.py"), *with_test_defaults(args)],
        cwd=tmp_path, env=cli_environment(), capture_output=True, text=True,
        timeout=1800, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run/results.json").read_text())["global_step"] == 2
