"""The contract of ``project_weights``: the KKT conditions, the reference solvers' answers, and
the properties of the problem (homogeneity, zero rows, warm starts, dtypes, shapes)."""

from __future__ import annotations

import pytest
import torch

from jdopt.aggregation import UPGrad
from jdopt.aggregation._dual_cone import SOLVERS, kkt_residual, project_weights
from tests.utils.device import draw, draw_permutation, seeded

from ._dual_cone_problems import (
    F64,
    FAMILIES,
    Family,
    assert_close_to,
    assert_kkt,
    assert_solved,
    conflicting,
    duplicated,
    gramian_of,
    kkt_violation,
    low_rank,
    make,
    mixed_preferences,
    rand,
    randn,
    reference,
    scaled,
    upgrad_preferences,
)


def test_kkt_residual_is_the_largest_relative_violation_of_the_kkt_conditions() -> None:
    """``kkt_residual`` agrees with the conditions written from their definition, on points
    that break each of them (and on zero rows, which solve ``u ≤ 0`` exactly)."""
    g = torch.Generator().manual_seed(3)
    jacobian = randn(g, 7, 4)
    gramian = jacobian @ jacobian.T
    preferences = randn(g, 6, 7)
    weights = preferences + randn(g, 6, 7)  # v < u, Gv < 0 and a gap, in various rows
    weights[4] = 0.0
    preferences[4] = -preferences[4].abs()
    expected = kkt_violation(weights, preferences, gramian)
    assert (expected[:4] > 1e-3).all() and expected[4] == 0
    residual = kkt_residual(weights, preferences, gramian)
    assert torch.allclose(residual, expected, rtol=1e-12, atol=0)
    weights[2, 3] = torch.nan  # a NaN row never passes a check
    assert not kkt_residual(weights, preferences, gramian)[2] <= 1.0


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("m", [1, 2, 5, 24])
@pytest.mark.parametrize("seed", [0, 1])
def test_upgrad_problems_meet_the_kkt_conditions_and_match_quadprog(
    family: Family, m: int, seed: int
) -> None:
    gramian, preferences = make(family, m, seed), upgrad_preferences(m)
    weights = project_weights(preferences, gramian)
    assert_solved(weights, preferences, gramian)
    assert float(kkt_residual(weights, preferences, gramian).max()) <= 1e-7


@pytest.mark.parametrize("family", [rand, conflicting, scaled], ids=lambda f: f.__name__)
def test_upgrad_problems_match_osqp(family: Family) -> None:
    gramian, preferences = make(family, 8, 3), upgrad_preferences(8)
    weights = project_weights(preferences, gramian)
    assert_close_to(weights, reference(preferences, gramian, "osqp"), 1e-5)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("m", [40, 130])
def test_larger_problems_meet_the_kkt_conditions_and_match_quadprog(family: Family, m: int) -> None:
    """Sizes where ADMM, the dual and CG reduced solves may run. The reference solves a few
    rows only (each row is its own problem)."""
    gramian, preferences = make(family, m, 2), upgrad_preferences(m)
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    rows = [0, m // 2, m - 1]
    assert_close_to(weights[rows], reference(preferences[rows], gramian), 1e-5)


@pytest.mark.parametrize("family", [rand, low_rank], ids=lambda f: f.__name__)
def test_problems_of_300_objectives_meet_the_kkt_conditions(family: Family) -> None:
    gramian, preferences = make(family, 300, 0), upgrad_preferences(300)
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    rows = [0, 299]
    assert_close_to(weights[rows], reference(preferences[rows], gramian), 1e-5)


@pytest.mark.parametrize("family", [rand, low_rank, conflicting, duplicated])
@pytest.mark.parametrize("m", [6, 70])
def test_dense_preferences_of_any_sign_match_quadprog(family: Family, m: int) -> None:
    preferences, gramian = mixed_preferences(m, m), make(family, m, 4)
    weights = project_weights(preferences, gramian)
    assert_solved(weights, preferences, gramian, 1e-5)


def test_rows_whose_preferences_are_all_non_positive_get_exactly_zero_weights() -> None:
    gramian = make(rand, 6, 0)
    preferences = torch.cat(
        [upgrad_preferences(6), -upgrad_preferences(6)[:2], torch.zeros(1, 6, dtype=F64)]
    )
    preferences[7, 3] = -5.0
    weights = project_weights(preferences, gramian)
    assert (weights[6:] == 0).all()
    assert_kkt(weights, preferences, gramian)
    assert (kkt_residual(weights, preferences, gramian)[6:] == 0).all()


@pytest.mark.parametrize("factor", [1e-8, 3.0, 1e8])
def test_the_weights_are_positively_homogeneous_in_the_preferences(factor: float) -> None:
    """``v*(c u) = c v*(u)`` for ``c > 0``."""
    gramian = make(conflicting, 10, 0)
    preferences = mixed_preferences(10, 0)
    base = project_weights(preferences, gramian)
    assert_close_to(project_weights(factor * preferences, gramian), factor * base, 1e-9)


def test_a_diagonal_gramian_gives_the_non_negative_part_of_the_preferences() -> None:
    """Orthogonal objectives: the problems separate, ``v*_i = max(u_i, 0)``."""
    gramian = torch.diag(torch.tensor([1.0, 1e-3, 4.0, 0.5], dtype=F64))
    preferences = mixed_preferences(4, 5)
    weights = project_weights(preferences, gramian)
    assert torch.allclose(weights, preferences.clamp_min(0), rtol=1e-12, atol=0)


def test_each_row_is_solved_as_its_own_problem() -> None:
    """Solving rows together or one at a time, or in another order, gives the same answer."""
    gramian, preferences = make(conflicting, 30, 1), mixed_preferences(30, 2)
    together = project_weights(preferences, gramian)
    for row in [0, 3, 5]:
        alone = project_weights(preferences[row : row + 1], gramian)
        assert_close_to(alone, together[row : row + 1], 1e-6)
    order = torch.tensor([5, 2, 0, 4, 1, 3])
    assert_close_to(project_weights(preferences[order], gramian), together[order], 1e-6)


def test_permuting_the_objectives_permutes_the_weights() -> None:
    gramian, preferences = make(rand, 20, 3), upgrad_preferences(20)
    permutation = draw_permutation(20, generator=seeded(0))
    weights = project_weights(preferences, gramian)
    permuted = project_weights(preferences[:, permutation], gramian[permutation][:, permutation])
    assert_close_to(permuted, weights[:, permutation], 1e-6)


@pytest.mark.parametrize("family", [rand, low_rank], ids=lambda f: f.__name__)
@pytest.mark.parametrize("m", [12, 70])
def test_a_warm_start_does_not_change_the_answer(family: Family, m: int) -> None:
    """From the solution, a perturbed one, a nearby problem's, a random point (of any sign)
    or zeros: the same weights, to the solver's tolerance."""
    gramian, preferences = make(family, m, 0), upgrad_preferences(m)
    cold = project_weights(preferences, gramian)
    g = torch.Generator().manual_seed(m)
    nearby = make(family, m, 1) * 0.05 + gramian * 0.95
    starts = [
        cold,
        cold * (1 + 0.1 * randn(g, m, m)),
        project_weights(preferences, nearby),
        1e3 * randn(g, m, m),
        torch.zeros(m, m, dtype=F64),
    ]
    for initial in starts:
        warm = project_weights(preferences, gramian, initial=initial)
        assert_kkt(warm, preferences, gramian)
        assert_close_to(warm, cold, 1e-6)


def test_float32_inputs_give_float32_weights_of_the_float32_problem() -> None:
    gramian, preferences = make(conflicting, 7, 0).float(), upgrad_preferences(7).float()
    weights = project_weights(preferences, gramian)
    assert weights.dtype == torch.float32
    assert weights.shape == (7, 7)
    assert weights.device == gramian.device
    expected = reference(preferences.double(), gramian.double())
    assert_close_to(weights.double(), expected, 1e-6)


@pytest.mark.parametrize(("gramian_dtype", "other"), [(F64, torch.float32), (torch.float32, F64)])
def test_the_weights_have_the_dtype_of_the_gramian(
    gramian_dtype: torch.dtype, other: torch.dtype
) -> None:
    gramian, preferences = make(rand, 5, 0).to(gramian_dtype), upgrad_preferences(5).to(other)
    weights = project_weights(preferences, gramian, initial=preferences)
    assert weights.dtype == gramian_dtype
    expected = reference(preferences.double(), gramian.double())
    assert_close_to(weights.double(), expected, 1e-6)


@pytest.mark.parametrize("k", [1, 3, 11])
def test_the_weights_have_the_shape_of_the_preferences(k: int) -> None:
    gramian = make(conflicting, 5, 0)
    preferences = mixed_preferences(5, k)[:1].expand(k, 5) * torch.arange(1, k + 1).unsqueeze(1)
    weights = project_weights(preferences, gramian)
    assert weights.shape == (k, 5)
    assert_kkt(weights, preferences, gramian)


def test_one_objective_gets_the_positive_part_of_its_preference() -> None:
    gramian = torch.tensor([[2.0]], dtype=F64)
    preferences = torch.tensor([[0.5], [-1.0], [0.0], [3.0]], dtype=F64)
    assert project_weights(preferences, gramian).tolist() == [[0.5], [0.0], [0.0], [3.0]]


def test_two_opposite_objectives_get_the_weights_derived_by_hand() -> None:
    """``g₂ = −g₁``: ``G = a [[1, −1], [−1, 1]] + εI``. For ``u = e₁/2`` the first bound is
    active and the second weight is free: ``(Gv)₂ = 0`` gives ``v₂ = a v₁ / (a + ε)``."""
    row = torch.tensor([[1.0, 2.0, -1.0]], dtype=F64)
    gramian = gramian_of(torch.cat([row, -row]))  # a = 1/2, ε = 1e-4
    a, eps = 0.5, 1e-4
    preferences = upgrad_preferences(2)
    weights = project_weights(preferences, gramian)
    other = a * 0.5 / (a + eps)
    expected = torch.tensor([[0.5, other], [other, 0.5]], dtype=F64)
    assert torch.allclose(weights, expected, rtol=1e-9, atol=0)
    assert_solved(weights, preferences, gramian, 1e-9)


def test_empty_problems_give_empty_weights() -> None:
    gramian = make(rand, 3, 0)
    assert project_weights(torch.zeros(0, 3, dtype=F64), gramian).shape == (0, 3)
    assert project_weights(torch.zeros(2, 0), torch.zeros(0, 0)).shape == (2, 0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_meets_the_kkt_conditions(solver: str) -> None:
    gramian, preferences = make(conflicting, 6, 1), upgrad_preferences(6)
    weights = project_weights(preferences, gramian, solver=solver)
    assert weights.dtype == F64 and weights.shape == (6, 6)
    assert_kkt(weights, preferences, gramian, 1e-8)


@pytest.mark.parametrize("m", [8, 64])
def test_weights_are_normal_tensors_that_autograd_may_save(m: int) -> None:
    """Not inference tensors, which autograd refuses to save for backward."""
    generator = torch.Generator().manual_seed(m)
    jacobian = draw(m, 30, generator=generator, dtype=F64).requires_grad_()
    weights = project_weights(upgrad_preferences(m), gramian_of(jacobian.detach()))
    assert not weights.is_inference()
    (weights.sum(dim=0) @ jacobian).square().sum().backward()  # saves the weights
    assert jacobian.grad is not None and torch.isfinite(jacobian.grad).all()
    assert not UPGrad()(jacobian).is_inference()
