"""UPGrad and DualProj, the methods that project onto the dual cone ``{x : J x ≥ 0}``: without
the ridge (``reg_eps=0``, as TorchJD allows) and under permutations of the rows."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from jdopt.aggregation import DualProj, UPGrad
from tests.utils.device import draw, draw_permutation, seeded

from ._matrices import N, conflicting, duplicated, rank_deficient, with_zero_row, zero

METHODS = [UPGrad, DualProj]
SINGULAR = [rank_deficient, duplicated, with_zero_row, zero]
# The native solver's guarantee: a relative KKT residual of at most 1e-7 (see _dual_cone).
KKT_TOLERANCE = 1e-7


def _rank(m: int, rank: int, seed: int) -> Tensor:
    g = seeded(seed)
    left = draw(m, rank, generator=g, dtype=torch.float64)
    return left @ draw(rank, N, generator=g, dtype=torch.float64)


def _scale(jacobian: Tensor, update: Tensor) -> float:
    """The size of a projection of a combination of the rows with weights of this size."""
    return float(torch.linalg.matrix_norm(jacobian)) * float(update.abs().amax() + 1)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("family", [*SINGULAR, conflicting], ids=lambda f: f.__name__)
@pytest.mark.parametrize("m", [1, 2, 5, 9, 40])
def test_without_ridge_the_update_conflicts_with_no_row(
    method: type, family: Callable[[int], Tensor], m: int
) -> None:
    jacobian = family(m)
    aggregator = method(reg_eps=0.0)
    weights = aggregator.compute_weights(jacobian)
    products = jacobian @ (weights @ jacobian)
    trace = float((jacobian**2).sum())
    assert (products >= -KKT_TOLERANCE * trace * float(weights.abs().sum())).all()


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("family", SINGULAR, ids=lambda f: f.__name__)
@pytest.mark.parametrize("m", [2, 5, 9, 40])
def test_without_ridge_the_update_is_the_reference_solvers(
    method: type, family: Callable[[int], Tensor], m: int
) -> None:
    """The weights of a singular Gramian are not unique; the projection, the update, is."""
    jacobian = family(m)
    update = method(reg_eps=0.0)(jacobian)
    reference = method(reg_eps=0.0, solver="quadprog")(jacobian)
    assert torch.allclose(update, reference, rtol=0, atol=1e-9 * _scale(jacobian, reference))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("reg_eps", [1e-4, 0.0])
@pytest.mark.parametrize(("m", "rank", "seed"), [(9, 5, 0), (9, 5, 1), (12, 3, 2), (40, 10, 3)])
def test_rank_deficient_jacobians_are_permutation_invariant(
    method: type, reg_eps: float, m: int, rank: int, seed: int
) -> None:
    jacobian = _rank(m, rank, seed)
    permutation = draw_permutation(m, generator=seeded(seed))
    aggregator = method(reg_eps=reg_eps)
    update, permuted = aggregator(jacobian), aggregator(jacobian[permutation])
    assert torch.allclose(permuted, update, rtol=1e-7, atol=1e-7 * float(jacobian.abs().max()))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_without_ridge_a_zero_jacobian_gives_the_preference_weights(method: type) -> None:
    pref = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    weights = method(pref_vector=pref, reg_eps=0.0).compute_weights(zero(3))
    assert torch.equal(weights, pref)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize(("m", "rank"), [(9, 2), (40, 5), (40, 20)])
def test_without_ridge_float32_jacobians_are_solved(method: type, m: int, rank: int) -> None:
    """A float32 Gramian of a rank-deficient Jacobian has negative eigenvalues (about -1e-6 of
    its diagonal): the solver takes it with the ridge its rounding calls for."""
    jacobian = _rank(m, rank, 0).float()
    weights = method(reg_eps=0.0).compute_weights(jacobian)
    exact = method(reg_eps=0.0)(jacobian.double())
    products = jacobian.double() @ (weights.double() @ jacobian.double())
    trace = float((jacobian.double() ** 2).sum())
    assert (products >= -1e-5 * trace * float(weights.abs().sum())).all()
    assert torch.allclose((weights @ jacobian).double(), exact, atol=1e-4 * _scale(jacobian, exact))
