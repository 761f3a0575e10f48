"""Held-out accuracy after each dev evaluation during training: results.json's ``heldout_curve``.

For studying training length and checkpoint selection: with the dev curve beside it, one run shows what each
epoch would have scored on rows nothing chooses with, so selection rules (the best dev epoch, the last epoch, a
fixed epoch) can be compared on the same weights. The curve is only recorded: no checkpoint is chosen with it.
It costs one pass over the held-out rows per evaluation (``data.heldout_max`` caps them). Opt-in:
``+callbacks.heldout_curve._target_=callbacks.heldout_curve.HeldoutCurve``.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_modules.knowledge.masking import IGNORE

HELDOUT = "heldout"


class HeldoutCurve(Callback):
    def __init__(self) -> None:
        self.curve: list[dict[str, float | int]] = []

    @property
    def state_key(self) -> str:
        return "HeldoutCurve"

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Here the weights are still in the evaluation precision (EvalPrecision restores them after the loop),
        # so each point is scored as heldout/acc is after training.
        datamodule = trainer.datamodule
        if trainer.sanity_checking or trainer.state.fn != "fit" or HELDOUT not in getattr(datamodule, "evaluation_sets", ()):
            return
        point = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step}
        point.update(self.score(pl_module, datamodule.loader(datamodule.heldout_rows)))
        self.curve.append(point)

    @staticmethod
    def score(pl_module: LightningModule, loader) -> dict[str, float]:
        """``heldout/acc`` and the step's other metrics (Fuzzy-PET's ``acc_<set>``) over the loader's labelled rows;
        a metric that is a batch mean is weighted by the batch's labelled rows."""
        correct, rows = 0, 0
        sums: dict[str, float] = defaultdict(float)
        with torch.no_grad():
            for batch in loader:
                out = pl_module.step(pl_module.transfer_batch_to_device(batch, pl_module.device, 0))
                predictions = out.log_probs.argmax(-1) if out.predictions is None else out.predictions
                labelled = out.targets != IGNORE
                count = int(labelled.sum())
                correct += int((predictions[labelled] == out.targets[labelled]).sum())
                rows += count
                for name, value in out.metrics.items():
                    if "/" not in name:
                        sums[name] += float(value) * count
        if not rows:
            return {}
        return {f"{HELDOUT}/acc": round(correct / rows, 6),
                **{f"{HELDOUT}/{name}": round(total / rows, 6) for name, total in sums.items()}}

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.curve:
            pl_module.results["heldout_curve"] = list(self.curve)

    def state_dict(self) -> dict:
        return {"curve": list(self.curve)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.curve = list(state_dict.get("curve", []))
