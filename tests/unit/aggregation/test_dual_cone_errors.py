"""The error contract of ``project_weights``: ValueError on invalid inputs, RuntimeError (naming
the reference solver) when the native solver cannot reach its tolerance, and never NaN."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from jdopt._linalg import normalize
from jdopt.aggregation._dual_cone import SolverOptions, project_weights

from ._dual_cone_problems import (
    F64,
    assert_kkt,
    conflicting,
    gramian_of,
    jacobian,
    low_rank,
    make,
    rand,
    randn,
    upgrad_preferences,
)

NOT_PSD = "positive semi-definite"
STUCK = {
    "backup_chances": -1,
    "active_set_steps": 0,
    "small_guess_steps": ((10**9, 0),),
    "long_guess_steps": (0, 0),
}
REFERENCE = r"solver='quadprog'"


@pytest.mark.parametrize(
    ("preferences", "gramian", "initial", "match"),
    [
        (torch.eye(3), torch.ones(3, 2), None, r"square matrix \[m, m\]\. Found shape \(3, 2\)"),
        (torch.eye(3), torch.ones(3), None, r"square matrix \[m, m\]\. Found shape \(3,\)"),
        (torch.eye(3), torch.ones(2, 3, 3), None, r"square matrix.*Found shape \(2, 3, 3\)"),
        (torch.ones(2, 4), torch.eye(3), None, r"shape \[k, 3\].*Found shape \(2, 4\)"),
        (torch.ones(3), torch.eye(3), None, r"shape \[k, 3\].*Found shape \(3,\)"),
        (torch.eye(3), torch.eye(3), torch.ones(3, 2), r"shape of `preferences`, \(3, 3\)"),
        (torch.eye(3), torch.eye(3), torch.ones(3), r"shape of `preferences`.*Found shape \(3,\)"),
        (torch.tensor([[1.0, torch.nan]]), torch.eye(2), None, "`preferences` should contain"),
        (torch.tensor([[torch.inf, 0.0]]), torch.eye(2), None, "`preferences` should contain"),
        (torch.tensor([[1.0, -torch.inf]]), torch.eye(2), None, "`preferences` should contain"),
        (torch.eye(2), torch.eye(2), torch.full((2, 2), torch.nan), "`initial` should contain"),
        (torch.eye(2), torch.eye(2), torch.tensor([[0.0, 1], [torch.inf, 0]]), "`initial`"),
    ],
)
def test_invalid_inputs_raise_a_value_error_that_names_them(
    preferences: Tensor, gramian: Tensor, initial: Tensor | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        project_weights(preferences, gramian, initial=initial)


def test_an_unknown_solver_raises_a_value_error_listing_the_solvers() -> None:
    with pytest.raises(ValueError, match=r"`solver` should be one of .*'native'.*Found"):
        project_weights(torch.eye(2), torch.eye(2), solver="cvxpy")


def _with(matrix: Tensor, row: int, column: int, value: float) -> Tensor:
    matrix = matrix.clone()
    matrix[row, column] = value
    return matrix


@pytest.mark.parametrize(
    "gramian",
    [
        -torch.eye(2, dtype=F64),
        torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64),  # eigenvalues 3 and −1
        torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64),  # a zero diagonal, ±1
        make(conflicting, 40, 0) - 1e-3 * torch.eye(40, dtype=F64),
        _with(torch.eye(3, dtype=F64), 1, 1, math.nan),
        _with(torch.eye(3, dtype=F64), 0, 2, math.nan),
        _with(torch.eye(3, dtype=F64), 2, 2, math.inf),
    ],
)
def test_a_gramian_that_is_not_positive_semi_definite_raises_a_value_error(gramian: Tensor):
    """Negative eigenvalues beyond rounding, or non-finite entries."""
    preferences = upgrad_preferences(gramian.shape[0])
    with pytest.raises(ValueError, match=NOT_PSD):
        project_weights(preferences, gramian)


def test_the_reference_refuses_an_indefinite_gramian_too() -> None:
    with pytest.raises(ValueError, match=NOT_PSD):
        project_weights(torch.eye(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]), solver="quadprog")


def test_a_cholesky_factor_with_nan_and_no_error_code_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LAPACK reports a failed factorisation through ``info``; a backend that returns a NaN
    factor with ``info = 0`` instead must not yield weights (torch is patched, not jdopt)."""
    gramian = make(rand, 8, 0)
    real = torch.linalg.cholesky_ex

    def nan_factor(matrix: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
        factor, info = real(matrix, **kwargs)
        factor = factor.clone()
        factor[..., 3, 3] = torch.nan
        return factor, torch.zeros_like(info)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", nan_factor)
    with pytest.raises(ValueError, match=NOT_PSD):
        project_weights(upgrad_preferences(8), gramian)


def _singular(m: int) -> Tensor:
    matrix = jacobian(low_rank, m, 0)
    return normalize(matrix @ matrix.T, 0.0)


@pytest.mark.parametrize(
    ("gramian", "options"),
    [
        (make(rand, 6, 0), SolverOptions(kkt_tolerance=1e-30)),
        (make(rand, 40, 0), SolverOptions(kkt_tolerance=1e-30)),
        (_singular(6), SolverOptions(kkt_tolerance=1e-30)),
        (make(rand, 6, 0), SolverOptions(kkt_tolerance=math.nan)),
        # A ridge far beyond the tolerance, left unrefined: the path cannot reach it.
        (make(rand, 6, 0), SolverOptions(singular=1.0, ridge=1e-2, refinements=0)),
        (_singular(40), SolverOptions(ridge=1e-2, ridge_floor=1e-2, refinements=0)),
    ],
    ids=[
        "tolerance",
        "tolerance, m=40",
        "tolerance, singular",
        "NaN tolerance",
        "ridge",
        "ridge40",
    ],
)
def test_an_unreachable_tolerance_raises_a_runtime_error_that_names_quadprog(
    gramian: Tensor, options: SolverOptions
) -> None:
    preferences = upgrad_preferences(gramian.shape[0])
    with pytest.raises(RuntimeError, match=rf"KKT residual of \S+ only.*{REFERENCE}"):
        project_weights(preferences, gramian, options=options)


def test_the_weights_of_extreme_preference_ratios_are_right_or_refused() -> None:
    """Negative preferences 1e10 times the largest positive one ask for more digits than
    float64 holds: the weights meet the KKT conditions, or the solver says to use quadprog."""
    g = torch.Generator().manual_seed(0)
    gramian = gramian_of(randn(g, 30, 60))
    preferences = randn(g, 4, 30)
    preferences[preferences > 0] *= 1e-10
    try:
        weights = project_weights(preferences, gramian)
    except RuntimeError as error:
        assert "solver='quadprog'" in str(error)
    else:
        assert_kkt(weights, preferences, gramian)


@pytest.mark.parametrize(
    "gramian",
    [
        make(conflicting, 12, 0),
        _singular(12),
        torch.zeros(12, 12, dtype=F64),
        gramian_of(jacobian(low_rank, 12, 1), 1e-14),
        make(conflicting, 12, 0) * 1e-300,
        make(conflicting, 12, 0) * 1e300,
    ],
    ids=["regular", "singular", "zero", "tiny ridge", "tiny entries", "huge entries"],
)
def test_valid_gramians_of_any_scale_or_rank_give_finite_weights(gramian: Tensor) -> None:
    """Never NaN (nor an error): finite weights that meet the KKT conditions."""
    for preferences in [upgrad_preferences(12), randn(torch.Generator().manual_seed(1), 3, 12)]:
        weights = project_weights(preferences, gramian)
        assert torch.isfinite(weights).all()
        assert_kkt(weights, preferences, gramian)
