from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from jdopt.aggregation import ConFIG
from tests.utils.device import draw, seeded

_R2 = math.sqrt(2)


def _random(m: int, n: int = 6, seed: int = 0) -> torch.Tensor:
    return draw(m, n, generator=seeded(seed), dtype=torch.float64)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("m", [1, 2, 4, 6])
def test_equal_projections_on_unit_rows_and_length(m: int) -> None:
    jacobian = _random(m, seed=m)
    update = ConFIG()(jacobian)
    units = jacobian / jacobian.norm(dim=1, keepdim=True)
    projections = units @ update
    assert (projections > 0).all()  # non-conflicting: the rows are independent
    assert_close(projections, projections[0].expand(m))
    direction = update / update.norm()
    assert_close(update.norm(), (jacobian @ direction).sum())


def test_projections_follow_pref_vector() -> None:
    jacobian = _random(3, seed=1)
    pref = _t(1.0, 2.0, 0.5)
    update = ConFIG(pref_vector=pref)(jacobian)
    projections = (jacobian / jacobian.norm(dim=1, keepdim=True)) @ update
    assert_close(projections / projections[0], pref)


@pytest.mark.parametrize(
    ("jacobian", "expected"),
    [
        ([[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0]),
        ([[2.0, 0.0], [0.0, 3.0]], [2.5, 2.5]),  # length (2 + 3)/√2 along (1, 1)/√2
        # U⁻¹ = [[1, 0], [-1, √2]], U⁻¹1 = (1, √2 - 1), update = (1 + √2, 1)/(4 - 2√2).
        ([[1.0, 0.0], [1.0, 1.0]], [(1 + _R2) / (4 - 2 * _R2), 1 / (4 - 2 * _R2)]),
        ([[1.0, 0.0], [0.0, 0.0]], [1.0, 0.0]),  # zero row: ignored
        ([[1.0, 0.0], [1.0, 0.0]], [2.0, 0.0]),  # duplicated rows: pinv splits them
        ([[3.0, -4.0]], [3.0, -4.0]),  # m = 1: the row itself
        ([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0]),
    ],
)
def test_golden_values(jacobian: list[list[float]], expected: list[float]) -> None:
    assert_close(ConFIG()(torch.tensor(jacobian, dtype=torch.float64)), _t(*expected))


def test_matches_torchjd_documented_example() -> None:
    jacobian = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    assert_close(ConFIG()(jacobian), torch.tensor([0.1588, 2.0706, 2.0706]), atol=1e-4, rtol=0)


def test_pref_vector_orthogonal_to_the_rows_gives_zero() -> None:
    jacobian = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    assert_close(ConFIG(pref_vector=_t(1.0, -1.0))(jacobian), _t(0.0, 0.0))


def test_direction_ignores_row_scaling() -> None:
    jacobian = _random(3, seed=2)
    scaled = _t(1e-3, 1.0, 1e3).unsqueeze(1) * jacobian
    a, b = ConFIG()(jacobian), ConFIG()(scaled)
    assert_close(a / a.norm(), b / b.norm())


@pytest.mark.parametrize("scale", [0.0, 1e-10, 1e10])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_inputs_finite_and_positively_homogeneous(scale: float, dtype: torch.dtype) -> None:
    for jacobian in [_random(3), _random(5, n=2), torch.cat([_random(2), _random(2)])]:
        jacobian = jacobian.to(dtype)
        update = ConFIG()(scale * jacobian)
        assert update.dtype == dtype
        assert torch.isfinite(update).all()
        assert_close(update, scale * ConFIG()(jacobian), rtol=1e-4, atol=0.0)


def test_no_columns() -> None:
    assert ConFIG()(torch.zeros(3, 0)).shape == (0,)


@pytest.mark.parametrize(
    ("pref_vector", "error"),
    [
        ([1.0, 1.0], TypeError),
        (torch.ones(2, 2), ValueError),
        (torch.ones(0), ValueError),
        (torch.tensor([1.0, math.nan]), ValueError),
    ],
)
def test_invalid_pref_vector(pref_vector: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="pref_vector"):
        ConFIG(pref_vector=pref_vector)  # type: ignore[arg-type]


def test_pref_vector_length_mismatch() -> None:
    with pytest.raises(ValueError, match="`pref_vector` has 2 entries but there are 3"):
        ConFIG(pref_vector=torch.ones(2))(torch.ones(3, 4))


def test_the_preference_vector_is_its_state() -> None:
    aggregator = ConFIG(pref_vector=torch.tensor([1.0, 2.0]))
    assert set(aggregator.state_dict()) == {"pref_vector"}
