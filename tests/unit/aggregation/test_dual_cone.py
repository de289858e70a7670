"""The native dual-cone solver against the definition and against the qpsolvers reference.

``v* = argmin_v vᵀGv s.t. v ≥ u`` for each row ``u``; KKT: ``v ≥ u``, ``μ = 2Gv ≥ 0``,
``μ ⊙ (v − u) = 0``. Gramians are prepared as UPGrad does (trace-normalised, ``+ 1e-4 I``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from jdopt._linalg import normalize, regularize
from jdopt.aggregation import (
    UPGrad,
    _dual_cone,
    _dual_cone_box,
    _dual_cone_linear,
    _dual_cone_pivot,
    _dual_cone_splitting,
)
from jdopt.aggregation._dual_cone import SOLVERS, kkt_residual, project_weights
from jdopt.aggregation._dual_cone_active import unsolved
from jdopt.aggregation._dual_cone_box import (
    BoxQP,
    accelerated_gradient,
    largest_eigenvalue,
    swaps,
)
from jdopt.aggregation._dual_cone_linear import pad_with_identity, solve_cg, solve_direct
from jdopt.aggregation._dual_cone_small import solve_masked
from jdopt.aggregation._dual_cone_splitting import splitting

F64 = torch.float64
N = 60  # columns of the Jacobians


def _randn(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=generator, dtype=F64)


def rand(m: int, g: torch.Generator) -> Tensor:
    return _randn(g, m, N)


def low_rank(m: int, g: torch.Generator) -> Tensor:
    return _randn(g, m, 3) @ _randn(g, 3, N)


def rank_one(m: int, g: torch.Generator) -> Tensor:
    return _randn(g, m, 1) @ _randn(g, 1, N)


def duplicated(m: int, g: torch.Generator) -> Tensor:
    distinct = _randn(g, max(1, m // 3), N)
    return distinct[torch.arange(m) % distinct.shape[0]]


def conflicting(m: int, g: torch.Generator) -> Tensor:
    """Rows along ±d (alternating), plus noise: most pairwise cosines are strongly negative."""
    signs = torch.tensor([(-1.0) ** i for i in range(m)], dtype=F64).unsqueeze(1)
    return 5 * signs * _randn(g, m, 1).abs() * _randn(g, 1, N) + 0.3 * _randn(g, m, N)


def scaled(m: int, g: torch.Generator) -> Tensor:
    """Row norms spread over 8 orders of magnitude."""
    return _randn(g, m, N) * torch.logspace(-4, 4, m, dtype=F64).unsqueeze(1)


def huge(m: int, g: torch.Generator) -> Tensor:
    return 1e12 * conflicting(m, g)


def tiny(m: int, g: torch.Generator) -> Tensor:
    return 1e-12 * conflicting(m, g)


FAMILIES = [rand, low_rank, rank_one, duplicated, conflicting, scaled, huge, tiny]


def gramian_of(jacobian: Tensor) -> Tensor:
    """The Gramian as UPGrad hands it to the solver: normalised by its trace, plus 1e-4 I."""
    return regularize(normalize(jacobian @ jacobian.T, 1e-4), 1e-4)


def make(family: Callable[[int, torch.Generator], Tensor], m: int, seed: int) -> Tensor:
    return gramian_of(family(m, torch.Generator().manual_seed(seed)))


def without_splitting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sends every size above SMALL_MAX_SIZE to the pivoting path, as if ADMM never ran."""
    monkeypatch.setattr(_dual_cone_pivot, "_SPLITTING_MAX_SIZE", 0)


def assert_kkt(weights: Tensor, preferences: Tensor, gramian: Tensor, tol: float = 1e-6) -> None:
    """Checks the KKT conditions, from their definition, relative to the solution's size."""
    size = weights.abs().amax(dim=1, keepdim=True)
    norm = torch.linalg.matrix_norm(gramian, ord=2)
    multiplier = 2 * weights @ gramian
    assert (weights >= preferences - tol * size).all(), "v ≥ u is violated"
    assert (multiplier >= -tol * norm * size).all(), "μ = 2Gv ≥ 0 is violated"
    gap = (multiplier * (weights - preferences)).abs()
    assert (gap <= tol * norm * size**2).all(), "μ ⊙ (v − u) = 0 is violated"


def assert_close_to(weights: Tensor, reference: Tensor, tol: float = 1e-5) -> None:
    scale = reference.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
    assert ((weights - reference).abs() <= tol * scale).all()


def upgrad_preferences(m: int) -> Tensor:
    return torch.eye(m, dtype=F64) / m


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("m", [1, 2, 5, 24])
@pytest.mark.parametrize("seed", [0, 1])
def test_upgrad_problems_match_quadprog(family: Callable, m: int, seed: int) -> None:
    gramian, preferences = make(family, m, seed), upgrad_preferences(m)
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


@pytest.mark.parametrize("family", [rand, conflicting, scaled])
def test_upgrad_problems_match_osqp(family: Callable) -> None:
    gramian, preferences = make(family, 8, 3), upgrad_preferences(8)
    weights = project_weights(preferences, gramian)
    assert_close_to(weights, project_weights(preferences, gramian, solver="osqp"))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("m", [70, 160])
@pytest.mark.parametrize("admm", [True, False])
def test_larger_problems_satisfy_kkt(
    family: Callable, m: int, admm: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sizes where ADMM solves, and where pivoting solves its reduced systems by CG."""
    if not admm:
        without_splitting(monkeypatch)
    gramian, preferences = make(family, m, 0), upgrad_preferences(m)
    assert_kkt(project_weights(preferences, gramian), preferences, gramian)


def test_larger_problems_match_quadprog() -> None:
    for family in [rand, low_rank]:
        gramian, preferences = make(family, 90, 2), upgrad_preferences(90)
        weights = project_weights(preferences, gramian)
        assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


@pytest.mark.parametrize("family", [rand, low_rank, conflicting, duplicated])
@pytest.mark.parametrize("m", [6, 70])
def test_dense_preferences_of_any_sign(family: Callable, m: int) -> None:
    g = torch.Generator().manual_seed(m)
    preferences = torch.cat(
        [
            torch.randn(3, m, generator=g, dtype=F64),  # mixed signs (DualProj-like and worse)
            torch.rand(1, m, generator=g, dtype=F64) * (torch.arange(m) % 2),  # zeros and > 0
            -torch.rand(1, m, generator=g, dtype=F64),  # all negative: v* = 0
            torch.zeros(1, m, dtype=F64),  # v* = 0
        ]
    )
    gramian = make(family, m, 4)
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    assert (weights[-2:] == 0).all()
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


def test_positive_homogeneity() -> None:
    gramian = make(conflicting, 10, 0)
    preferences = torch.randn(4, 10, generator=torch.Generator().manual_seed(0), dtype=F64)
    base = project_weights(preferences, gramian)
    for factor in [1e-8, 3.0, 1e8]:
        assert_close_to(project_weights(factor * preferences, gramian), factor * base, 1e-9)


@pytest.mark.parametrize("family", [rand, low_rank])
@pytest.mark.parametrize("m", [12, 120])
def test_warm_start_gives_the_same_answer(family: Callable, m: int) -> None:
    gramian, preferences = make(family, m, 0), upgrad_preferences(m)
    cold = project_weights(preferences, gramian)
    nearby = make(family, m, 1) * 0.05 + gramian * 0.95
    garbage = torch.randn(m, m, generator=torch.Generator().manual_seed(0), dtype=F64)
    for initial in [cold, project_weights(preferences, nearby), garbage, torch.zeros(m, m)]:
        warm = project_weights(preferences, gramian, initial=initial.to(F64))
        assert_close_to(warm, cold, 1e-6)  # the same answer, to the solver's accuracy


def test_float32_in_float32_out() -> None:
    gramian = make(conflicting, 7, 0)
    preferences = upgrad_preferences(7)
    weights = project_weights(preferences.float(), gramian.float())
    assert weights.dtype == torch.float32
    assert weights.shape == (7, 7)
    assert weights.device == gramian.device
    expected = project_weights(preferences, gramian.float().double())
    assert_close_to(weights.double(), expected, 1e-6)


def test_float64_gramian_with_float32_preferences() -> None:
    gramian = make(rand, 5, 0)
    weights = project_weights(upgrad_preferences(5).float(), gramian)
    assert weights.dtype == F64
    assert_close_to(weights, project_weights(upgrad_preferences(5), gramian), 1e-7)


def test_one_objective() -> None:
    gramian = torch.tensor([[2.0]], dtype=F64)
    preferences = torch.tensor([[0.5], [-1.0], [0.0]], dtype=F64)
    assert project_weights(preferences, gramian).tolist() == [[0.5], [0.0], [0.0]]


def test_two_opposite_objectives() -> None:
    """g₂ = −g₁: the dual cone is the hyperplane g₁ᵀx = 0, only the ridge keeps weights finite."""
    row = torch.tensor([[1.0, 2.0, -1.0]], dtype=F64)
    gramian = gramian_of(torch.cat([row, -row]))
    preferences = upgrad_preferences(2)
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


def test_no_problem_to_solve() -> None:
    gramian = make(rand, 3, 0)
    assert project_weights(torch.zeros(0, 3, dtype=F64), gramian).shape == (0, 3)
    assert project_weights(torch.zeros(2, 0), torch.zeros(0, 0)).shape == (2, 0)
    assert (project_weights(-torch.ones(2, 3, dtype=F64), gramian) == 0).all()


def with_zero_rows(m: int, g: torch.Generator) -> Tensor:
    jacobian = rand(m, g)
    jacobian[:: max(2, m // 4)] = 0.0
    return jacobian


SINGULAR = [low_rank, rank_one, duplicated, with_zero_rows]


@pytest.mark.parametrize("family", SINGULAR)
@pytest.mark.parametrize("m", [2, 5, 24, 40, 70])
def test_singular_gramians_are_solved_without_a_ridge(family: Callable, m: int) -> None:
    """``reg_eps=0``: G = J Jᵀ itself, singular. The KKT conditions hold on G, and ``Jᵀv``
    (unique, unlike ``v``) is the reference solver's."""
    jacobian = family(m, torch.Generator().manual_seed(m))
    gramian, preferences = normalize(jacobian @ jacobian.T, 0.0), upgrad_preferences(m)
    weights = project_weights(preferences, gramian)
    reference = project_weights(preferences, gramian, solver="quadprog")
    assert_kkt(weights, preferences, gramian, tol=1e-7)
    assert_kkt(reference, preferences, gramian, tol=1e-7)
    scale = float(torch.linalg.matrix_norm(jacobian)) * float(reference.abs().max())
    assert float(((weights - reference) @ jacobian).abs().max()) <= 1e-9 * scale


def test_duplicated_rows_share_their_weight_without_a_ridge() -> None:
    """The weights of a singular G tend to those of a vanishing ridge: equal on equal rows."""
    row = torch.tensor([[1.0, 2.0, -1.0]], dtype=F64)
    jacobian = torch.cat([row, row, -2 * row, torch.tensor([[0.0, 1.0, 2.0]], dtype=F64)])
    gramian, preferences = jacobian @ jacobian.T, torch.full((1, 4), 0.25, dtype=F64)
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian, tol=1e-9)
    assert weights[0, 0] == pytest.approx(float(weights[0, 1]), rel=1e-9)


@pytest.mark.parametrize("solver", ["native", "quadprog"])  # (any v ≥ u is optimal: OSQP's differ)
def test_a_zero_gramian_gives_the_non_negative_part_of_the_preferences(solver: str) -> None:
    preferences = torch.tensor([[0.5, -1.0, 0.0], [-2.0, 3.0, 1.0]], dtype=F64)
    weights = project_weights(preferences, torch.zeros(3, 3, dtype=F64), solver=solver)
    assert torch.allclose(weights, preferences.clamp_min(0), atol=1e-9)


def test_the_reference_refuses_an_indefinite_gramian() -> None:
    with pytest.raises(ValueError, match="positive semi-definite"):
        project_weights(torch.eye(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]), solver="quadprog")


@pytest.mark.parametrize("solver", SOLVERS)
def test_solvers_are_selectable(solver: str) -> None:
    gramian, preferences = make(conflicting, 6, 1), upgrad_preferences(6)
    weights = project_weights(preferences, gramian, solver=solver)
    assert_kkt(weights, preferences, gramian)


@pytest.mark.parametrize(
    ("preferences", "gramian", "initial", "match"),
    [
        (torch.eye(3), torch.ones(3, 2), None, r"square matrix \[m, m\]\. Found shape \(3, 2\)"),
        (torch.eye(3), torch.ones(3), None, r"square matrix \[m, m\]\. Found shape \(3,\)"),
        (torch.ones(2, 4), torch.eye(3), None, r"shape \[k, 3\].*Found shape \(2, 4\)"),
        (torch.ones(3), torch.eye(3), None, r"shape \[k, 3\].*Found shape \(3,\)"),
        (torch.eye(3), torch.eye(3), torch.ones(3, 2), r"shape of `preferences`, \(3, 3\)"),
        (torch.eye(2), -torch.eye(2), None, "positive semi-definite"),
        (torch.eye(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]), None, "positive semi-definite"),
        (torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), None, "positive semi-definite"),
        (torch.tensor([[1.0, torch.nan]]), torch.eye(2), None, "`preferences` should contain"),
        (torch.tensor([[torch.inf, 0.0]]), torch.eye(2), None, "`preferences` should contain"),
        (torch.tensor([[1.0, -torch.inf]]), torch.eye(2), None, "`preferences` should contain"),
        (torch.eye(2), torch.eye(2), torch.full((2, 2), torch.nan), "`initial` should contain"),
    ],
)
def test_invalid_inputs(preferences: Tensor, gramian: Tensor, initial: Tensor | None, match: str):
    with pytest.raises(ValueError, match=match):
        project_weights(preferences, gramian, initial=initial)


def test_unknown_solver() -> None:
    with pytest.raises(ValueError, match="`solver` should be one of"):
        project_weights(torch.eye(2), torch.eye(2), solver="cvxpy")


def _gives_up(qp, *_, **__):
    x = qp.lower.clamp_min(0)
    return x, x @ qp.matrix, False


@pytest.mark.parametrize(("pivoting", "m"), [("block_pivoting", 40), ("pivot_small", 6)])
def test_the_active_set_method_finishes_what_pivoting_leaves(
    pivoting: str, m: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_splitting(monkeypatch)
    gramian, preferences = make(conflicting, m, 0), upgrad_preferences(m)
    reference = project_weights(preferences, gramian, solver="quadprog")
    monkeypatch.setattr(_dual_cone_pivot, pivoting, _gives_up)
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    assert_close_to(weights, reference)


@pytest.mark.parametrize(("pivoting", "m"), [("block_pivoting", 40), ("pivot_small", 6)])
def test_raises_instead_of_returning_inaccurate_weights(
    pivoting: str, m: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_splitting(monkeypatch)
    monkeypatch.setattr(_dual_cone_pivot, pivoting, _gives_up)
    monkeypatch.setattr(
        _dual_cone_pivot, "active_set", lambda qp, x, *_, **__: (x, x @ qp.matrix, None)
    )
    gramian, preferences = make(conflicting, m, 0), upgrad_preferences(m)
    with pytest.raises(RuntimeError, match=r"KKT residual of .* only"):
        project_weights(preferences, gramian)


def test_nan_weights_are_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a NaN KKT residual once passed the accuracy check."""
    monkeypatch.setattr(_dual_cone_pivot, "pivot_small", _gives_up)
    monkeypatch.setattr(
        _dual_cone_pivot, "active_set", lambda qp, x, *_, **__: (x * torch.nan, x * torch.nan, None)
    )
    monkeypatch.setattr(_dual_cone, "polish", lambda qp, x: x)  # the last resort keeps the NaN
    gramian, preferences = make(conflicting, 6, 0), upgrad_preferences(6)
    with pytest.raises(RuntimeError, match=r"KKT residual of nan only"):
        project_weights(preferences, gramian)


def test_the_last_resort_does_not_turn_nan_into_accepted_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its exact solves start from the NaN rows' (empty) free sets: the answer it makes of them
    must still pass the final check, which here it cannot."""
    monkeypatch.setattr(_dual_cone_pivot, "pivot_small", _gives_up)
    monkeypatch.setattr(
        _dual_cone_pivot, "active_set", lambda qp, x, *_, **__: (x * torch.nan, x * torch.nan, None)
    )
    gramian, preferences = make(conflicting, 6, 0), upgrad_preferences(6)
    with pytest.raises(RuntimeError, match=r"KKT residual of \S+ only"):
        project_weights(preferences, gramian)


@pytest.mark.parametrize("solve", ["direct", "masked"])
def test_exact_reduced_solves_refuse_a_singular_system(solve: str) -> None:
    matrix, free = torch.ones(3, 3, dtype=F64), torch.tensor([[True, True, False]])
    target, fixed = torch.ones(1, 3, dtype=F64), torch.zeros(1, 3, dtype=F64)
    with pytest.raises(RuntimeError, match="not numerically positive definite"):
        if solve == "direct":
            solve_direct(pad_with_identity(matrix), free, target, fixed)
        else:
            solve_masked(matrix, torch.eye(3, dtype=F64), free, target, fixed)


def test_exact_reduced_solves_match_a_row_by_row_solve() -> None:
    g = torch.Generator().manual_seed(0)
    jacobian = rand(9, g)
    matrix = jacobian @ jacobian.T
    free = torch.rand(7, 9, generator=g) < 0.5
    free[0], free[1] = True, False  # all free, none free
    target, fixed = _randn(g, 7, 9), _randn(g, 7, 9)
    direct = solve_direct(pad_with_identity(matrix), free, target, fixed)
    masked = solve_masked(matrix, torch.eye(9, dtype=F64), free, target, fixed)
    for row in range(7):
        f, a = free[row], ~free[row]
        expected = fixed[row].clone()
        rhs = target[row, f] - matrix[f][:, a] @ fixed[row, a]
        expected[f] = torch.linalg.solve(matrix[f][:, f], rhs)
        assert torch.allclose(direct[row], expected, atol=1e-10)
        assert torch.allclose(masked[row], expected, atol=1e-10)


@pytest.mark.parametrize("m", [1, 5, 60, 300])
def test_the_step_size_bound_is_above_the_largest_eigenvalue(m: int) -> None:
    g = torch.Generator().manual_seed(m)
    for jacobian in (rand(m, g), low_rank(m, g), torch.ones(m, N, dtype=F64)):
        matrix = jacobian @ jacobian.T + 1e-4 * torch.eye(m, dtype=F64)
        largest = float(torch.linalg.eigvalsh(matrix)[-1])
        bound = largest_eigenvalue(matrix)
        assert largest * (1 - 1e-9) <= bound <= 1.5 * largest


@pytest.mark.parametrize("family", [rand, low_rank])
def test_a_wrong_float32_guess_only_costs_time(
    family: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The float64 pivoting decides: a useless float32 guess still gives the exact answer."""
    without_splitting(monkeypatch)
    gramian, preferences = make(family, 160, 0), upgrad_preferences(160)
    expected = project_weights(preferences, gramian)
    monkeypatch.setattr(_dual_cone_pivot, "_rough_guess", lambda qp, x: (x, torch.ones_like(x) > 0))
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    assert_close_to(weights, expected, 1e-6)


def test_a_failing_float32_pivoting_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A float32 reduced system that is not positive definite: the float64 pivoting takes over."""
    without_splitting(monkeypatch)
    original = _dual_cone_pivot.block_pivoting

    def fails_in_float32(qp, x, active, **kwargs):
        if qp.matrix.dtype == torch.float32:
            raise RuntimeError("not numerically positive definite")
        return original(qp, x, active, **kwargs)

    monkeypatch.setattr(_dual_cone_pivot, "block_pivoting", fails_in_float32)
    gramian, preferences = make(conflicting, 160, 0), upgrad_preferences(160)
    assert_kkt(project_weights(preferences, gramian), preferences, gramian)


def test_stalled_refinement_falls_back_to_float64_cg(monkeypatch: pytest.MonkeyPatch) -> None:
    without_splitting(monkeypatch)
    monkeypatch.setattr(_dual_cone_linear, "_REFINEMENTS", 1)
    gramian, preferences = make(rand, 200, 0), upgrad_preferences(200)
    assert_kkt(project_weights(preferences, gramian), preferences, gramian)


def test_fista_alone_converges_to_the_projection() -> None:
    """FISTA is only a guess; given enough steps it reaches the solution."""
    gramian, preferences = make(rand, 12, 0), upgrad_preferences(12)
    qp = BoxQP(gramian, torch.zeros_like(preferences), preferences)
    guess = accelerated_gradient(qp, preferences.clone(), 3000)
    assert_kkt(guess, preferences, gramian, tol=1e-9)
    assert torch.allclose(guess, project_weights(preferences, gramian), atol=1e-9)


def test_restarted_fista_stops_once_its_active_set_settles(monkeypatch) -> None:
    gramian, preferences = make(rand, 40, 0), upgrad_preferences(40)
    qp = BoxQP(gramian, torch.zeros_like(preferences), preferences)
    products = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **k: products.append(1) or real_mm(*a, **k))
    guess = accelerated_gradient(qp, preferences.clone(), 10_000, period=10, tolerance=1e-8)
    assert 20 <= len(products) < 10_000
    exact = project_weights(preferences, gramian)
    wrong = (guess <= preferences + 1e-8) ^ (exact <= preferences + 1e-12)
    assert int(wrong.sum()) <= 2  # pivoting fixes the few coordinates still undecided


@pytest.mark.parametrize(("m", "seed"), [(30, 39), (24, 3), (40, 7)])
def test_degenerate_problems_get_enough_pivoting_steps(m: int, seed: int) -> None:
    """Regression: duplicated objectives of a low-rank Jacobian once needed more than the
    50 + m pivoting steps the solver allowed (m = 30, seed 39 took 82)."""
    g = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(m, m // 2, generator=g, dtype=F64)
    jacobian[1] = jacobian[0]
    gramian, preferences = gramian_of(jacobian), upgrad_preferences(m)
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    reference = project_weights(preferences, gramian, solver="quadprog")
    assert torch.allclose(weights, reference, atol=1e-6 * float(reference.abs().max()))


def _found_low_rank() -> Tensor:
    """A rank-20 Jacobian ``[64, 200]`` on which the solver once failed with a small ridge: it
    raised at 1e-8 and returned NaN at 1e-10 and 1e-12 (pivoting cycled on rounding)."""
    g = torch.Generator().manual_seed(0)
    _randn(g, 10, 3), _randn(g, 3, 200)  # the draws made before it when it was found
    return _randn(g, 64, 20) @ _randn(g, 20, 200)


@pytest.mark.parametrize("ridge", [1e-8, 1e-10, 1e-12])
def test_badly_conditioned_gramians_are_solved(ridge: float) -> None:
    jacobian = _found_low_rank()
    gramian = regularize(normalize(jacobian @ jacobian.T, 1e-4), ridge)
    preferences = upgrad_preferences(64)
    weights = project_weights(preferences, gramian)
    assert torch.isfinite(weights).all()
    assert_kkt(weights, preferences, gramian)
    if ridge >= 1e-8:  # beyond, the weights are ill-determined: only the KKT conditions hold
        assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


@pytest.mark.parametrize(("m", "rank", "seed"), [(10, 3, 2), (40, 12, 0), (64, 20, 3)])
def test_tiny_ridges_on_low_rank_jacobians(m: int, rank: int, seed: int) -> None:
    """(10, 3, 2) once raised: the dual's inverse was inaccurate at condition number ~1e12."""
    g = torch.Generator().manual_seed(seed)
    jacobian = _randn(g, m, rank) @ _randn(g, rank, N)
    gramian = regularize(normalize(jacobian @ jacobian.T, 1e-4), 1e-12)
    preferences = upgrad_preferences(m)
    assert_kkt(project_weights(preferences, gramian), preferences, gramian)


def test_cg_reports_a_matrix_that_is_not_positive_definite() -> None:
    """Regression: the overflowing step of a negative curvature ended as NaN, counted converged."""
    matrix = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64)  # eigenvalues 3 and -1
    x, target = torch.zeros(1, 2, dtype=F64), torch.tensor([[1.0, -1.0]], dtype=F64)
    free, tolerance = torch.ones(1, 2, dtype=torch.bool), torch.full((1, 1), 1e-12, dtype=F64)
    _, converged = solve_cg(matrix, x, target, free, tolerance, 20)
    assert not converged.any()


def test_rows_that_cg_cannot_solve_are_solved_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    without_splitting(monkeypatch)

    def never_converges(matrix, x, target, free, tolerance, tight):
        return x, torch.zeros(x.shape[0], dtype=torch.bool)

    gramian, preferences = make(rand, 200, 0), upgrad_preferences(200)
    expected = project_weights(preferences, gramian)
    monkeypatch.setattr(_dual_cone_box, "_solve_iterative", never_converges)
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    assert_close_to(weights, expected, 1e-6)


def test_nearly_parallel_rows_with_a_small_ridge() -> None:
    """Regression: the condition number looked small enough for the dual (its bound from the
    Cholesky pivots is m times too low here), whose inaccurate answer then raised; the primal
    is now solved when the dual's answer fails the check."""
    g = torch.Generator().manual_seed(0)
    jacobian = _randn(g, 1, 34) + 1e-6 * _randn(g, 17, 34)
    gramian = regularize(normalize(jacobian @ jacobian.T, 1e-4), 1e-8)
    preferences = torch.full((1, 17), 1 / 17, dtype=F64)  # DualProj's; here v* = u
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian)
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


def test_opposite_duplicated_rows_with_a_small_ridge() -> None:
    """Regression: half the rows d, half -d, an eighth replaced by random rows (UPGrad raised)."""
    g = torch.Generator().manual_seed(0)
    direction = _randn(g, 1, 200)
    jacobian = torch.cat([direction.expand(50, 200), -direction.expand(50, 200)]).clone()
    jacobian[:12] = _randn(g, 12, 200)
    gramian = regularize(normalize(jacobian @ jacobian.T, 1e-4), 1e-8)
    preferences = upgrad_preferences(100)
    assert_kkt(project_weights(preferences, gramian), preferences, gramian)


def test_a_row_that_stops_improving_is_left_to_the_sure_finish() -> None:
    broken = torch.tensor([[True, True, False], [True, False, False]])
    count, exact = broken.sum(dim=1), torch.tensor([True, True])
    best, chances = torch.tensor([1, 2]), torch.tensor([0, 0])  # row 0: no new low, no chance
    swap, best, chances, stuck = swaps(
        broken, count, exact, best, chances, torch.zeros(2, dtype=torch.bool)
    )
    assert stuck.tolist() == [True, False]
    assert swap.tolist() == [[False, False, False], [True, False, False]]
    assert best.tolist() == [1, 1]


def _scaled_problem(family: Callable, m: int) -> tuple[BoxQP, Tensor, Tensor, Tensor]:
    """UPGrad's problems for ``family`` as the solver poses them (Jacobi-scaled primal).

    Returns the problem, the preferences, the Gramian and ``√diag(G)`` (``v = x / √diag``).
    """
    gramian, preferences = make(family, m, 0), upgrad_preferences(m)
    root = gramian.diagonal().sqrt()
    scaled = gramian / root.unsqueeze(1) / root.unsqueeze(0)
    qp = BoxQP(scaled, torch.zeros_like(preferences), preferences * root)
    return qp, preferences, gramian, root


@pytest.mark.parametrize("family", [rand, low_rank, conflicting, scaled])
def test_admm_alone_reaches_the_projection(
    family: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given enough steps (and patience with the slow rows, which the solver leaves to
    pivoting), even on the primal of low-rank Gramians (the solver poses their dual)."""
    monkeypatch.setattr(_dual_cone_splitting, "_PATIENCE", 10**6)
    qp, preferences, gramian, root = _scaled_problem(family, 48)
    x, solved = splitting(qp, None, tolerance=1e-9, max_iter=3000)
    assert solved.all()
    weights = x / root
    assert_kkt(weights, preferences, gramian, tol=1e-7)
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"), 1e-6)


def test_admm_from_the_solution_stops_at_its_first_check() -> None:
    qp, preferences, gramian, root = _scaled_problem(rand, 48)
    exact = project_weights(preferences, gramian) * root
    _, cold = splitting(qp, None, tolerance=1e-8, max_iter=10)
    _, warm = splitting(qp, exact, tolerance=1e-8, max_iter=10)
    assert not cold.any()
    assert warm.all()


def test_rows_admm_leaves_unsolved_are_finished_by_pivoting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gramian, preferences = make(conflicting, 64, 0), upgrad_preferences(64)
    real = _dual_cone_pivot.splitting

    def leaves_odd_rows(qp, x, **kwargs):
        x, solved = real(qp, x, **kwargs)
        odd = torch.arange(len(x)) % 2 == 1
        return torch.where(odd.unsqueeze(1), qp.lower.clamp_min(0), x), solved & ~odd

    pivoted, retried = [], []
    real_pivoting, real_solve = _dual_cone_pivot.block_pivoting, _dual_cone.solve_box
    monkeypatch.setattr(_dual_cone_pivot, "splitting", leaves_odd_rows)
    monkeypatch.setattr(
        _dual_cone_pivot,
        "block_pivoting",
        lambda qp, x, active, **kw: pivoted.append(len(x)) or real_pivoting(qp, x, active, **kw),
    )
    monkeypatch.setattr(
        _dual_cone,
        "solve_box",
        lambda qp, x, **kw: (
            retried.append(kw.get("splitting_first", True)) or real_solve(qp, x, **kw)
        ),
    )
    weights = project_weights(preferences, gramian)
    assert pivoted == [32]  # the odd rows, and only them
    assert retried == [True]  # pivoting finished them: no second solve
    assert_kkt(weights, preferences, gramian)
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


def test_an_admm_answer_that_fails_the_final_check_is_solved_again_by_pivoting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ADMM's tolerance is relative to the scaled problem; when its answer misses the final
    check on the original one, the primal problem is solved again, by pivoting only."""
    gramian, preferences = make(rand, 64, 0), upgrad_preferences(64)
    real = _dual_cone_pivot.splitting
    calls = []

    def inaccurate(qp, x, **kwargs):
        calls.append(1)
        x, solved = real(qp, x, **kwargs)
        return x * (1 + 1e-5), solved

    monkeypatch.setattr(_dual_cone_pivot, "splitting", inaccurate)
    weights = project_weights(preferences, gramian)
    assert calls
    assert_kkt(weights, preferences, gramian, tol=1e-9)
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


def test_admm_that_float32_cannot_settle_hands_every_row_to_pivoting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_dual_cone_splitting, "_FLOAT32_TOLERANCE", 0.0)  # out of float32's reach
    phases = []
    real = _dual_cone_splitting._run
    monkeypatch.setattr(
        _dual_cone_splitting,
        "_run",
        lambda matrix, *a, **kw: phases.append(matrix.dtype) or real(matrix, *a, **kw),
    )
    qp, preferences, gramian, _ = _scaled_problem(low_rank, 64)
    _, solved = splitting(qp, None, tolerance=1e-8, max_iter=40)
    assert not solved.any()
    assert phases == [torch.float32]  # no float64 phase
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian, tol=1e-9)
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


@pytest.mark.parametrize("a", [0.0, 0.6, 0.999])
def test_admm_penalty_is_the_mean_squared_cholesky_pivot(a: float) -> None:
    """For [[1, a], [a, 1]] the squared pivots are 1 and 1 − a²: their mean is 1 − a²/2."""
    matrix = torch.tensor([[1.0, a], [a, 1.0]], dtype=F64)
    assert _dual_cone._penalty(torch.linalg.cholesky(matrix)) == pytest.approx(1 - a**2 / 2)


def test_admm_penalty_is_clamped() -> None:
    tiny = torch.diag(torch.tensor([1e-6, 1e-6, 1e-6], dtype=F64))
    assert _dual_cone._penalty(tiny) == 0.1


def test_a_dual_admm_answer_that_fails_the_final_check_is_retried_on_the_dual(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (near-duplicate rows took 4–13× longer): the dual's pivoting, which is
    accurate there, comes before the primal's."""
    gramian, preferences = make(low_rank, 64, 0), upgrad_preferences(64)
    real_splitting, real_solve = _dual_cone_pivot.splitting, _dual_cone.solve_box
    calls = []

    def inaccurate(qp, x, **kwargs):
        x, solved = real_splitting(qp, x, **kwargs)
        return x + 1e-4 * x.amax(dim=1, keepdim=True), solved

    def spy(qp, x, **kwargs):
        calls.append((bool(qp.linear.any()), kwargs.get("splitting_first", True)))
        return real_solve(qp, x, **kwargs)

    monkeypatch.setattr(_dual_cone_pivot, "splitting", inaccurate)
    monkeypatch.setattr(_dual_cone, "solve_box", spy)
    weights = project_weights(preferences, gramian)
    assert calls == [(True, True), (True, False)]  # (dual?, ADMM first?): no primal solve
    assert_kkt(weights, preferences, gramian, tol=1e-9)
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


def test_a_dual_answer_of_pivoting_alone_that_fails_the_final_check_goes_to_the_primal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When ADMM solved none of the dual's rows, its pivoting already gave the answer that
    failed: the next solve is the primal's, not the same pivoting again."""
    gramian, preferences = make(low_rank, 64, 0), upgrad_preferences(64)
    monkeypatch.setattr(_dual_cone_splitting, "_ENOUGH", 2.0)  # ADMM hands every row over
    real_solve, real_residual = _dual_cone.solve_box, _dual_cone._residual
    calls, residuals = [], []

    def spy(qp, x, **kwargs):
        calls.append((bool(qp.linear.any()), kwargs.get("splitting_first", True)))
        return real_solve(qp, x, **kwargs)

    def first_fails(*args):
        residuals.append(real_residual(*args))
        return math.inf if len(residuals) == 1 else residuals[-1]

    monkeypatch.setattr(_dual_cone, "solve_box", spy)
    monkeypatch.setattr(_dual_cone, "_residual", first_fails)
    weights = project_weights(preferences, gramian)
    assert calls == [(True, True), (False, False)]  # (dual?, ADMM first?)
    assert_kkt(weights, preferences, gramian, tol=1e-9)
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


def _three_row_blocks(m: int) -> Tensor:
    """Blocks of 3 identical rows plus a ridge: a participation ratio of about m/3, between
    the two thresholds of the dual (0.3 m and 0.4 m)."""
    ridge = 1e-2
    blocks = torch.block_diag(*[torch.ones(3, 3, dtype=F64)] * (m // 3))
    gramian = (1 - ridge) * blocks + ridge * torch.eye(m, dtype=F64)
    assert 0.3 < m / float(torch.linalg.vector_norm(gramian)) ** 2 < 0.4
    return gramian


@pytest.mark.parametrize(("m", "dual"), [(30, True), (66, False)])
def test_near_rank_m_over_2_the_dual_is_posed_unless_the_primal_admm_converges(
    m: int, dual: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ADMM (m = 30) the dual; with it (m = 66), the primal's ADMM first, which
    converges here."""
    gramian, preferences = _three_row_blocks(m), upgrad_preferences(m)
    duals = []
    real = _dual_cone._dual
    monkeypatch.setattr(_dual_cone, "_dual", lambda *a: duals.append(1) or real(*a))
    weights = project_weights(preferences, gramian)
    assert bool(duals) == dual
    assert_kkt(weights, preferences, gramian)
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


def test_near_rank_m_over_2_a_primal_admm_that_gives_up_hands_over_to_the_dual(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pivoting on such a primal can take ten times as long as on the dual: when the primal's
    ADMM solves no row, the dual is solved instead, and the primal is not pivoted."""
    gramian, preferences = _three_row_blocks(66), upgrad_preferences(66)
    monkeypatch.setattr(_dual_cone_splitting, "_ENOUGH", 2.0)  # ADMM hands every row over
    real = _dual_cone.solve_box
    calls = []

    def spy(qp, x, **kwargs):
        solution, from_splitting = real(qp, x, **kwargs)
        calls.append((bool(qp.linear.any()), kwargs.get("splitting_first", True), solution is None))
        return solution, from_splitting

    monkeypatch.setattr(_dual_cone, "solve_box", spy)
    weights = project_weights(preferences, gramian)
    # (dual?, ADMM first?, left unsolved?): the dual's pivoting starts from its ADMM's answer.
    assert calls == [(False, True, True), (True, True, False)]
    assert_kkt(weights, preferences, gramian)
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


@pytest.mark.parametrize(("rho", "first"), [(0.5, 30), (0.9, 20)])
def test_admm_from_a_cold_start_first_checks_slow_problems_later(
    rho: float, first: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Problems with a small penalty take 20 to 40 steps: no check before step 30. The float64
    phase, which often needs a step or two only, checks first at step 3."""
    firsts = []
    real = _dual_cone_splitting._run

    def spy(matrix, t, step, max_iter, first_check, *args, **kwargs):
        firsts.append((matrix.dtype, first_check))
        return real(matrix, t, step, max_iter, first_check, *args, **kwargs)

    monkeypatch.setattr(_dual_cone_splitting, "_run", spy)
    qp = _scaled_problem(rand, 64)[0]
    splitting(qp, None, tolerance=1e-8, max_iter=80, rho=rho)
    assert firsts == [(torch.float32, first), (F64, 3)]


@pytest.mark.parametrize(
    ("previous", "worst", "steps", "expected"),
    [
        (math.inf, 3.0, 0, 4),  # no rate yet: 0.75 per step, log 3 / −log 0.75 = 3.8
        (math.inf, 1.1, 0, 1),  # at least one step
        (math.inf, 1e6, 0, 10),  # at most _CHECK_PERIOD
        (100.0, 8.0, 2, 8),  # measured faster than 0.75: 0.75 (7.2 steps)
        (2.0, 1.5, 2, 3),  # measured 0.87 per step: 2.8 steps
        (16.0, 8.0, 10, 10),  # measured 0.93 per step: 30 steps, capped
        (5.0, 5.0, 10, 10),  # no progress
        (5.000000000000001, 5.0, 10, 10),  # a drop within rounding (once 1 ** 0.1 = 1: raised)
        (5.0, math.nan, 10, 10),
        (math.inf, math.inf, 0, 10),  # a zero tolerance
        (math.inf, 1.0, 0, 1),  # (a violation at the tolerance: still one step)
    ],
)
def test_admm_next_check_comes_when_the_slowest_row_should_be_solved(
    previous: float, worst: float, steps: int, expected: int
) -> None:
    assert _dual_cone_splitting._gap(previous, worst, steps) == expected


def test_admm_checks_where_the_last_one_predicted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The steps between two checks of a phase are the gap the first of them chose."""
    calls = []
    real = _dual_cone_splitting._gap

    def spy(previous, worst, steps):
        calls.append((previous, steps, real(previous, worst, steps)))
        return calls[-1][2]

    monkeypatch.setattr(_dual_cone_splitting, "_gap", spy)
    qp = _scaled_problem(rand, 64)[0]
    _, solved = splitting(qp, None, tolerance=1e-8, max_iter=80)
    assert solved.all()
    pairs = [(a[2], b[1]) for a, b in itertools.pairwise(calls) if not math.isinf(b[0])]
    assert pairs  # (a new phase starts with no previous check)
    for gap, steps in pairs:
        assert steps == gap


@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_sign_preferences_with_tiny_positive_parts(seed: int) -> None:
    """Regression (raised at m ≥ 100): scaled to max(u) = 1, the negative bounds are about
    −1e6, and the complementarity of the final check multiplies CG's tolerance on the free
    coordinates by that slack; the exact reduced solves of the last resort meet it."""
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(100, 300, generator=generator, dtype=F64)
    gramian = regularize(normalize(jacobian @ jacobian.T, 1e-4), 1e-4)
    preferences = torch.randn(8, 100, generator=generator, dtype=F64)
    preferences[preferences > 0] *= 1e-6
    weights = project_weights(preferences, gramian)
    assert_kkt(weights, preferences, gramian, tol=1e-7)
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"), 1e-7)


def test_polish_solves_the_reduced_systems_exactly() -> None:
    """From a point with the right free set, one exact solve gives the solution; a row whose
    free set is wrong (its exact solve leaves the box) keeps its point."""
    gramian, preferences = make(rand, 12, 0), upgrad_preferences(12)
    root = gramian.diagonal().sqrt()
    scaled = gramian / root.unsqueeze(1) / root.unsqueeze(0)
    qp = BoxQP(scaled, torch.zeros_like(preferences), preferences * root)
    exact = project_weights(preferences, gramian, solver="quadprog") * root
    free = exact > qp.lower + 1e-9
    nudged = torch.where(free, exact + 1e-3, qp.lower)  # right free set, wrong values
    assert ((_dual_cone_pivot.polish(qp, nudged) - exact).abs() <= 1e-12).all()
    wrong = qp.lower.clone()
    wrong[:, 0] += 1.0  # every row's free set is {0}: right in none of them
    polished = _dual_cone_pivot.polish(qp, wrong)
    left = ~(polished >= qp.lower).all(dim=1)
    assert not left.any()
    changed = (polished != wrong).any(dim=1)
    assert changed.any() and not changed.all()


def test_polish_keeps_a_free_coordinate_within_tolerance_of_its_bound_on_it() -> None:
    """A free coordinate whose exact value lies below its bound by less than the tolerance is
    put on the bound: polish's answer is feasible."""
    gramian, preferences = make(rand, 12, 0), upgrad_preferences(12)
    root = gramian.diagonal().sqrt()
    scaled = gramian / root.unsqueeze(1) / root.unsqueeze(0)
    exact = project_weights(preferences, gramian, solver="quadprog")[:1] * root
    lower = preferences[:1] * root
    free = exact > lower + 1e-9
    j = int(torch.nonzero(free[0] & (torch.arange(12) != 0))[0])
    tolerance = _dual_cone_pivot.PIVOTING_TOLERANCE * float(lower.amax())
    lower[0, j] = exact[0, j] + tolerance / 2  # the exact solve on the same free set: ℓ_j − tol/2
    qp = BoxQP(scaled, torch.zeros_like(lower), lower)
    point = torch.where(free, exact, lower)
    point[0, j] += 1e-3
    polished = _dual_cone_pivot.polish(qp, point)
    assert polished[0, j] == lower[0, j]
    assert (polished >= lower).all()


def test_admm_goes_on_in_float64_with_every_row_once_float32_solved_half_of_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Float32 solves the even rows only: the float64 phase still takes every row (those left
    mostly sit at float32's rounding floor) and solves them all, to the KKT conditions."""
    qp = _scaled_problem(rand, 64)[0]
    real = _dual_cone_splitting._run
    sizes = []

    def even_rows_only(matrix, t, step, *args, **kwargs):
        sizes.append(len(t))
        t, solved = real(matrix, t, step, *args, **kwargs)
        if matrix.dtype == torch.float32:
            solved = solved & (torch.arange(len(solved)) % 2 == 0)
        return t, solved

    monkeypatch.setattr(_dual_cone_splitting, "_run", even_rows_only)
    x, solved = splitting(qp, None, tolerance=1e-8, max_iter=80)
    assert sizes == [64, 64]
    assert solved.all()
    assert not unsolved(qp, x, x @ qp.matrix, 1e-8).any()
    assert (x >= qp.lower).all()


@pytest.mark.parametrize(
    ("previous", "level", "steps", "steps_left", "expected"),
    [
        (math.inf, 1e3, 10, 10, False),  # the first check: no rate yet
        (1e4, 1e3, 10, 30, False),  # a decade per 10 steps: 1 after 30 more
        (1e4, 1e3, 10, 29, True),
        (1e4, 1e3, 5, 15, False),  # a decade per 5 steps: 1 after 15 more
        (1e4, 1e3, 5, 14, True),
        (1e3, 1e3, 10, 1000, True),  # no progress
        (5.000000000000001, 5.0, 10, 1000, True),  # a drop within rounding
        (1e3, math.nan, 10, 1000, True),
    ],
)
def test_admm_gives_up_when_the_rate_says_it_would_not_converge_in_time(
    previous: float, level: float, steps: int, steps_left: int, expected: bool
) -> None:
    assert _dual_cone_splitting._too_slow(previous, level, steps, steps_left) is expected


def test_a_primal_admm_that_would_not_converge_gives_up_early_near_rank_m_over_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only where the caller has a better plan than pivoting from ADMM's answer (the dual):
    the float32 phase stops at its second check, and the dual solves the problem."""
    generator = torch.Generator().manual_seed(0)
    jacobian = _randn(generator, 64, 30) @ _randn(generator, 30, 1000)  # rank m/2 or so
    gramian, preferences = gramian_of(jacobian), upgrad_preferences(64)
    root = gramian.diagonal().sqrt()
    scaled = gramian / root.unsqueeze(1) / root.unsqueeze(0)
    pivot = float(torch.linalg.cholesky(scaled).diagonal().min())
    assert 0.3 <= _dual_cone._participation(scaled, pivot) < 0.4
    verdicts = []
    real = _dual_cone_splitting._too_slow
    monkeypatch.setattr(
        _dual_cone_splitting, "_too_slow", lambda *a: verdicts.append(real(*a)) or verdicts[-1]
    )
    duals = []
    real_dual = _dual_cone._dual
    monkeypatch.setattr(_dual_cone, "_dual", lambda *a: duals.append(1) or real_dual(*a))
    weights = project_weights(preferences, gramian)
    assert verdicts[:2] == [False, True]  # the primal's: no rate at its first check, then stop
    assert duals
    assert_kkt(weights, preferences, gramian)
    assert_close_to(weights, project_weights(preferences, gramian, solver="quadprog"))


def test_final_check_is_the_largest_kkt_residual() -> None:
    """The solver's lean final check against the residual's definition (v ≥ u holding)."""
    generator = torch.Generator().manual_seed(3)
    jacobian = torch.randn(7, 4, generator=generator, dtype=F64)
    gramian = jacobian @ jacobian.T
    preferences = torch.randn(5, 7, generator=generator, dtype=F64)
    weights = preferences + torch.randn(5, 7, generator=generator, dtype=F64).clamp_min(0)
    size = weights.abs().amax(dim=1)
    product = weights @ gramian
    scale = gramian.diagonal().max()
    dual = (-product.amin(dim=1)).clamp_min(0) / (scale * size)
    gap = (product * (weights - preferences)).abs().amax(dim=1) / (scale * size**2)
    expected = float(torch.maximum(dual, gap).max())
    assert expected > 0
    assert _dual_cone._residual(weights, preferences, gramian) == pytest.approx(expected, rel=1e-12)
    assert float(kkt_residual(weights, preferences, gramian).max()) == pytest.approx(expected)
    weights[2, 3] = torch.nan
    assert math.isnan(_dual_cone._residual(weights, preferences, gramian))


def test_a_cholesky_factor_with_nan_and_no_error_code_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LAPACK reports NaN pivots through ``info``; a backend that returns a NaN factor with
    ``info = 0`` is caught by the pivot check, before any weights are computed."""
    gramian = make(rand, 8, 0)
    real = torch.linalg.cholesky_ex

    def nan_factor(matrix, **kwargs):
        factor, info = real(matrix, **kwargs)
        factor = factor.clone()
        factor[3, 3] = torch.nan
        return factor, torch.zeros_like(info)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", nan_factor)
    with pytest.raises(ValueError, match="positive semi-definite"):
        project_weights(upgrad_preferences(8), gramian)


@pytest.mark.parametrize("m", [8, 64])
def test_weights_are_normal_tensors_that_autograd_may_save(m: int) -> None:
    """The native solver runs in inference mode; its answer must not be an inference tensor,
    which autograd refuses to save for backward."""
    generator = torch.Generator().manual_seed(m)
    jacobian = torch.randn(m, 30, generator=generator, dtype=F64, requires_grad=True)
    gramian = gramian_of(jacobian.detach())
    weights = project_weights(upgrad_preferences(m), gramian)
    assert not weights.is_inference()
    (weights.sum(dim=0) @ jacobian).square().sum().backward()  # saves the weights
    assert jacobian.grad is not None
    assert torch.isfinite(jacobian.grad).all()
    update = UPGrad()(jacobian)  # the public path, with a Jacobian that requires grad
    assert not update.is_inference()


def test_diagonal_bounds_are_detected_only_when_every_nonzero_is_on_the_diagonal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_dual_cone_splitting, "_DIAGONAL_MIN_SIZE", 4)
    matrix = gramian_of(torch.randn(6, 9, generator=torch.Generator().manual_seed(0), dtype=F64))
    diagonal = torch.diag(torch.arange(1.0, 7.0, dtype=F64))
    zero = torch.zeros(6, 6, dtype=F64)
    detect = _dual_cone_splitting._diagonal
    assert detect(BoxQP(matrix, zero, diagonal))  # the primal of UPGrad
    assert detect(BoxQP(matrix, diagonal, zero))  # its dual
    off = diagonal.clone()
    off[1, 4] = 1e-300
    assert not detect(BoxQP(matrix, zero, off))
    assert not detect(BoxQP(matrix, off, zero))
    assert not detect(BoxQP(matrix, zero[:3], diagonal[:3]))  # k ≠ m
    monkeypatch.setattr(_dual_cone_splitting, "_DIAGONAL_MIN_SIZE", 7)
    assert not detect(BoxQP(matrix, zero, diagonal))  # below the size


@pytest.mark.parametrize("family", [rand, low_rank])
def test_diagonal_bounds_scale_rows_and_give_the_same_answer(
    family: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UPGrad's bounds are diagonal: ADMM's products with them scale rows of M instead (from
    _DIAGONAL_MIN_SIZE on). Forced on and off at m = 48, the answers agree to rounding."""
    gramian, preferences = make(family, 48, 0), upgrad_preferences(48)
    flags = []
    real = _dual_cone_splitting._affine

    def spy(rows, matrix, shift, diagonal, *args):
        flags.append(diagonal)
        return real(rows, matrix, shift, diagonal, *args)

    monkeypatch.setattr(_dual_cone_splitting, "_affine", spy)
    monkeypatch.setattr(_dual_cone_splitting, "_DIAGONAL_MIN_SIZE", 10**9)
    reference = project_weights(preferences, gramian)
    assert flags and not any(flags)  # ℓM − b, the bias and the start: matrix products
    flags.clear()
    monkeypatch.setattr(_dual_cone_splitting, "_DIAGONAL_MIN_SIZE", 48)
    weights = project_weights(preferences, gramian)
    assert len(flags) == 3 and all(flags)
    assert_close_to(weights, reference, 1e-12)
    assert_kkt(weights, preferences, gramian)


def test_kkt_residual_of_rows_left_at_zero_is_zero() -> None:
    """Rows whose preferences are all ≤ 0 get zero weights, which solve them exactly; the
    residual's relative scales used to divide 0 by 0 there."""
    gramian = make(rand, 6, 0)
    preferences = upgrad_preferences(6)
    preferences[2] = -preferences[2]
    preferences[4] = 0.0
    weights = project_weights(preferences, gramian)
    assert (weights[2] == 0).all() and (weights[4] == 0).all()
    residual = kkt_residual(weights, preferences, gramian)
    assert torch.isfinite(residual).all()
    assert float(residual.max()) <= 1e-7
    assert float(residual[2]) == 0.0 and float(residual[4]) == 0.0
