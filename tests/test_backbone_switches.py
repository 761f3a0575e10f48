"""model.activation_checkpointing / attn_implementation / compile: each changes how, not what, is computed."""

from __future__ import annotations

import pytest
import torch

from datamodules.errors import ConfigError
from lightning_modules.encoders.backbones import transformer_layers
from tests.helpers import tiny_bert


class Tok:
    """The two things TinyBert.masked_lm reads from a tokenizer."""

    pad_token_id = 0

    def __len__(self):
        return 50


def tiny(tmp_path, *switches: str):
    factory = tiny_bert(tmp_path / "run", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
                        "model.intermediate_size=64", "model.dropout=0.0", *switches)
    torch.manual_seed(0)
    return factory.masked_lm(Tok())


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask, "labels": ids}


def loss_and_grads(model):
    loss = model(**batch()).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_recomputes_each_layer_and_keeps_the_gradients(tmp_path):
    plain, checkpointed = tiny(tmp_path), tiny(tmp_path, "model.activation_checkpointing=true")
    checkpointed.train()
    plain.train()
    calls = {"plain": 0, "checkpointed": 0}
    plain.bert.encoder.layer[0].intermediate.register_forward_hook(
        lambda *a: calls.__setitem__("plain", calls["plain"] + 1))
    checkpointed.bert.encoder.layer[0].intermediate.register_forward_hook(
        lambda *a: calls.__setitem__("checkpointed", calls["checkpointed"] + 1))
    loss_a, grads_a = loss_and_grads(plain)
    loss_b, grads_b = loss_and_grads(checkpointed)
    assert checkpointed.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    assert calls == {"plain": 1, "checkpointed": 2}  # the layer ran again during backward
    torch.testing.assert_close(loss_b, loss_a)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], msg=name)


def test_sdpa_and_eager_attention_compute_the_same_outputs(tmp_path):
    sdpa, eager = tiny(tmp_path, "model.attn_implementation=sdpa"), tiny(tmp_path, "model.attn_implementation=eager")
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    sdpa.eval(), eager.eval()
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    torch.testing.assert_close(sdpa(**inputs).logits, eager(**inputs).logits, rtol=1e-4, atol=1e-5)


def test_unknown_attention_is_a_config_error_naming_the_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"model.attn_implementation='flash'.*\['sdpa', 'eager'\]"):
        tiny_bert(tmp_path / "run", "model.attn_implementation=flash")


@pytest.mark.slow  # inductor compiles C++ kernels on CPU: about a minute on 2 cores
def test_compile_compiles_each_layer_and_matches_eager(tmp_path):
    eager, compiled = tiny(tmp_path), tiny(tmp_path, "model.compile=true")
    assert all(layer._compiled_call_impl is not None for layer in transformer_layers(compiled))
    assert all(layer._compiled_call_impl is None for layer in transformer_layers(eager))
    loss_a, grads_a = loss_and_grads(eager)
    loss_b, grads_b = loss_and_grads(compiled)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


def test_lamb_on_cpu_is_pytorch_optimizer_lamb_with_layerwise_trust_ratio(make_config):
    from hydra.utils import instantiate
    from pytorch_optimizer import Lamb

    factory = instantiate(make_config(["optim=lamb"]).stage.optim.optimizer)
    small = torch.nn.Parameter(torch.full((4, 4), 0.1))
    large = torch.nn.Parameter(torch.full((4, 4), 1.0))
    optimizer = factory([{"params": [small, large], "weight_decay": 0.0}], lr=0.01)
    assert isinstance(optimizer, Lamb)
    before = [small.detach().clone(), large.detach().clone()]
    small.grad = torch.full_like(small, 0.5)
    large.grad = torch.full_like(large, 0.5)  # same gradient, weights 10x apart
    optimizer.step()
    steps = [(p.detach() - b).norm() / b.norm() for p, b in zip((small, large), before)]
    # the trust ratio scales each tensor's step to its own norm: equal relative steps, not equal absolute ones
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-4, atol=0)
    assert (large.detach() - before[1]).norm() > 5 * (small.detach() - before[0]).norm()
