"""The one base of every stage: what train.py, the DataModules and the callbacks may rely on.

A stage implements

- ``collate(rows) -> batch`` (handed to the DataModule as its collate function),
- ``step(batch) -> StepOutput``: its named losses, and what the accuracy of the split scores
  (class log-probabilities, or predicted indices) against the targets,
- and, where it writes a leaderboard file, ``predict(batch) -> list[dict]``.

What the base assumes of a stage, all of it stated here:

- Settings: the base saves the arguments the stage's ``__init__`` was called with as its hyperparameters (no call
  in the stage), leaving out the live objects named in ``live_arguments`` (the base's ``masked_lm``,
  ``tokenizer`` and ``optim``, plus the ones a stage adds, e.g. ``("task",)``), so that a checkpoint holds plain
  values and reloads without Hydra: ``Stage.load_from_checkpoint(path, masked_lm=..., tokenizer=..., optim=...,
  <the stage's own live objects>)``. Any other argument must be a plain value (None, bool, int, float, str, or
  lists and dicts of them; a DictConfig is turned into one); anything else fails at construction, naming it.
- Batch size: the rows in a batch are the leading dimension of its first tensor, looking depth-first through
  dicts, lists and tuples in their order (``batch_size``); a stage whose batch starts with another tensor
  overrides ``batch_size``.
- Callbacks read nothing a stage adds: the run's task (name, classes, label names, leaderboard file) comes from
  the DataModule (``datamodules.protocol.TaskData.task``), and of the stage they use only what this base (or
  LightningModule) defines: ``results``, ``class_probs``, ``restart_schedule``, ``log``, ...

The base owns the rest: the weighted sum of the losses (``stage.loss_weights``; logged as
``train/loss`` and each as ``train/loss_<name>``), ``val/acc`` and ``test/acc`` (one torchmetrics
object per split), ``configure_optimizers`` from ``stage.optim``, the auxiliary masked-LM batches
of stages that train on unlabeled text (a second DataLoader, ``collate_mlm``), the export of the
backbone with ``save_pretrained`` when training ends (``stage.export_dir``), and ``results``: the
dict that train.py and callbacks write into and that becomes results.json.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections import deque
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from datamodules.mlm_texts import MlmText
from datamodules.protocol import StageData
from datamodules.errors import ConfigError, TrainingDiverged
from lightning_modules.scale.consolidate import full_state_dict
from lightning_modules.knowledge.masking import IGNORE, mask_texts
from lightning_modules.scale.optim import Optim

# Training losses and metrics are reported in results.json as the mean of this many last steps.
FINAL_WINDOW = 10


@dataclass
class StepOutput:
    losses: dict[str, torch.Tensor]
    # [B, C] class log-probabilities; their argmax is scored by the split's accuracy.
    log_probs: torch.Tensor | None = None
    # Or the predicted indices themselves (masked-token ids, entailment decisions).
    predictions: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    # Logged as given when the name has a "/" (kg/gate_mean), else as <split>/<name>.
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    # Added to the training loss unlogged: 0 * the parameters a batch left idle, so that DDP sees a
    # gradient for every parameter (find_unused_parameters=false) when a batch lacks an objective.
    idle: torch.Tensor | None = None


def output_head(masked_lm: nn.Module) -> nn.Module:
    """The masked-LM head of a Hugging Face ``*ForMaskedLM``: its one child besides the base model
    (``cls`` for BERT/ERNIE, ``lm_head`` for RoBERTa/XLM-R, ``predictions`` for ALBERT)."""
    base = masked_lm.base_model
    heads = [(name, module) for name, module in masked_lm.named_children() if module is not base]
    if len(heads) != 1:
        raise ConfigError(
            f"model: cannot find the masked-LM head of {type(masked_lm).__name__} (children besides the base "
            f"model: {[name for name, _ in heads]}); supported: *ForMaskedLM models with one head module "
            "(BERT, RoBERTa, ERNIE, ALBERT)"
        )
    return heads[0][1]


def special_free_ids(tokenizer, vocab_size: int) -> torch.Tensor:
    """Token ids a random replacement may draw (every id but the special tokens)."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(vocab_size) if i not in special], dtype=torch.long)


def plain_setting(value) -> bool:
    """True for what a checkpoint may hold as a setting: None, bool, int, float, str, and lists and dicts of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(plain_setting(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_setting(v) for k, v in value.items())
    return False


def leading_dimension(batch) -> int | None:
    """The leading dimension of the first tensor in ``batch`` (depth-first through mappings, lists and tuples, in
    their order); None when it holds no tensor with a dimension."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else None
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        size = leading_dimension(value)
        if size is not None:
            return size
    return None


def _saving_settings(init):
    """A stage's ``__init__`` that, when it is the constructor of the object being built (not a parent's called
    through ``super().__init__``), then saves the arguments it was called with (``StageModule._save_settings``)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def init_and_save(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        if type(self).__init__ is init_and_save:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            self._save_settings(signature, bound.arguments)

    init_and_save.__signature__ = signature  # what Hydra, Lightning's load_from_checkpoint and the tests read
    return init_and_save


class StageModule(LightningModule):
    # Constructor arguments that are live objects (a model, the tokenizer, the optimizer recipe, a TaskSpec, a teacher
    # ensemble), not settings: left out of the saved hyperparameters, and given again to ``load_from_checkpoint``.
    # A stage names only those it adds; the base's and every parent's count too (``live_argument_names``).
    live_arguments: ClassVar[tuple[str, ...]] = ("masked_lm", "tokenizer", "optim")
    # The named losses a stage may return; stage.loss_weights may weigh these and no others.
    loss_names: ClassVar[tuple[str, ...]] = ()
    # The loss logged as val/loss and test/loss.
    eval_loss: ClassVar[str] = ""
    # Whether evaluating without training means something (cloze scoring does; a new head does not).
    zero_shot: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):
            cls.__init__ = _saving_settings(cls.__init__)

    @classmethod
    def live_argument_names(cls) -> set[str]:
        """The ``live_arguments`` of the class and all its parents."""
        return {name for klass in cls.__mro__ for name in vars(klass).get("live_arguments", ())}

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer,
        optim: Optim,
        num_classes: int,
        loss_weights: dict[str, float],
        export_dir: str | None,
    ) -> None:
        super().__init__()
        # The Hugging Face model the stage trains and exports: a *ForMaskedLM, or its base model for a
        # stage that puts its own head on the encoder (finetune).
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.optim = optim
        self.loss_weights = self._check_weights({str(k): float(v) for k, v in loss_weights.items()})
        self.export_dir = export_dir
        if "mlm" in self.loss_names:
            output_head(backbone)  # fails early for a model without a usable MLM head
        self.vocab_size = backbone.get_input_embeddings().num_embeddings
        # A plain CPU tensor (not a buffer): collate uses it in the data loader, off the device.
        self.random_ids = special_free_ids(tokenizer, self.vocab_size)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro", ignore_index=IGNORE)
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro", ignore_index=IGNORE)
        self.heldout_acc = MulticlassAccuracy(num_classes=num_classes, average="micro", ignore_index=IGNORE)
        self.history: dict[str, deque] = {}
        # What results.json reports beyond train.py's own keys; callbacks add theirs (self_training).
        self.results: dict = {}

    # -- what a stage defines --------------------------------------------------------------------
    def collate(self, rows: list) -> dict:
        raise NotImplementedError

    def step(self, batch: dict) -> StepOutput:
        raise NotImplementedError

    def class_log_probs(self, batch: dict) -> torch.Tensor:
        """[B, C] class log-probabilities of a batch of task rows (predictions, self-training)."""
        raise NotImplementedError(f"{type(self).__name__} does not classify task rows")

    def predict(self, batch: dict) -> list[dict]:
        """Leaderboard rows of a batch of unlabelled rows."""
        raise NotImplementedError(f"{type(self).__name__} writes no predictions")

    @torch.no_grad()
    def class_probs(self, rows: list, batch_size: int) -> torch.Tensor:
        """Class probabilities [N, C] of task rows under the current weights, in eval mode (self-training's
        pseudo-labels, a teacher's probabilities on unlabeled rows, the untrained cloze's training accuracy). Called
        from hooks outside Lightning's steps, so it enters the trainer's precision (bf16 autocast under bf16-mixed)
        itself, and records no gradients."""
        was_training = self.training
        self.eval()
        precision = self._trainer.precision_plugin.forward_context() if self._trainer is not None else nullcontext()
        out = []
        with precision:
            for start in range(0, len(rows), batch_size):
                batch = self.transfer_batch_to_device(self.collate(rows[start : start + batch_size]), self.device, 0)
                out.append(self.class_log_probs(batch).exp().float().cpu())
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, 0)

    def batch_size(self, batch: dict) -> int:
        """The number of rows in ``batch``: the leading dimension of its first tensor (``leading_dimension``)."""
        size = leading_dimension(batch)
        if size is None:
            raise TypeError(f"{type(self).__name__}: its batch holds no tensor to count the rows of; collate one "
                            "(e.g. the labels) or override batch_size")
        return size

    def export_modules(self) -> dict[str, nn.Module]:
        """Modules saved beside the masked LM, by relative file name (``torch.save`` of their state_dict)."""
        return {}

    def export_configs(self) -> dict[str, dict]:
        """JSON files written beside the masked LM, by relative file name."""
        return {}

    # -- shared pieces ---------------------------------------------------------------------------
    def _save_settings(self, signature: inspect.Signature, arguments: dict) -> None:
        """``save_hyperparameters`` of the constructor's arguments less the live ones, as plain containers (not
        Hydra's DictConfig), so that a checkpoint loads with ``weights_only``."""
        live = self.live_argument_names()
        settings = {}
        for name, value in arguments.items():
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                raise TypeError(f"{type(self).__name__}.__init__ takes *{name}: settings must be named arguments")
            for key, item in (value.items() if kind is inspect.Parameter.VAR_KEYWORD else [(name, value)]):
                if key == "self" or key in live:
                    continue
                if isinstance(item, (DictConfig, ListConfig)):
                    item = OmegaConf.to_container(item, resolve=True)
                if not plain_setting(item):
                    raise TypeError(
                        f"{type(self).__name__}.__init__ argument {key!r} is a {type(item).__name__}, not a plain "
                        f"setting: name it in {type(self).__name__}.live_arguments (a live object, left out of the "
                        "checkpoint) or pass a plain value"
                    )
                settings[key] = item
        self.save_hyperparameters(settings)

    def _check_weights(self, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(self.loss_names))
        if unknown:
            raise ConfigError(f"stage.loss_weights has unknown loss(es) {unknown}; allowed: {list(self.loss_names)}")
        missing = [name for name in self.loss_names if name not in weights]
        if missing:
            raise ConfigError(f"stage.loss_weights has no weight for {missing}; give one for each of {list(self.loss_names)}")
        return {name: weights[name] for name in self.loss_names}

    @property
    def encoder(self) -> nn.Module:
        return self.backbone.base_model

    @property
    def mlm_head(self) -> nn.Module:
        return output_head(self.backbone)

    def encode(self, inputs: dict) -> torch.Tensor:
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return self.encoder(**{k: inputs[k] for k in keys if k in inputs}).last_hidden_state

    def mlm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, predicted ids, target ids) over the positions with a label; the head only sees those."""
        where = labels != IGNORE
        targets = labels[where]
        if targets.numel() == 0:
            zero = hidden.sum() * 0.0
            return zero, targets, targets
        logits = self.mlm_head(hidden[where]).float()
        return F.cross_entropy(logits, targets), logits.argmax(-1), targets

    def masked_texts(self, texts: list[MlmText], max_length: int, mask_prob: float) -> dict:
        """A masked-LM batch of plain texts (15% masking, 80/10/10; ``MlmText.mask_seed`` fixes the masks)."""
        masked = mask_texts(
            self.tokenizer, [t.text for t in texts], [[] for _ in texts], [t.mask_seed for t in texts],
            self.random_ids, max_length, mask_prob, 0.0,
        )
        return {"inputs": masked.inputs, "labels": masked.labels}

    def collate_mlm(self, texts: list[MlmText]) -> dict:
        """Batches of the auxiliary masked-LM loader; a stage that trains on unlabeled text defines it."""
        raise NotImplementedError

    @property
    def wants_mlm_batches(self) -> bool:
        """True when the DataModule should add a loader of unlabeled texts (``collate_mlm``) to training."""
        return False

    @property
    def reads_unlabeled(self) -> bool:
        """True when the stage reads the task's unlabeled rows (``TaskData.unlabeled_rows``): train.py reads and
        validates them before training (``read_unlabeled_first``); the callbacks that read them say so too."""
        return self.wants_mlm_batches

    @staticmethod
    def idle_term(modules: list[nn.Module]) -> torch.Tensor | None:
        """0 * the sum of the parameters of ``modules`` (see ``StepOutput.idle``); None when none is idle."""
        params = [p.sum() for module in modules for p in module.parameters() if p.requires_grad]
        return torch.stack(params).sum() * 0.0 if params else None

    # -- training --------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        datamodule: StageData | None = self.trainer.datamodule  # None when fit is given plain dataloaders
        stats = datamodule.stats if datamodule is not None else {}
        numbers = {k: v for k, v in stats.items() if isinstance(v, (int, float))}
        for logger in self.loggers:
            logger.log_metrics(numbers, step=0)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.training_output(batch)
        total = self.total_loss(out)
        if not torch.isfinite(total.detach()).all():
            parts = ", ".join(f"{name}={float(loss):.4g}" for name, loss in out.losses.items())
            raise TrainingDiverged(
                f"train/loss is {float(total)} at step {self.global_step} (epoch {self.current_epoch}; {parts}): "
                "training diverged; lower stage.optim.lr or check the data"
            )
        size = self.batch_size(batch["main"] if "main" in batch else batch)
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        self._remember("train/loss", total)
        for name, loss in out.losses.items():
            self.log(f"train/loss_{name}", loss, batch_size=size)
            self._remember(f"train/loss_{name}", loss)
        for name, value in out.metrics.items():
            key = name if "/" in name else f"train/{name}"
            self.log(key, value, batch_size=size)
            self._remember(key, value)
        return total

    def on_before_optimizer_step(self, optimizer) -> None:
        # fp16 loss scaling skips steps with inf gradients by design; elsewhere they are divergence.
        if "16" in str(self.trainer.precision) and "bf16" not in str(self.trainer.precision):
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            raise TrainingDiverged(
                f"the gradient norm is not finite at step {self.global_step} (epoch {self.current_epoch}): "
                "training diverged; lower stage.optim.lr or check the data"
            )

    def training_output(self, batch: dict) -> StepOutput:
        """The stage's step on a training batch, plus the auxiliary masked-LM loss when the DataModule gives
        ``{"main": batch, "mlm": batch}`` (its auxiliary loader, combined by Lightning)."""
        main, aux = (batch["main"], batch.get("mlm")) if "main" in batch else (batch, None)
        out = self.step(main)
        if aux is not None:
            out.losses["mlm"] = self.mlm_loss(self.encode(aux["inputs"]), aux["labels"])[0]
        return out

    def total_loss(self, out: StepOutput) -> torch.Tensor:
        """The weighted sum of the losses (``stage.loss_weights``), plus the idle term."""
        total = sum(self.loss_weights[name] * loss for name, loss in out.losses.items())
        return total + out.idle if out.idle is not None else total

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        bad = [name for name, p in self.named_parameters() if p.numel() and not torch.isfinite(p.detach()).all()]
        if bad:  # never keep (or select as best) weights that diverged
            raise TrainingDiverged(f"{len(bad)} weight tensors (first: {bad[0]}) are not finite at step "
                                   f"{self.global_step}: training diverged; lower stage.optim.lr or check the data")
        checkpoint["stage_history"] = {name: list(values) for name, values in self.history.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for name, values in checkpoint.get("stage_history", {}).items():
            self.history[name] = deque(values, maxlen=FINAL_WINDOW)

    def _remember(self, name: str, value: torch.Tensor) -> None:
        self.history.setdefault(name, deque(maxlen=FINAL_WINDOW)).append(float(value.detach()))

    # -- evaluation ------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> StepOutput:
        return self._evaluate(batch, "val", self.val_acc)  # callbacks get it as ``outputs`` (W&B's prediction table)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> StepOutput:
        """The labelled evaluation sets after training, one loader each (``StageData.evaluation_sets``):
        ``test/...`` for the labelled test set, ``heldout/...`` for the held-out rows. Callbacks get the output
        (the test rows' predictions, callbacks/test_predictions.py)."""
        datamodule = self.trainer.datamodule
        split = datamodule.evaluation_sets[dataloader_idx] if datamodule is not None else "test"
        return self._evaluate(batch, split, self.heldout_acc if split == "heldout" else self.test_acc)

    def _evaluate(self, batch: dict, split: str, accuracy: MulticlassAccuracy) -> StepOutput:
        out = self.step(batch)
        size = self.batch_size(batch)
        if self.eval_loss in out.losses:
            self.log(f"{split}/loss", out.losses[self.eval_loss], batch_size=size, sync_dist=True, add_dataloader_idx=False)
        for name, loss in out.losses.items():
            self.log(f"{split}/loss_{name}", loss, batch_size=size, sync_dist=True, add_dataloader_idx=False)
        for name, value in out.metrics.items():
            self.log(f"{split}/{name.split('/', 1)[-1]}", value, batch_size=size, sync_dist=True, add_dataloader_idx=False)
        predictions = out.log_probs.argmax(-1) if out.predictions is None else out.predictions
        if predictions.numel():
            accuracy(predictions, out.targets)
            self.log(f"{split}/acc", accuracy, prog_bar=True, batch_size=size, add_dataloader_idx=False)
        return out

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        return self.predict(batch)

    # -- export ----------------------------------------------------------------------------------
    def on_train_end(self) -> None:
        """Record the final training losses and the last validation's metrics; export the final weights when
        ``stage.export_dir`` is set (pretraining keeps the last step)."""
        self.results.update(self.final_losses())
        metrics = self.trainer.callback_metrics
        self.results.update({k: round(float(v), 6) for k, v in metrics.items() if k.startswith("val/") and k != "val/acc"})
        if not self.export_dir:
            return
        self.export(self.export_dir, write=self.trainer.is_global_zero)
        self.results["export_dir"] = str(self.export_dir)
        self.trainer.strategy.barrier("export")

    def export(self, directory: str | Path, write: bool = True) -> Path:
        """The backbone and tokenizer via save_pretrained (AutoModelForMaskedLM loads a masked LM), plus the stage's
        modules and configs. Call it on every rank: under DeepSpeed the full weights are gathered from all
        ranks (``consolidate.full_state_dict``); only ``write=True`` (rank zero) writes."""
        directory = Path(directory)
        strategy = self._trainer.strategy if self._trainer is not None else None
        state = full_state_dict(self.backbone, strategy)
        extras = {name: full_state_dict(module, strategy) for name, module in self.export_modules().items()}
        if not write:
            return directory
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory, state_dict=dict(state))  # save_pretrained pops entries
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

    # -- results and optimizers ------------------------------------------------------------------
    def final_losses(self) -> dict[str, float]:
        """Mean of the last ``FINAL_WINDOW`` training steps of each loss and metric."""
        return {name: round(sum(values) / len(values), 6) for name, values in self.history.items() if values}

    def configure_optimizers(self):
        # trainer.model: what a sharded strategy wraps (its parameters are the ones to optimise).
        model = self.trainer.model if self._trainer is not None else self
        return self.optim.configure(model.named_parameters(), self.trainer.estimated_stepping_batches)

    def restart_schedule(self, total_steps: int) -> None:
        """A new learning-rate schedule over ``total_steps`` from now (self-training's new rounds)."""
        configs = self.trainer.lr_scheduler_configs
        if configs and self.optim.scheduler is not None:
            configs[0].scheduler = self.optim.schedule(self.trainer.optimizers[0], total_steps)
