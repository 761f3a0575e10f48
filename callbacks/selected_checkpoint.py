"""The checkpoint a run tests and predicts with (``best.ckpt``), by the top-level ``selection`` rule.

``best_dev`` keeps the weights of the evaluation with the highest ``val/acc`` (the first of equal ones);
``last`` keeps the weights training ended with, chosen by no dev row (PET's protocol: a fixed number of
updates). train.py then measures ``val/acc`` on them.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules.errors import ConfigError

SELECTIONS = ("best_dev", "last")


class SelectedCheckpoint(ModelCheckpoint):
    def __init__(self, selection: str, dirpath: str, filename: str, monitor: str, mode: str, save_top_k: int,
                 save_weights_only: bool, enable_version_counter: bool) -> None:
        if selection not in SELECTIONS:
            raise ConfigError(f"selection={selection!r}; allowed: {', '.join(SELECTIONS)}")
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor if selection == "best_dev" else None,
                         mode=mode, save_top_k=save_top_k, save_weights_only=save_weights_only,
                         enable_version_counter=enable_version_counter)
        self.selection = selection
