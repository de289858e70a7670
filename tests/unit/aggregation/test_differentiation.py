"""Autograd through a method is exact, or refused: never a silently wrong gradient.

The reference is a central finite difference of the update (or weights) in float64, on
matrices in general position (where every method is differentiable).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import jdopt.aggregation as agg
from jdopt.aggregation._differentiable import NotDifferentiableError
from tests.utils.device import draw, seeded

from ._registry import METHODS, Method

M, N = 4, 5
_STEP = 1e-6


def _jacobian() -> Tensor:
    g = seeded(7)
    return draw(M, N, generator=g, dtype=torch.float64)


def _directions(point: Tensor, symmetric: bool) -> list[Tensor]:
    """Seeded directions to differentiate along (symmetric ones for a Gramian, whose
    derivative is only defined along symmetric perturbations)."""
    g = seeded(11)
    directions = [draw(point.shape, generator=g, dtype=torch.float64) for _ in range(3)]
    return [(d + d.T) / 2 for d in directions] if symmetric else directions


def _check(function, point: Tensor, size: int, symmetric: bool) -> None:
    """Directional derivatives of ``⟨v, function⟩``: autograd against central differences."""
    v = torch.linspace(-1.0, 2.0, size, dtype=torch.float64)
    tracked = point.clone().requires_grad_()
    output = function(tracked) @ v
    # Weights that do not depend on the input (Mean, Constant, …) are constants: zero gradient.
    grad = torch.autograd.grad(output, tracked)[0] if output.requires_grad else 0 * point
    for direction in _directions(point, symmetric):
        step = _STEP * direction
        expected = (function(point + step) @ v - function(point - step) @ v) / (2 * _STEP)
        assert abs(float((grad * direction).sum() - expected)) <= 1e-6 * (1 + abs(expected))


def _forms(method: Method, jacobian: Tensor | None = None) -> list[tuple[str, object, Tensor, int]]:
    """``(name, factory of the callable, point, output size)``: the aggregator on a Jacobian
    (default: ``_jacobian()``) and, for Gramian-based methods, the weighting on its Gramian."""
    jacobian = _jacobian() if jacobian is None else jacobian
    forms = [("aggregator", method.aggregator, jacobian, N)]
    if method.weighting is not None:
        forms.append(("weighting", method.weighting, jacobian @ jacobian.T, M))
    return forms


DIFFERENTIABLE = [m for m in METHODS if m.differentiable]
REFUSED = [m for m in METHODS if not m.differentiable]


@pytest.mark.parametrize("method", DIFFERENTIABLE, ids=lambda m: m.name)
def test_autograd_through_a_differentiable_method_is_exact(method: Method) -> None:
    for form, factory, point, size in _forms(method):

        def function(x: Tensor, factory=factory) -> Tensor:
            return factory(M)(x)  # a fresh object: random methods draw the same way

        _check(function, point, size, symmetric=form == "weighting")


@pytest.mark.parametrize("method", DIFFERENTIABLE, ids=lambda m: m.name)
def test_a_zero_row_gives_a_finite_gradient(method: Method) -> None:
    """A zero row (an objective at a stationary point) is common in training: tracking
    gradients leaves the result unchanged and gives finite gradients (MGDA's closed form on a
    support of zero rows would be singular; √0 in IMTL-G has an infinite derivative)."""
    jacobian = _jacobian()
    jacobian[0] = 0.0
    for form, factory, point, size in _forms(method, jacobian):
        tracked = point.clone().requires_grad_()
        output = factory(M)(tracked)
        assert torch.equal(output.detach(), factory(M)(point)), form
        if output.requires_grad:
            v = torch.linspace(-1.0, 2.0, size, dtype=torch.float64)
            (grad,) = torch.autograd.grad(output @ v, tracked)
            assert torch.isfinite(grad).all(), form


@pytest.mark.parametrize("method", REFUSED, ids=lambda m: m.name)
def test_backward_through_a_method_solved_outside_autograd_raises(method: Method) -> None:
    for form, factory, point, _ in _forms(method):
        detached = factory(M)(point)
        tracked = point.clone().requires_grad_()
        output = factory(M)(tracked)
        assert torch.equal(output.detach(), detached), form  # the forward pass is unchanged
        with pytest.raises(NotDifferentiableError, match=r"detach\(\)"):
            output.sum().backward()


def _low_rank_float32(seed: int) -> Tensor:
    g = seeded(seed)
    return draw(20, 3, generator=g) @ draw(3, 10, generator=g)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_tracking_gradients_does_not_change_the_result(method: Method) -> None:
    """On inputs where the derivative is delicate (float32, rank-deficient, zero), the result
    with the input requiring grad is the result without."""
    for point in (_low_rank_float32(164), _low_rank_float32(3), torch.zeros(20, 10)):
        gramian = point @ point.T
        for factory, x in ((method.aggregator, point), (method.weighting, gramian)):
            if factory is None or factory(20) is None:
                continue
            expected = factory(20)(x)
            assert torch.equal(factory(20)(x.clone().requires_grad_()).detach(), expected)


class _UserSolver(agg.Weighting):
    """A user's weighting computed outside autograd, which renames its argument."""

    differentiable = False

    def __init__(self, iterations: int = 10) -> None:
        super().__init__()
        self.n = iterations

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        return torch.full((m,), 1.0 / m, dtype=gramian.dtype, device=gramian.device)


def test_a_user_method_outside_autograd_is_refused_on_backward_only() -> None:
    jacobian = _jacobian().requires_grad_()
    update = agg.GramianWeightedAggregator(_UserSolver())(jacobian)
    assert torch.allclose(update.detach(), jacobian.detach().mean(dim=0))
    with pytest.raises(NotDifferentiableError, match="GramianWeightedAggregator"):
        update.sum().backward()


def test_a_refused_output_can_be_modified_in_place() -> None:
    jacobian = _jacobian()
    update = agg.UPGrad()(jacobian.clone().requires_grad_())
    update.mul_(2)  # not a view of anything
    assert torch.allclose(update.detach(), 2 * agg.UPGrad()(jacobian))
