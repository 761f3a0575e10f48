"""trainer.accumulate_grad_batches: 4 micro-batches of 8 give the same update as one batch of 32.

Under zero2 this caught a double division of the loss (Lightning and DeepSpeed both divided by the
accumulation count: updates came out 4x too small); CPUCapableDeepSpeedStrategy.backward fixes it.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_strategies import clean_rank_environment, fit_directly  # noqa: F401 (autouse fixture)

# No dropout (random draws), SGD (the update is lr * gradient, so weights compare gradients), one step.
EXACT = ["model.dropout=0.0", "stage.dropout=0.0", "stage.optim.optimizer._target_=torch.optim.SGD",
         "~stage.optim.optimizer.betas", "~stage.optim.optimizer.eps", "stage.optim.lr=1.0", "stage.optim.weight_decay=0.0",
         "stage.optim.scheduler=null", "trainer.gradient_clip_val=null", "trainer.max_steps=1",
         "trainer.limit_val_batches=0"]


@pytest.mark.parametrize("strategy", ["auto", "zero2"])
def test_accumulated_gradients_equal_one_large_batch(strategy, make_config, fewclue_with_test_public):
    def trained(batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
        cfg = make_config([f"strategy={strategy}", f"data.batch_size={batch_size}",
                           f"trainer.accumulate_grad_batches={accumulate}", *EXACT], fewclue_with_test_public)
        _, trainer, module = fit_directly(cfg, keep_initial=True)
        assert trainer.global_step == 1
        from lightning_modules.scale.consolidate import full_state_dict

        final = full_state_dict(module.encoder, trainer.strategy)
        return {k: final[k] - module.initial_state[k].cpu() for k in final}

    large = trained(32, 1)  # eprstmt split 0: 32 training rows, one batch
    accumulated = trained(8, 4)
    moved = max(delta.abs().max() for delta in large.values())
    assert moved > 1e-3  # measured: updates up to 1.1, largest accumulated-vs-large difference 1.7e-6
    for key, delta in large.items():
        torch.testing.assert_close(accumulated[key], delta, rtol=1e-3, atol=1e-5 * moved, msg=key)
