"""``accumulate_grads(weights)``: the weighted gradient ``Σᵢ weights[i] ∇losses[i]`` from the
factors of the last Gramian, as ``losses.backward(weights)`` would give it, once per Gramian."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jdopt.aggregation import MeanWeighting, UPGradWeighting
from jdopt.autogram import Engine
from tests.utils.architectures import trainable_parameters
from tests.utils.device import draw_uniform, seeded

from ._models import F64, B, by_name, indices, mlp, mlp_inputs, mlp_losses, randn
from ._reference import (
    TOLERANCE,
    accumulated_grads,
    assert_exact,
    flat,
    reference_weighted_gradient,
    relative_error,
)
from ._settings import PER_SAMPLE


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer_encoder", "embedding_gru"])
@pytest.mark.parametrize("weighting", [UPGradWeighting(), MeanWeighting()], ids=["upgrad", "mean"])
def test_accumulate_grads_equals_backward_of_the_weighted_losses(
    name: str, weighting: object
) -> None:
    """The documented usage: ``accumulate_grads(weights)`` and ``losses.backward(weights)``
    give the same gradients."""
    arch = by_name(name)
    model, inputs = arch.make()
    params = trainable_parameters(model)
    engine = Engine(model, batch_dim=0)
    losses = PER_SAMPLE.losses(arch.outputs(model, inputs))

    gramian = engine.compute_gramian(losses)
    weights = weighting(gramian)
    engine.accumulate_grads(weights)
    from_factors = [p.grad.clone() for p in params]
    model.zero_grad()
    losses.backward(weights)

    assert relative_error(flat(from_factors), flat(accumulated_grads(params))) <= TOLERANCE


def test_the_gramian_and_the_accumulated_grads_carry_no_graph() -> None:
    """The Gramian and the ``.grad`` written by ``accumulate_grads`` do not require grad (they
    would keep the forward graph alive)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(F64)
    engine = Engine(model, batch_dim=0)
    losses = (model(randn(B, 3)) ** 2).sum(dim=1)

    gramian = engine.compute_gramian(losses)
    engine.accumulate_grads(torch.ones(B, dtype=F64))

    assert not gramian.requires_grad
    assert all(not p.grad.requires_grad for p in model.parameters())


def test_accumulate_grads_before_compute_gramian_is_refused() -> None:
    """Without a Gramian there are no factors: a ``RuntimeError``, and no ``.grad``."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    losses = mlp_losses(model, mlp_inputs())
    with pytest.raises(RuntimeError, match="compute_gramian"):
        engine.accumulate_grads(torch.ones_like(losses))
    assert all(p.grad is None for p in model.parameters())


def test_accumulate_grads_twice_after_one_gramian_is_refused() -> None:
    """A Gramian's factors serve one ``accumulate_grads``."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    losses = mlp_losses(model, mlp_inputs())
    engine.compute_gramian(losses)
    engine.accumulate_grads(torch.ones_like(losses))
    with pytest.raises(RuntimeError, match="compute_gramian"):
        engine.accumulate_grads(torch.ones_like(losses))


@pytest.mark.parametrize("shape", [(B + 3,), (B, 2)])
def test_weights_of_another_shape_than_the_losses_are_refused(shape: tuple[int, ...]) -> None:
    """Weights must have the losses' shape: a ``ValueError``, and no ``.grad``."""
    torch.manual_seed(0)
    linear = nn.Linear(3, 2).to(F64)
    engine = Engine(linear, batch_dim=0)
    losses = (linear(randn(B, 3)) ** 2).sum(dim=1)
    engine.compute_gramian(losses)
    with pytest.raises(ValueError, match="weights"):
        engine.accumulate_grads(torch.ones(shape, dtype=F64))
    assert all(p.grad is None for p in linear.parameters())


def test_a_sparse_embedding_gets_a_sparse_gradient() -> None:
    """``Embedding(sparse=True)`` gets a sparse ``.grad``, as from its own backward pass (which
    ``SparseAdam`` requires)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 3, sparse=True), nn.Flatten(), nn.Linear(9, 1))
    model = model.to(F64)
    engine = Engine(model, batch_dim=0)
    losses = model(indices()).squeeze(1) ** 2
    weights = draw_uniform(B, generator=seeded(9), dtype=F64)
    engine.compute_gramian(losses)
    engine.accumulate_grads(weights)
    grad = model[0].weight.grad
    assert grad.is_sparse
    expected = reference_weighted_gradient(losses, weights, [model[0].weight])[0]
    assert relative_error(grad.to_dense(), expected) <= TOLERANCE
    torch.optim.SparseAdam(model[0].parameters()).step()  # accepts it


def test_a_sparse_embedding_tied_to_a_linear_head_gets_a_dense_gradient() -> None:
    """Its own backward sums a sparse and a dense gradient: dense, which Adam accepts."""
    torch.manual_seed(0)
    embedding, head = nn.Embedding(7, 3, sparse=True), nn.Linear(3, 7, bias=False)
    head.weight = embedding.weight
    model = nn.Sequential(embedding, nn.Tanh(), head).to(F64)
    engine = Engine(model, batch_dim=0)
    losses = model(indices()).square().mean(dim=(1, 2))
    assert_exact(engine, losses, [embedding.weight])
    assert not embedding.weight.grad.is_sparse
