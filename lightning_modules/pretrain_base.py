"""What every pretraining stage (kgbert, mlm, entailment) shares.

A stage implements ``collate(rows) -> batch`` and ``step(batch) -> StepOutput`` (its named losses,
the predictions scored as ``val/acc`` and extra metrics). This base weighs the losses
(``loss_weights``), logs each as ``train/loss_<name>`` and the weighted sum as ``train/loss``,
logs ``val/acc``/``val/loss``, exports the backbone with ``save_pretrained`` and reports the final
losses in results.json (``extra_results``).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from callbacks.export import ExportPretrained
from datamodules.errors import ConfigError
from lightning_modules.consolidate import full_state_dict
from lightning_modules.optim import optimizers_for


@dataclass
class StepOutput:
    losses: dict[str, torch.Tensor]
    predictions: torch.Tensor | None = None  # class indices scored by val/acc
    targets: torch.Tensor | None = None
    # Logged as given when the name has a "/" (kg/gate_mean), else as train/<name>; val/<last part> in validation.
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    # Added to the training loss unlogged: 0 * the parameters a batch left idle, so that DDP sees a
    # gradient for every parameter (find_unused_parameters=false) when a batch lacks an objective.
    idle: torch.Tensor | None = None


def output_head(masked_lm: nn.Module) -> nn.Module:
    """The masked-LM head of a Hugging Face ``*ForMaskedLM``: its one child besides the base model
    (``cls`` for BERT/ERNIE, ``lm_head`` for RoBERTa/XLM-R, ``predictions`` for ALBERT)."""
    base = masked_lm.base_model
    heads = [module for name, module in masked_lm.named_children() if module is not base]
    if len(heads) != 1:
        names = [name for name, module in masked_lm.named_children() if module is not base]
        raise ConfigError(
            f"model: cannot find the masked-LM head of {type(masked_lm).__name__} (children besides the base "
            f"model: {names}); supported: *ForMaskedLM models with one head module (BERT, RoBERTa, ERNIE, ALBERT)"
        )
    return heads[0]


def special_free_ids(tokenizer, vocab_size: int) -> torch.Tensor:
    """Token ids a random replacement may draw (every id but the special tokens)."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(vocab_size) if i not in special], dtype=torch.long)


class PretrainModule(LightningModule):
    def __init__(
        self,
        masked_lm: nn.Module,
        tokenizer,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        loss_weights: dict[str, float] | None = None,
        final_window: int = 10,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.masked_lm = masked_lm
        self.tokenizer = tokenizer
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.lr = lr
        self.weight_decay = weight_decay
        self.loss_weights = self._check_weights(dict(loss_weights or {}))
        output_head(masked_lm)  # fails early for a model without a usable MLM head
        self.vocab_size = masked_lm.get_input_embeddings().num_embeddings
        # A plain CPU tensor (not a buffer): collate uses it in the data loader, off the device.
        self.random_ids = special_free_ids(tokenizer, self.vocab_size)
        self.val_acc = MulticlassAccuracy(num_classes=self.num_predicted_classes, average="micro", ignore_index=-100)
        self.history: dict[str, deque] = {}
        self.final_window = final_window
        self.export_target = export_dir
        self.export_dir: str | None = None  # set by the ExportPretrained callback once written

    # -- what a stage defines --------------------------------------------------------------------
    loss_names: tuple[str, ...] = ()
    val_loss_name: str = "mlm"

    @property
    def num_predicted_classes(self) -> int:
        return self.vocab_size

    def collate(self, rows: list) -> dict:
        raise NotImplementedError

    def step(self, batch: dict) -> StepOutput:
        raise NotImplementedError

    def batch_size(self, batch: dict) -> int:
        return batch["size"]

    @staticmethod
    def idle_term(modules: list[nn.Module]) -> torch.Tensor | None:
        """0 * the sum of the parameters of ``modules`` (see ``StepOutput.idle``); None when none is idle."""
        params = [p.sum() for module in modules for p in module.parameters() if p.requires_grad]
        return torch.stack(params).sum() * 0.0 if params else None

    def export_modules(self) -> dict[str, nn.Module]:
        """Modules saved beside the masked LM, by relative file name (``torch.save`` of their state_dict)."""
        return {}

    def export_configs(self) -> dict[str, dict]:
        """JSON files written beside the masked LM, by relative file name."""
        return {}

    def extra_stats(self) -> dict:
        return {}

    # -- shared pieces ---------------------------------------------------------------------------
    def _check_weights(self, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(self.loss_names))
        if unknown:
            raise ConfigError(f"stage.loss_weights has unknown loss(es) {unknown}; allowed: {list(self.loss_names)}")
        return {name: float(weights.get(name, 1.0)) for name in self.loss_names}

    @property
    def encoder(self) -> nn.Module:
        return self.masked_lm.base_model

    @property
    def mlm_head(self) -> nn.Module:
        return output_head(self.masked_lm)

    def encode(self, inputs: dict) -> torch.Tensor:
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return self.encoder(**{k: inputs[k] for k in keys if k in inputs}).last_hidden_state

    def mlm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, predicted ids, target ids) over the positions with a label; the head only sees those."""
        where = labels != -100
        targets = labels[where]
        if targets.numel() == 0:
            zero = hidden.sum() * 0.0
            return zero, targets, targets
        logits = self.mlm_head(hidden[where]).float()
        return nn.functional.cross_entropy(logits, targets), logits.argmax(-1), targets

    # -- Lightning hooks -------------------------------------------------------------------------
    def configure_callbacks(self):
        # The stage owns its export: `stage=kgbert` exports whatever callbacks group is selected.
        present = any(isinstance(cb, ExportPretrained) for cb in self.trainer.callbacks)
        return [ExportPretrained(self.export_target)] if self.export_target and not present else []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.step(batch)
        total = sum(self.loss_weights[name] * loss for name, loss in out.losses.items())
        size = self.batch_size(batch)
        if out.idle is not None:
            total = total + out.idle
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        for name, loss in out.losses.items():
            self.log(f"train/loss_{name}", loss, batch_size=size)
            self._remember(f"train/loss_{name}", loss)
        for name, value in out.metrics.items():
            key = name if "/" in name else f"train/{name}"  # kg/gate_mean keeps its name
            self.log(key, value, batch_size=size)
            self._remember(key, value)
        self._remember("train/loss", total)
        return total

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.step(batch)
        size = self.batch_size(batch)
        if self.val_loss_name in out.losses:
            self.log("val/loss", out.losses[self.val_loss_name], batch_size=size, sync_dist=True)
        for name, loss in out.losses.items():
            self.log(f"val/loss_{name}", loss, batch_size=size, sync_dist=True)
        for name, value in out.metrics.items():
            self.log(f"val/{name.split('/', 1)[-1]}", value, batch_size=size, sync_dist=True)
        if out.predictions is not None and out.predictions.numel():
            self.val_acc(out.predictions, out.targets)
            self.log("val/acc", self.val_acc, prog_bar=True, batch_size=size)

    def _remember(self, name: str, value: torch.Tensor) -> None:
        self.history.setdefault(name, deque(maxlen=self.final_window)).append(float(value.detach()))

    # -- export and results ----------------------------------------------------------------------
    def export(self, directory: str | Path, write: bool = True) -> Path:
        """The masked LM and tokenizer via save_pretrained (AutoModelForMaskedLM loads it), plus the stage's
        modules and configs. Call it on every rank: under DeepSpeed the full weights are gathered from all
        ranks (``consolidate.full_state_dict``); only ``write=True`` (rank zero) writes."""
        directory = Path(directory)
        strategy = self._trainer.strategy if self._trainer is not None else None
        state = full_state_dict(self.masked_lm, strategy)
        extras = {name: full_state_dict(module, strategy) for name, module in self.export_modules().items()}
        if not write:
            return directory
        directory.mkdir(parents=True, exist_ok=True)
        self.masked_lm.save_pretrained(directory, state_dict=dict(state))  # save_pretrained pops entries
        self.tokenizer.save_pretrained(directory)
        for name, module_state in extras.items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            torch.save(module_state, directory / name)
        for name, config in self.export_configs().items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        summary = {"stage": type(self).__name__, "global_step": int(self.global_step), **self.final_losses()}
        (directory / "pretraining.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        return directory

    def final_losses(self) -> dict[str, float]:
        """Mean of the last ``final_window`` training steps of each loss and metric."""
        return {name: round(sum(values) / len(values), 6) for name, values in self.history.items() if values}

    def validation_results(self) -> dict[str, float]:
        """The last validation's losses and metrics (val/acc itself is train.py's)."""
        metrics = self._trainer.callback_metrics if self._trainer is not None else {}
        return {k: round(float(v), 6) for k, v in metrics.items() if k.startswith("val/") and k != "val/acc"}

    def extra_results(self) -> dict:
        return {"export_dir": self.export_dir, "final_window": self.final_window,
                **self.final_losses(), **self.validation_results(), **self.extra_stats()}

    def configure_optimizers(self):
        return optimizers_for(self)
