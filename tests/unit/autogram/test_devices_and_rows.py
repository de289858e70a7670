"""Operations without a batching rule, and models split over devices.

An operation without a batching rule (cuDNN's RNN backward, fused attention backward on CUDA;
here, a custom function whose backward reads a value) makes the engine's batched backward
passes fail: the engine then does one backward pass per row, exactly — also when the graph is
freed as the pass goes (``retain_graph=False``, as JDOptimizer asks once the engine is checked)
— and learns it, so that later Gramians loop from the start.

A model split over devices gives each layer's part of the Gramian on that layer's device: the
parts are moved to the losses' device and summed in the widest of their dtypes. Without a
second device, the ``meta`` device shows where the sum lands.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from jdopt import JDOptimizer
from jdopt.autogram import Engine
from jdopt.autogram._assembly import sum_parts
from tests.utils.device import draw_uniform, seeded

from ._models import F64, B, randn
from ._reference import (
    TOLERANCE,
    accumulated_grads,
    flat,
    reference_gramian,
    reference_weighted_gradient,
    relative_error,
)


class _ReadsItsGradient(torch.autograd.Function):
    """The identity, whose backward reads a value of the gradient (``.item()`` has no
    batching rule); counts its backward calls."""

    calls = 0

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        _ReadsItsGradient.calls += 1
        return grad * (1.0 if grad.sum().item() == grad.sum().item() else 0.0)


class _Unbatchable(nn.Module):
    """No parameters: the engine's closed forms cover the model, the pass to the layers'
    outputs runs through the function."""

    def __init__(self) -> None:
        super().__init__()
        self.active = True

    def forward(self, x: Tensor) -> Tensor:
        return _ReadsItsGradient.apply(x) if self.active else x


class _UnbatchableGate(nn.Module):
    """With a parameter and no closed form: the fallback's pass from the losses runs through
    the function too."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 4, dtype=F64))

    def forward(self, x: Tensor) -> Tensor:
        return _ReadsItsGradient.apply(x * self.weight)


def _model(middle: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), middle, nn.Tanh(), nn.Linear(4, 2)).to(F64)


LOSSES = {  # (batch_dim, losses of the [B, 2] output): each batched over 2 slices or objectives
    "B_k": (0, lambda out: out**2),
    "k": (None, lambda out: (out**2).sum(dim=0)),
}
MIDDLES = {"no_parameter": _Unbatchable, "fallback_parameter": _UnbatchableGate}


@pytest.mark.parametrize("losses_of", list(LOSSES))
@pytest.mark.parametrize("middle", list(MIDDLES))
def test_an_operation_without_batching_rule_is_exact_when_the_graph_is_freed(
    losses_of: str, middle: str
) -> None:
    """After the first (checked) Gramian, the engine frees the graph as its passes go: one
    backward pass per row still takes over, for the Gramian and the weighted gradient."""
    batch_dim, make_losses = LOSSES[losses_of]
    model = _model(MIDDLES[middle]())
    params = list(model.parameters())
    engine = Engine(model, batch_dim=batch_dim)
    engine.compute_gramian(make_losses(model(randn(B, 3, seed=1))))  # checked, graph kept
    for seed in (2, 3):
        losses = make_losses(model(randn(B, 3, seed=seed)))
        weights = draw_uniform(losses.shape, generator=seeded(9), dtype=F64)
        expected = reference_gramian(losses, params)
        expected_grads = reference_weighted_gradient(losses, weights, params)
        gramian = engine.compute_gramian(losses, retain_graph=False)
        assert relative_error(gramian, expected) <= TOLERANCE
        for p in params:
            p.grad = None
        engine.accumulate_grads(weights)
        assert relative_error(flat(accumulated_grads(params)), flat(expected_grads)) <= TOLERANCE


def test_the_engine_learns_to_do_one_pass_per_row() -> None:
    """Once a batched pass has failed, later Gramians do one backward pass per row without
    trying the batched one first: two slices, two calls of the function's backward."""
    model = _model(_Unbatchable())
    engine = Engine(model, batch_dim=0)
    engine.compute_gramian(model(randn(B, 3)) ** 2)
    _ReadsItsGradient.calls = 0
    engine.compute_gramian(model(randn(B, 3, seed=2)) ** 2, retain_graph=False)
    assert _ReadsItsGradient.calls == 2


def test_a_graph_that_stops_batching_raises_once_then_loops() -> None:
    """An engine whose batched passes went through frees the graph as they go: if a later
    graph cannot run batched, that Gramian cannot be computed (a clear error, nothing kept);
    the next ones do one pass per row, exactly."""
    middle = _Unbatchable()
    middle.active = False
    model = _model(middle)
    params = list(model.parameters())
    engine = Engine(model, batch_dim=0)
    for seed in (1, 2):  # batched: the first checked, the second freeing the graph
        engine.compute_gramian(model(randn(B, 3, seed=seed)) ** 2, retain_graph=False)
    middle.active = True
    with pytest.raises(RuntimeError, match="cannot run batched over the objectives"):
        engine.compute_gramian(model(randn(B, 3, seed=3)) ** 2, retain_graph=False)
    losses = model(randn(B, 3, seed=4)) ** 2
    expected = reference_gramian(losses, params)
    gramian = engine.compute_gramian(losses, retain_graph=False)
    assert relative_error(gramian, expected) <= TOLERANCE


def test_jdoptimizer_steps_through_an_operation_without_batching_rule() -> None:
    """JDOptimizer on the engine (which frees the graph from the second step) takes the same
    steps as on the full Jacobian."""

    def train(engine: str) -> Tensor:
        model = _model(_Unbatchable())
        jd = JDOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), model=model, batch_dim=0, engine=engine
        )
        for seed in range(3):
            jd.zero_grad()
            jd.step(model(randn(B, 3, seed=seed)) ** 2)
        assert jd.last_step.engine == engine
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    assert torch.allclose(train("autogram"), train("autojac"), rtol=0, atol=1e-10)


# --- models over several devices ------------------------------------------------------------


def test_parts_of_several_dtypes_are_summed_in_the_widest() -> None:
    parts = [torch.ones(2, 2, dtype=torch.float32) / 3, torch.ones(2, 2, dtype=F64) / 3]
    total = sum_parts([p.clone() for p in parts], torch.device("cpu"))
    assert total.dtype == F64
    assert torch.equal(total, parts[0].double() + parts[1])


def test_parts_are_moved_to_the_losses_device() -> None:
    """Parts on the CPU summed for losses on another device (here ``meta``) land there."""
    parts = [torch.ones(3, 3), torch.ones(3, 3, dtype=F64), torch.ones(3, 3, device="meta")]
    total = sum_parts(parts, torch.device("meta"))
    assert total.device.type == "meta" and total.dtype == F64 and total.shape == (3, 3)


def test_no_parts_is_an_error() -> None:
    with pytest.raises(ValueError, match="depend on none of the hooked modules"):
        sum_parts([], torch.device("cpu"))
