"""The exact fallback: parameters without a closed form (layers without a rule, options a rule
does not cover, calls it cannot read) get their per-objective gradients from a batched backward
pass, exact on every setting, and are listed in ``fallback_parameters``."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from jdopt.autogram import Engine
from tests.utils.architectures import trainable_parameters
from tests.utils.device import draw, draw_uniform, seeded

from ._models import F64, B, randn
from ._reference import (
    TOLERANCE,
    accumulated_grads,
    assert_exact,
    flat,
    reference_gramian,
    reference_weighted_gradient,
    relative_error,
)


class _Gate(nn.Module):
    """A custom layer (no closed form) using its weight twice: ``x ⊙ w + tanh(x) ⊙ w²``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 3, dtype=F64))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight + torch.tanh(x) * self.weight**2


@pytest.mark.parametrize("elsewhere", ["nowhere", "in_the_losses", "below"])
@pytest.mark.parametrize("retain_graph", [True, False])
def test_a_layer_without_closed_form_is_exact_wherever_its_weight_is_used(
    elsewhere: str, retain_graph: bool
) -> None:
    """A layer without a closed form gets its per-sample gradients from its own part of the
    graph when its weight is used nowhere else, and from the losses otherwise (a penalty in
    the losses, the weight reused below the layer): exact either way, with or without the
    graph kept, and listed in ``fallback_parameters``."""
    torch.manual_seed(0)
    first, gate, last = nn.Linear(2, 3).to(F64), _Gate(), nn.Linear(3, 2).to(F64)
    model = nn.ModuleList([first, gate, last])
    engine = Engine(model, batch_dim=0)

    def losses_of(x: Tensor) -> Tensor:
        h = first(x)
        if elsewhere == "below":
            h = h * gate.weight
        losses = (last(gate(torch.sin(h))) ** 2).sum(dim=1)
        if elsewhere == "in_the_losses":
            losses = losses + (x[:, 0] * gate.weight.sum()) ** 2
        return losses

    x = draw(4, 2, generator=seeded(1), dtype=F64)
    engine.compute_gramian(losses_of(x))  # the first Gramian is checked (graph kept for it)
    losses = losses_of(x)
    params = trainable_parameters(model)
    weights = draw_uniform(4, generator=seeded(2), dtype=F64)
    expected_gramian = reference_gramian(losses, params)
    expected = reference_weighted_gradient(losses, weights, params)
    gramian = engine.compute_gramian(losses, retain_graph=retain_graph)
    assert relative_error(gramian, expected_gramian) <= TOLERANCE
    assert {id(p) for p in engine.fallback_parameters} == {id(gate.weight)}
    engine.accumulate_grads(weights)
    assert relative_error(flat(accumulated_grads(params)), flat(expected)) <= TOLERANCE


class _ScaleShift(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=F64))
        self.shift = nn.Parameter(torch.tensor([0.1, 0.2, -0.3], dtype=F64))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class _AppliedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.affine = _ScaleShift()

    def forward(self, x: Tensor) -> Tensor:
        return self.affine(torch.tanh(self.affine(x)))


@pytest.mark.parametrize("batch_dim", [0, None])
def test_a_layer_without_closed_form_called_twice_in_sequence_is_exact(
    batch_dim: int | None,
) -> None:
    """A layer without a closed form whose second call takes the first one's output: the path
    through both calls counts once."""
    model = _AppliedTwice()
    engine = Engine(model, batch_dim=batch_dim)
    out = model(randn(B, 3))
    losses = (out**2).sum(dim=1) if batch_dim == 0 else torch.stack([(out**2).sum(), out.sum()])
    assert_exact(engine, losses, list(model.parameters()))


@pytest.mark.parametrize("conv", [False, True])
def test_a_layer_with_parameters_its_rule_does_not_know_takes_the_fallback(conv: bool) -> None:
    """A registered type with other parameters than its rule computes with (old-style
    ``weight_norm``'s ``weight_g`` and ``weight_v``) takes the exact fallback."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight_norm is deprecated in favour of parametrize
        layer = nn.utils.weight_norm(nn.Conv1d(2, 3, 3) if conv else nn.Linear(3, 4))
    model = nn.Sequential(layer, nn.Flatten(), nn.Tanh(), nn.LazyLinear(1)).to(F64)
    x = randn(B, 2, 6) if conv else randn(B, 3)
    model(x)  # materialises the lazy layer
    engine = Engine(model, batch_dim=0)
    losses = model(x).squeeze(1) ** 2
    assert_exact(engine, losses, list(model.parameters()))


@pytest.mark.parametrize(
    ("conv", "shape"), [(nn.Conv1d(2, 3, 3), (2, 6)), (nn.Conv2d(2, 3, 3), (2, 5, 5))]
)
def test_unbatched_convolution_inputs_take_the_fallback(
    conv: nn.Module, shape: tuple[int, ...]
) -> None:
    """Convolutions of unbatched inputs ``[C, *spatial]`` (legal in PyTorch) are exact."""
    conv = conv.to(F64)
    engine = Engine(conv, batch_dim=None)
    output = conv(randn(*shape))
    losses = torch.stack([output.sin().sum(), (output**2).mean()])
    assert_exact(engine, losses, list(conv.parameters()))


class _ReadsItsGradient(torch.autograd.Function):
    """Doubles the gradient, after reading one of its values: a backward without a batching
    rule (``.item()`` cannot run batched)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad * (2.0 if grad.sum().item() == grad.sum().item() else 0.0)


class _Unbatchable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(randn(3, 3, seed=5))

    def forward(self, x: Tensor) -> Tensor:
        return _ReadsItsGradient.apply(x @ self.weight)


@pytest.mark.parametrize(
    ("batch_dim", "make_losses"),
    [(0, lambda out: out.sum(dim=1)), (0, lambda out: out), (None, lambda out: out.sum(dim=0))],
    ids=["B", "B_k", "m"],
)
def test_an_operation_without_batching_rule_is_exact(batch_dim, make_losses) -> None:
    """Where a backward cannot run batched over the objectives (or slices), the engine does one
    pass per row, exactly, for the fallback's gradients and for the output gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), _Unbatchable(), nn.Linear(3, 2)).double()
    engine = Engine(model, batch_dim=batch_dim)
    assert_exact(engine, make_losses(model(randn(B, 2))), list(model.parameters()))
