"""The solver's pure linear-algebra helpers, each against an obviously correct reference:
reduced linear solves against ``torch.linalg.solve`` row by row, the order of ``free_first``
against a stable argsort, FISTA's step bound against ``eigvalsh``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from jdopt.aggregation._dual_cone import SolverOptions
from jdopt.aggregation._dual_cone._fista import largest_eigenvalue
from jdopt.aggregation._dual_cone._linear import (
    free_first,
    solve_cg,
    solve_direct,
    solve_masked,
    solve_refined,
)
from tests.utils.device import draw_uniform, seeded

from ._dual_cone_problems import (
    F64,
    N,
    randn,
)

OPTIONS = SolverOptions()


def _system(m: int, k: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """An SPD ``M``, free sets (one row all free, one none), targets and fixed values."""
    g = torch.Generator().manual_seed(seed)
    jacobian = randn(g, m, N)
    free = draw_uniform(k, m, generator=g) < 0.5
    free[0], free[1] = True, False
    return jacobian @ jacobian.T, free, randn(g, k, m), randn(g, k, m)


def _row_by_row(matrix: Tensor, free: Tensor, target: Tensor, fixed: Tensor) -> Tensor:
    expected = fixed.clone()
    for row in range(len(free)):
        f, a = free[row], ~free[row]
        rhs = target[row, f] - matrix[f][:, a] @ fixed[row, a]
        expected[row, f] = torch.linalg.solve(matrix[f][:, f], rhs)
    return expected


def _padded(matrix: Tensor) -> Tensor:
    return torch.block_diag(matrix, torch.eye(len(matrix), dtype=matrix.dtype))


def test_exact_reduced_solves_match_a_row_by_row_solve() -> None:
    matrix, free, target, fixed = _system(9, 7, 0)
    expected = _row_by_row(matrix, free, target, fixed)
    direct = solve_direct(_padded(matrix), free, target, fixed)
    assert torch.allclose(direct, expected, rtol=0, atol=1e-10)
    assert torch.allclose(solve_masked(matrix, free, target, fixed), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("solve", ["direct", "masked"])
def test_exact_reduced_solves_refuse_a_singular_system(solve: str) -> None:
    matrix, free = torch.ones(3, 3, dtype=F64), torch.tensor([[True, True, False]])
    target, fixed = torch.ones(1, 3, dtype=F64), torch.zeros(1, 3, dtype=F64)
    with pytest.raises(RuntimeError, match="not numerically positive definite"):
        if solve == "direct":
            solve_direct(_padded(matrix), free, target, fixed)
        else:
            solve_masked(matrix, free, target, fixed)


@pytest.mark.parametrize("refined", [False, True])
def test_cg_reduced_solves_match_a_row_by_row_solve(refined: bool) -> None:
    """To the tolerance asked for, float64 CG or float32 CG refined on float64 residuals."""
    matrix, free, target, fixed = _system(30, 6, 1)
    matrix = matrix / matrix.diagonal().amax() + 0.1 * torch.eye(30, dtype=F64)
    expected = _row_by_row(matrix, free, target, fixed)
    tolerance = torch.full((6, 1), 1e-11, dtype=F64)
    start = torch.where(free, 0.0, fixed)
    if refined:
        x, converged = solve_refined(matrix, start, target, free, tolerance, 200, OPTIONS)
    else:
        x, converged = solve_cg(matrix, start, target, free, tolerance, 200)
    assert converged.all()
    assert torch.allclose(x, expected, rtol=0, atol=1e-9)


def test_cg_reports_a_matrix_that_is_not_positive_definite_as_unsolved() -> None:
    """The overflowing step of a negative curvature once ended as NaN, counted converged."""
    matrix = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64)  # eigenvalues 3 and −1
    x, target = torch.zeros(1, 2, dtype=F64), torch.tensor([[1.0, -1.0]], dtype=F64)
    free, tolerance = torch.ones(1, 2, dtype=torch.bool), torch.full((1, 1), 1e-12, dtype=F64)
    _, converged = solve_cg(matrix, x, target, free, tolerance, 20)
    assert not converged.any()


def test_free_first_is_a_stable_argsort_of_the_fixed_mask() -> None:
    free = draw_uniform(20, 13, generator=seeded(0)) < 0.4
    free[0], free[1] = True, False
    expected = torch.argsort((~free).to(torch.int8), dim=1, stable=True)
    for size in [13, 5]:
        assert torch.equal(free_first(free, size), expected[:, :size])


@pytest.mark.parametrize("m", [1, 5, 60, 300])
@pytest.mark.parametrize("squaring_size", [0, 10**9])
def test_fistas_step_bound_is_above_the_largest_eigenvalue(m: int, squaring_size: int) -> None:
    """A true bound, at most ``m^(1/16)`` times too large, from squarings; power iteration
    plus a margin otherwise."""
    g = torch.Generator().manual_seed(m)
    for jacobian in (randn(g, m, N), randn(g, m, 3) @ randn(g, 3, N), torch.ones(m, N)):
        matrix = jacobian.to(F64) @ jacobian.to(F64).T + 1e-4 * torch.eye(m, dtype=F64)
        largest = float(torch.linalg.eigvalsh(matrix)[-1])
        bound = largest_eigenvalue(matrix, squaring_size)
        assert largest * (1 - 1e-9) <= bound <= 1.5 * largest
        if squaring_size > m:
            assert bound <= m ** (1 / 16) * largest * (1 + 1e-9)
