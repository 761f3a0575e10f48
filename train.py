"""Train one stage on one FewCLUE task: ``python train.py stage=finetune task=ocnli data.split=0``.

compose cfg -> instantiate datamodule, backbone, stage module, callbacks, loggers, trainer
-> fit -> test (when test_public.json exists) -> predict test.json -> results.json
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datamodules.errors import ConfigError, DataError

log = logging.getLogger("train")


def check_config(cfg: DictConfig) -> None:
    """Stop before anything heavy is built when a combination cannot run here."""
    precision = str(cfg.trainer.get("precision"))
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if precision in ("16-mixed", "16", "16-true") and not on_gpu:
        raise ConfigError(
            f"precision={precision} needs a CUDA GPU (fp16 autocast with loss scaling); this run is on CPU. "
            "Allowed here: precision=32-true or precision=bf16-mixed"
        )


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Every entry of a dict-of-configs group (callbacks, logger) that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def close_loggers(loggers: list[Any], failed: bool) -> None:
    """Finish W&B runs even when training failed, so none is left open."""
    for logger in loggers:
        try:
            logger.finalize("failed" if failed else "success")
        except Exception:  # noqa: BLE001 - closing must not hide the original error
            log.exception("could not finalize logger %s", type(logger).__name__)
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)


def vocabulary_texts(datamodule, task) -> list[str]:
    words = [w for table in task.verbalizers.values() for ws in table.values() for w in ws]
    return [*datamodule.texts(), *task.patterns, *words, *task.descriptions.values()]


def build(node: DictConfig, **objects: Any) -> Any:
    """Instantiate ``node`` with live objects as extra arguments (kept out of OmegaConf's hands)."""
    return instantiate(node, _partial_=True)(**objects)


def choice(group: str) -> str | None:
    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def selected_checkpoint(trainer: L.Trainer, module, datamodule) -> tuple[str | None, float | None]:
    """The checkpoint chosen on dev and its val/acc; without one, the final weights measured on dev."""
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    if best and checkpoint.monitor == "val/acc" and checkpoint.best_model_score is not None:
        return best, float(checkpoint.best_model_score)
    # No validation ran before the end (e.g. max_steps hit mid-epoch): measure what training left.
    metrics = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    return best, metrics[0].get("val/acc") if metrics else None


def train(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    task = instantiate(cfg.task, _convert_="all")
    datamodule = build(cfg.data, task=task)
    datamodule.prepare_data()
    datamodule.setup("fit")  # reads and validates every file before a model is built

    backbone = instantiate(cfg.model)
    tokenizer = backbone.tokenizer(vocabulary_texts(datamodule, task))
    masked_lm = backbone.masked_lm(tokenizer)
    module = build(cfg.stage, masked_lm=masked_lm, task=task, tokenizer=tokenizer)
    datamodule.collate_fn = module.collate

    callbacks = instantiate_all(cfg.get("callbacks"))
    loggers = instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    failed = True
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        best, val_acc = selected_checkpoint(trainer, module, datamodule)
        test_acc = None
        if getattr(datamodule, "has_test_labels", False):
            test_acc = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]["test/acc"]
        if getattr(datamodule, "predict_rows", None):
            trainer.predict(module, datamodule=datamodule, ckpt_path=best, return_predictions=False)
        failed = False
    finally:
        close_loggers(loggers, failed)

    writer = next((cb for cb in callbacks if type(cb).__name__ == "LeaderboardWriter"), None)
    results = {
        "stage": choice("stage"),
        "task": task.name,
        "split": str(cfg.data.split),
        "seed": int(cfg.seed),
        "model": choice("model"),
        "pretrained": backbone.pretrained,
        "val/acc": val_acc,
        "test/acc": test_acc,
        "test_set": "test_public.json" if test_acc is not None else None,
        "predictions": str(writer.path) if writer and writer.path else None,
        "checkpoint": best if cfg.keep_checkpoints else None,
        "config": str(output_dir / "config.yaml"),
        "global_step": trainer.global_step,
    }
    results.update(getattr(module, "extra_results", dict)())
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        if best and not cfg.keep_checkpoints:
            shutil.rmtree(Path(best).parent, ignore_errors=True)
        summary = f"val/acc: {_fmt(val_acc)}  test/acc: {_fmt(test_acc, 'n/a (no test_public.json)')}"
        log.info("%s -> %s", summary, output_dir / "results.json")
        print(summary)
    return results


def _fmt(value: float | None, missing: str = "n/a") -> str:
    return missing if value is None else f"{value:.4f}"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)["val/acc"]
    except (ConfigError, DataError) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
