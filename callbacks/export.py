"""Exports a pretraining stage's backbone when training ends, for the next stage or any HF user."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)


class ExportPretrained(Callback):
    """Calls ``pl_module.export(output_dir)`` when fit ends: every rank gathers the weights (DeepSpeed),
    rank zero writes ``save_pretrained`` of the masked LM and tokenizer (AutoModelForMaskedLM and
    AutoTokenizer load it) plus the stage's extras. The final weights are exported: pretraining keeps
    the last step, not a best-on-dev checkpoint."""

    def __init__(self, output_dir: str) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not hasattr(pl_module, "export"):
            raise TypeError(f"callbacks.export needs a stage with export(); {type(pl_module).__name__} has none")
        pl_module.export_dir = str(self.output_dir)
        # Every rank takes part (DeepSpeed gathers the sharded weights); rank zero writes.
        pl_module.export(self.output_dir, write=trainer.is_global_zero)
        if trainer.is_global_zero:
            log.info("exported the pretrained backbone to %s", self.output_dir)
        trainer.strategy.barrier("export")
