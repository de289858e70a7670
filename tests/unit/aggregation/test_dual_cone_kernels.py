"""The solver's kernels, each alone, against quadprog and the KKT conditions of its problem.

A kernel takes a box problem ``min ½ xᵀMx − bᵀx s.t. x ≥ ℓ`` (here the Jacobi-scaled primal
the solver poses) and returns ``(solution, solved rows)``: the rows it reports solved must meet
its KKT conditions (``x ≥ ℓ``, ``g = Mx − b ≥ 0``, ``(x − ℓ) ⊙ g = 0``), and given the steps it
needs, it solves them all.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from jdopt.aggregation._dual_cone import SolverOptions
from jdopt.aggregation._dual_cone._active_set import active_set
from jdopt.aggregation._dual_cone._admm import admm
from jdopt.aggregation._dual_cone._admm_checks import _gap, _too_slow
from jdopt.aggregation._dual_cone._exact import polish
from jdopt.aggregation._dual_cone._fista import fista
from jdopt.aggregation._dual_cone._pivoting import gathered, masked, pivot
from jdopt.aggregation._dual_cone._problem import BoxQP

from ._dual_cone_problems import (
    Family,
    conflicting,
    low_rank,
    make,
    mixed_preferences,
    rand,
    reference,
    scaled,
    upgrad_preferences,
)

OPTIONS = SolverOptions()


def _primal(family: Family, m: int, preferences: Tensor) -> tuple[BoxQP, Tensor]:
    """The Jacobi-scaled primal the solver poses, and its solution (quadprog's)."""
    gramian = make(family, m, 0)
    root = gramian.diagonal().sqrt()
    matrix = gramian / root.unsqueeze(1) / root.unsqueeze(0)
    qp = BoxQP(matrix, torch.zeros_like(preferences), preferences * root)
    return qp, reference(preferences, gramian) * root


def assert_box_kkt(qp: BoxQP, x: Tensor, rows: Tensor, tol: float) -> None:
    """The KKT conditions of ``qp`` in the given rows, relative to ``max(ℓ⁺, b⁺)``."""
    scale = torch.maximum(qp.lower.amax(1), qp.linear.amax(1)).unsqueeze(1)[rows]
    x, lower, gradient = x[rows], qp.lower[rows], (x @ qp.matrix - qp.linear)[rows]
    assert (x >= lower - tol * scale).all(), "x ≥ ℓ"
    assert (gradient >= -tol * scale).all(), "g ≥ 0"
    assert ((x - lower).abs().minimum(gradient.abs()) <= tol * scale).all(), "(x − ℓ) ⊙ g = 0"


PROBLEMS = [
    (rand, 12, upgrad_preferences(12)),
    (low_rank, 40, upgrad_preferences(40)),
    (conflicting, 40, mixed_preferences(40, 3)[:4]),
    (scaled, 30, upgrad_preferences(30)),
]
IDS = ["rand", "low_rank", "conflicting, mixed", "scaled"]


@pytest.mark.parametrize(("family", "m", "preferences"), PROBLEMS, ids=IDS)
def test_each_exact_kernel_alone_solves_every_row_from_a_cold_start(
    family: Family, m: int, preferences: Tensor
) -> None:
    """Pivoting (masked or gathered solves), the active-set method and ADMM given patience."""
    qp, expected = _primal(family, m, preferences)
    cold = qp.lower.clamp_min(0)
    runs = {
        "masked pivoting": pivot(qp, None, OPTIONS, solve=masked, max_iter=10 * m),
        "gathered pivoting": pivot(qp, None, OPTIONS, solve=gathered, max_iter=10 * m),
        "active set": active_set(qp, cold, OPTIONS),
        "admm": admm(qp, None, SolverOptions(admm_steps=4000, patience=10**6), penalty=0.5),
    }
    for name, (x, solved) in runs.items():
        assert solved.all(), name
        assert_box_kkt(qp, x, solved, 1e-7)
        scale = expected.abs().amax(dim=1, keepdim=True)
        assert ((x - expected).abs() <= 1e-5 * scale).all(), name


@pytest.mark.parametrize(("family", "m", "preferences"), PROBLEMS, ids=IDS)
def test_rows_a_kernel_reports_solved_meet_the_kkt_conditions(
    family: Family, m: int, preferences: Tensor
) -> None:
    """With few steps, some rows are left; those reported solved must be."""
    qp, _ = _primal(family, m, preferences)
    few = SolverOptions(admm_steps=10, active_set_steps=1)
    runs = [
        pivot(qp, None, few, solve=masked, max_iter=2),
        pivot(qp, None, few, solve=gathered, max_iter=2),
        active_set(qp, qp.lower.clamp_min(0), few),
        admm(qp, None, few, penalty=0.5),
    ]
    for x, solved in runs:
        assert (x >= qp.lower).all()
        assert_box_kkt(qp, x, solved, 1e-7)


@pytest.mark.parametrize("solve", [masked, gathered], ids=["masked", "gathered"])
def test_pivoting_given_no_step_reports_no_row_solved(solve) -> None:
    """``max_iter = pivoting_steps + m // 2`` is 0 for ``pivoting_steps=0`` at m = 1."""
    qp, _ = _primal(rand, 12, upgrad_preferences(12))
    x, solved = pivot(qp, None, OPTIONS, solve=solve, max_iter=0)
    assert_box_kkt(qp, x, solved, 1e-7)


def test_fista_alone_converges_to_the_solution_but_reports_no_row_solved() -> None:
    qp, expected = _primal(rand, 12, upgrad_preferences(12))
    x, solved = fista(qp, None, OPTIONS, steps=3000)
    assert solved is None  # a guess
    assert torch.allclose(x, expected, rtol=0, atol=1e-9 * float(expected.abs().max()))


def test_admm_from_the_solution_reports_every_row_solved() -> None:
    qp, expected = _primal(rand, 48, upgrad_preferences(48))
    x, solved = admm(qp, expected, SolverOptions(admm_steps=20), penalty=0.5)
    assert solved.all()
    assert torch.allclose(x, expected, rtol=0, atol=1e-7 * float(expected.abs().max()))


def test_polish_solves_the_reduced_systems_exactly_where_the_free_set_is_right() -> None:
    """From the right free set with wrong values: the solution. From a wrong free set: an
    exact solve on it where that stays in the box (the point elsewhere), reported unsolved."""
    qp, expected = _primal(rand, 12, upgrad_preferences(12))
    free = expected > qp.lower + 1e-9
    nudged = torch.where(free, expected + 1e-3, qp.lower)
    x, solved = polish(qp, nudged, OPTIONS)
    assert solved.all()
    assert torch.allclose(x, expected, rtol=0, atol=1e-12)
    wrong = qp.lower.clone()
    wrong[:, 0] += 1.0  # every row's free set is {0}: right in none of them
    x, solved = polish(qp, wrong, OPTIONS)
    assert not solved.any()
    assert (x >= qp.lower).all()
    changed = (x != wrong).any(dim=1)
    assert changed.any()
    assert torch.equal(x[:, 1:], wrong[:, 1:])  # only the free coordinate moves
    gradient = (x @ qp.matrix - qp.linear)[changed, 0]
    assert torch.allclose(gradient, torch.zeros_like(gradient), rtol=0, atol=1e-12)


def test_polish_puts_a_free_coordinate_within_tolerance_below_its_bound_on_it() -> None:
    """Its answer is feasible: the exact solve on the right free set lands ``tolerance / 2``
    below one bound (moved up for that), and that coordinate ends on its bound."""
    qp, expected = _primal(rand, 12, upgrad_preferences(12))
    qp, expected = qp.rows(torch.tensor([0])), expected[:1]
    free = expected > qp.lower + 1e-9
    j = int(torch.nonzero(free[0] & (torch.arange(12) != 0))[0])
    lower = qp.lower.clone()
    lower[0, j] = expected[0, j] + OPTIONS.tolerance * float(qp.lower.amax()) / 2
    moved = BoxQP(qp.matrix, qp.linear, lower)
    point = torch.where(free, expected, lower)
    point[0, j] += 1e-3
    x, _ = polish(moved, point, OPTIONS)
    assert x[0, j] == lower[0, j]
    assert (x >= lower).all()


def test_rows_of_nan_are_never_reported_solved_unless_made_a_solution() -> None:
    """Polish and the active-set method from NaN: rows they report solved are finite and
    meet the KKT conditions."""
    qp, _ = _primal(conflicting, 12, upgrad_preferences(12))
    start = qp.lower.clamp_min(0)
    start[::2] = torch.nan
    for x, solved in [polish(qp, start, OPTIONS), active_set(qp, start, OPTIONS)]:
        assert torch.isfinite(x[solved]).all()
        assert_box_kkt(qp, x, solved, 1e-7)


@pytest.mark.parametrize("off_diagonal", [False, True])
def test_admm_with_diagonal_bounds_as_row_scalings_solves_the_real_problem(off_diagonal: bool):
    """``diagonal_size=1`` lets ADMM scale rows of ``M`` for diagonal bounds (UPGrad's); with
    one entry off the diagonal, it must multiply, and still solve the problem it was given."""
    preferences = upgrad_preferences(40)
    if off_diagonal:
        preferences[5, 17] = 0.02
    qp, expected = _primal(low_rank, 40, preferences)
    options = SolverOptions(admm_steps=4000, patience=10**6, diagonal_size=1)
    x, solved = admm(qp, None, options, penalty=0.5)
    assert solved.all()
    assert_box_kkt(qp, x, solved, 1e-7)
    scale = expected.abs().amax(dim=1, keepdim=True)
    assert ((x - expected).abs() <= 1e-5 * scale).all()


def test_restarted_fista_guesses_the_active_set_but_for_a_few_coordinates() -> None:
    """Stopped once its active set settles: pivoting then fixes the few left undecided."""
    qp, expected = _primal(rand, 40, upgrad_preferences(40))
    x, solved = fista(qp, None, OPTIONS, steps=10_000, period=10)
    assert solved is None  # a guess
    guess = x <= qp.lower + 1e-8 * qp.lower.amax(dim=1, keepdim=True)
    exact = expected <= qp.lower + 1e-12
    assert int((guess ^ exact).sum()) <= 2


MEASUREMENTS = [math.inf, math.nan, 0.5, 1.0, 1.0 + 1e-15, 1.1, 3.0, 1e3, 1e6, 1e300]


def test_admm_checks_come_between_one_step_and_check_period_apart() -> None:
    """Whatever the violations measured, in tolerances: none yet (infinite), NaN, no
    progress, a drop within rounding, or a tolerance of zero (infinite violations)."""
    options = SolverOptions(check_period=7)
    for previous in MEASUREMENTS:
        for worst in MEASUREMENTS[1:]:
            for steps in [1, 10]:
                gap = _gap(previous, worst, steps, options)
                assert isinstance(gap, int) and 1 <= gap <= 7, (previous, worst, steps)


def test_admm_gives_up_when_its_rate_says_it_would_not_converge_in_time() -> None:
    """A violation falling a decade per 10 steps from 1e3 reaches 1 in 30 steps; without
    progress (or NaN) never; at the first check (no rate yet) it goes on."""
    assert not _too_slow(1e4, 1e3, 10, 30)
    assert _too_slow(1e4, 1e3, 10, 29)
    assert not _too_slow(1e4, 1e3, 5, 15)
    assert _too_slow(1e4, 1e3, 5, 14)
    for level in [1e3, 2e3, 1e3 * (1 - 1e-16), math.nan]:
        assert _too_slow(1e3, level, 10, 10**6), level
    assert not _too_slow(math.inf, 1e3, 10, 10)
