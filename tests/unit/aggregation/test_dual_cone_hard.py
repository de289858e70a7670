"""Hard problems, each with its reference answer: singular Gramians without a ridge, tiny
ridges on low-rank Jacobians, nearly parallel or opposite rows, extreme preferences, degenerate
problems and float32 Gramians that are slightly indefinite.

Where the weights are not unique (a singular ``G``) or ill-determined (a tiny ridge), the
projection ``Jᵀv`` is, and it is compared instead.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from jdopt._linalg import normalize
from jdopt.aggregation._dual_cone import project_weights

from ._dual_cone_problems import (
    F64,
    SINGULAR,
    Family,
    N,
    assert_close_to,
    assert_kkt,
    assert_solved,
    duplicated,
    gramian_of,
    jacobian,
    low_rank,
    randn,
    reference,
    upgrad_preferences,
)


def assert_same_projection(weights: Tensor, expected: Tensor, jacobian: Tensor, tol: float):
    """``Jᵀv`` within ``tol`` of ``Jᵀv_expected``, relative to ``‖J‖_F max|v_expected|``."""
    scale = float(torch.linalg.matrix_norm(jacobian)) * float(expected.abs().max())
    error = float(((weights - expected) @ jacobian).abs().max()) / scale
    assert error <= tol, f"projection off by {error:.1e} (relative) > {tol:.0e}"


@pytest.mark.parametrize("family", SINGULAR, ids=lambda f: f.__name__)
@pytest.mark.parametrize("m", [2, 5, 24, 40, 70])
def test_singular_gramians_without_a_ridge_meet_the_kkt_conditions_on_g(
    family: Family, m: int
) -> None:
    """``reg_eps=0``: ``G = J Jᵀ`` itself. The KKT conditions hold on ``G``, and ``Jᵀv`` is
    quadprog's (the weights need not be)."""
    matrix = jacobian(family, m, m)
    gramian, preferences = normalize(matrix @ matrix.T, 0.0), upgrad_preferences(m)
    weights = project_weights(preferences, gramian)
    expected = reference(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    assert_kkt(expected, preferences, gramian)  # (the reference is right too)
    assert_same_projection(weights, expected, matrix, 1e-9)


def test_duplicated_rows_share_their_weight_without_a_ridge() -> None:
    """The weights of a singular ``G`` tend to those of a vanishing ridge: equal on equal rows
    with equal preferences. ``J = [r; r; s]``, ``r = (1, 0)``, ``s = (−3, 1)``, ``u = ½``: with
    ``v₃ = ½`` on its bound, ``rᵀJᵀv = 0`` gives ``v₁ + v₂ = 3/2`` (any split is optimal), and
    the ridge splits it equally."""
    matrix = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-3.0, 1.0]], dtype=F64)
    gramian, preferences = matrix @ matrix.T, torch.full((1, 3), 0.5, dtype=F64)
    weights = project_weights(preferences, gramian)
    expected = torch.tensor([[0.75, 0.75, 0.5]], dtype=F64)
    assert torch.allclose(weights, expected, rtol=1e-6, atol=0)
    assert_same_projection(weights, reference(preferences, gramian), matrix, 1e-9)


@pytest.mark.parametrize("m", [9, 30])
def test_each_group_of_duplicated_rows_shares_its_weight(m: int) -> None:
    """Equally, to the accuracy of the ridge's solve (the ridge alone tells the rows apart)."""
    matrix = jacobian(duplicated, m, m)  # row i repeats row i mod m/3
    gramian = normalize(matrix @ matrix.T, 0.0)
    preferences = torch.full((2, m), 1 / m, dtype=F64)
    preferences[1, ::2] = 0.0
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    groups = torch.arange(m) % (m // 3)
    for r in range(2):
        for group in range(m // 3):
            members = (groups == group) & (preferences[r] == preferences[r, group])
            shared = weights[r, members]
            assert torch.allclose(shared, shared[0].expand_as(shared), rtol=1e-5, atol=0)


@pytest.mark.parametrize("solver", ["native", "quadprog"])  # (any v ≥ u is optimal: OSQP's differ)
def test_a_zero_gramian_gives_the_non_negative_part_of_the_preferences(solver: str) -> None:
    preferences = torch.tensor([[0.5, -1.0, 0.0], [-2.0, 3.0, 1.0]], dtype=F64)
    weights = project_weights(preferences, torch.zeros(3, 3, dtype=F64), solver=solver)
    assert torch.allclose(weights, preferences.clamp_min(0), rtol=0, atol=1e-12)


def test_zero_rows_of_the_jacobian_keep_their_preference() -> None:
    """A zero row conflicts with nothing: its weight is ``max(u_i, 0)``, whatever the others."""
    matrix = jacobian(low_rank, 6, 0)
    matrix[[1, 4]] = 0.0
    preferences = upgrad_preferences(6) + 0.3
    for gramian in [normalize(matrix @ matrix.T, 0.0), gramian_of(matrix)]:
        weights = project_weights(preferences, gramian)
        assert_kkt(weights, preferences, gramian)
        assert torch.allclose(weights[:, [1, 4]], preferences[:, [1, 4]], rtol=1e-9, atol=0)


def _found_low_rank() -> Tensor:
    """A rank-20 Jacobian ``[64, 200]`` on which the solver once failed with a small ridge: it
    raised at 1e-8 and returned NaN at 1e-10 and 1e-12 (pivoting cycled on rounding)."""
    g = torch.Generator().manual_seed(0)
    randn(g, 10, 3), randn(g, 3, 200)  # the draws made before it when it was found
    return randn(g, 64, 20) @ randn(g, 20, 200)


@pytest.mark.parametrize("ridge", [1e-8, 1e-10, 1e-12])
def test_badly_conditioned_gramians_are_solved(ridge: float) -> None:
    """With a ridge of 1e-8 the weights are quadprog's; below, they are ill-determined and the
    projection is compared."""
    matrix = _found_low_rank()
    gramian, preferences = gramian_of(matrix, ridge), upgrad_preferences(64)
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    expected = reference(preferences, gramian)
    if ridge >= 1e-8:
        assert_close_to(weights, expected, 1e-5)
    assert_same_projection(weights, expected, matrix, 1e-8)


@pytest.mark.parametrize(("m", "rank", "seed"), [(10, 3, 2), (40, 12, 0), (64, 20, 3)])
def test_tiny_ridges_on_low_rank_jacobians(m: int, rank: int, seed: int) -> None:
    """(10, 3, 2) once raised: the dual's inverse was inaccurate at condition number ~1e12."""
    g = torch.Generator().manual_seed(seed)
    matrix = randn(g, m, rank) @ randn(g, rank, N)
    gramian, preferences = gramian_of(matrix, 1e-12), upgrad_preferences(m)
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    assert_same_projection(weights, reference(preferences, gramian), matrix, 1e-8)


def test_nearly_parallel_rows_with_a_small_ridge() -> None:
    """The condition number bound from the Cholesky pivots is m times too low here; the dual's
    inaccurate answer once raised. With DualProj's uniform preferences, ``v* = u``."""
    g = torch.Generator().manual_seed(0)
    matrix = randn(g, 1, 34) + 1e-6 * randn(g, 17, 34)
    gramian = gramian_of(matrix, 1e-8)
    preferences = torch.full((1, 17), 1 / 17, dtype=F64)
    weights = project_weights(preferences, gramian)
    assert_solved(weights, preferences, gramian, 1e-9)
    assert torch.allclose(weights, preferences, rtol=1e-9, atol=0)


def test_opposite_duplicated_rows_with_a_small_ridge() -> None:
    """Half the rows d, half −d, an eighth replaced by random rows (UPGrad once raised)."""
    g = torch.Generator().manual_seed(0)
    direction = randn(g, 1, 200)
    matrix = torch.cat([direction.expand(50, 200), -direction.expand(50, 200)]).clone()
    matrix[:12] = randn(g, 12, 200)
    gramian, preferences = gramian_of(matrix, 1e-8), upgrad_preferences(100)
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    rows = [0, 11, 12, 60, 99]
    assert_same_projection(weights[rows], reference(preferences[rows], gramian), matrix, 1e-8)


@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_sign_preferences_with_tiny_positive_parts(seed: int) -> None:
    """Scaled to ``max(u) = 1``, the negative bounds are about −1e6: the complementarity of the
    final check multiplies an iterative solve's tolerance by that slack (raised at m ≥ 100)."""
    g = torch.Generator().manual_seed(seed)
    gramian = gramian_of(randn(g, 100, 300))
    preferences = randn(g, 8, 100)
    preferences[preferences > 0] *= 1e-6
    weights = project_weights(preferences, gramian)
    assert_solved(weights, preferences, gramian, 1e-7)


@pytest.mark.parametrize(("m", "seed"), [(30, 39), (24, 3), (40, 7)])
def test_degenerate_problems_are_solved(m: int, seed: int) -> None:
    """Two equal objectives of a low-rank Jacobian: once more pivoting steps than allowed."""
    g = torch.Generator().manual_seed(seed)
    matrix = randn(g, m, m // 2)
    matrix[1] = matrix[0]
    gramian, preferences = gramian_of(matrix), upgrad_preferences(m)
    weights = project_weights(preferences, gramian)
    assert_solved(weights, preferences, gramian, 1e-6)


@pytest.mark.parametrize("m", [8, 30, 64])
def test_slightly_indefinite_float32_gramians_give_the_exact_projection(m: int) -> None:
    """A float32 Gramian of a rank-3 Jacobian has eigenvalues around −1e-8 of its largest: the
    weights (float32) project as those of the exact float64 Gramian do."""
    matrix = jacobian(low_rank, m, m)
    rough = normalize(matrix.float() @ matrix.float().T, 0.0)
    assert float(torch.linalg.eigvalsh(rough.double())[0]) < 0  # indefinite, by rounding
    weights = project_weights(upgrad_preferences(m).float(), rough)
    assert weights.dtype == torch.float32
    exact = normalize(matrix @ matrix.T, 0.0)
    expected = reference(upgrad_preferences(m), exact)
    assert_same_projection(weights.double(), expected, matrix, 1e-6)
    # In float64, the KKT conditions hold on the float32 Gramian to its rounding.
    weights = project_weights(upgrad_preferences(m), rough.double())
    assert_kkt(weights, upgrad_preferences(m), rough.double(), 1e-6)
