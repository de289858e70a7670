"""Partial engines: the Gramian is taken over the hooked modules' parameters only, and a
parameter that the losses use outside the hooked calls (tied to an unhooked module, or in a
penalty) is refused rather than silently wrong."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from jdopt.autogram import Engine
from tests.utils.architectures import trainable_parameters
from tests.utils.device import draw_uniform, seeded

from ._models import F64, B, by_name, indices, mlp, mlp_inputs, mlp_losses, randn
from ._reference import (
    TOLERANCE,
    accumulated_grads,
    assert_exact,
    flat,
    reference_gramian,
    reference_weighted_gradient,
    relative_error,
)
from ._settings import PER_SAMPLE


@pytest.mark.parametrize("batch_dim", [0, None])
def test_partial_engine_covers_only_its_modules(batch_dim: int | None) -> None:
    """The Gramian of an engine on some layers is that of their parameters only."""
    model = mlp()
    hooked = [model[2], model[4]]
    engine = Engine(*hooked, batch_dim=batch_dim)
    losses = mlp_losses(model, mlp_inputs())

    gramian = engine.compute_gramian(losses)

    params = trainable_parameters(*hooked)
    assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE
    everything = reference_gramian(losses, trainable_parameters(model))
    assert relative_error(gramian, everything) > 1e-3
    assert {id(p) for p in engine.params} == {id(p) for p in params}


def test_partial_engine_accumulates_only_its_parameters() -> None:
    """``accumulate_grads`` leaves the parameters of unhooked modules untouched."""
    model = mlp()
    engine = Engine(model[4], batch_dim=0)
    losses = mlp_losses(model, mlp_inputs())
    weights = draw_uniform(5, generator=seeded(2), dtype=F64)
    engine.compute_gramian(losses)
    params = trainable_parameters(model[4])
    expected = reference_weighted_gradient(losses, weights, params)

    engine.accumulate_grads(weights)

    assert relative_error(flat(accumulated_grads(params)), flat(expected)) <= TOLERANCE
    assert all(p.grad is None for p in trainable_parameters(model[0], model[2]))


def test_partial_engine_on_attention_and_a_head_is_exact() -> None:
    """Hooking a Transformer's attention and its head only: the Gramian of their parameters."""
    model, inputs = by_name("transformer_encoder").make()
    engine = Engine(model.layer.self_attn, model.head, batch_dim=0)
    losses = PER_SAMPLE.losses(model(*inputs))

    gramian = engine.compute_gramian(losses)

    params = trainable_parameters(model.layer.self_attn, model.head)
    assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE


class _TiedEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(7, 4)
        self.output = nn.Linear(4, 7, bias=False)
        self.output.weight = self.embedding.weight

    def forward(self, idx: Tensor) -> Tensor:
        return self.output(torch.tanh(self.embedding(idx))).mean(dim=1)


def test_a_parameter_tied_to_an_unhooked_module_is_refused() -> None:
    """An output layer whose weight is an unhooked embedding's: the engine cannot see the
    embedding's use, so it refuses (the graph shows the second use); hooking both is exact."""
    torch.manual_seed(0)
    model = _TiedEmbedding().to(F64)
    engine = Engine(model.output, batch_dim=0)
    losses = (model(indices()) ** 2).sum(dim=1)
    with pytest.raises(ValueError, match="tied to a module outside the engine"):
        engine.compute_gramian(losses)
    full = Engine(model, batch_dim=0)
    losses = (model(indices()) ** 2).sum(dim=1)
    assert_exact(full, losses, list(model.parameters()))


def test_a_parameter_used_in_the_losses_is_refused_at_any_step() -> None:
    """A weight penalty in the losses uses a closed-form parameter outside its calls: refused,
    also when it first appears after the first step."""
    linear = nn.Linear(3, 2).to(F64)
    engine = Engine(linear, batch_dim=0)
    engine.compute_gramian((linear(randn(B, 3)) ** 2).sum(dim=1))
    losses = (linear(randn(B, 3, seed=2)) ** 2).sum(dim=1) + 0.5 * linear.weight.pow(2).sum()
    with pytest.raises(ValueError, match="weight penalty"):
        engine.compute_gramian(losses)
