from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from jdopt.aggregation import TrimmedMean
from tests.utils.device import draw, seeded


def _reference(jacobian: torch.Tensor, trim_number: int) -> torch.Tensor:
    """Per column: sort the values, drop ``trim_number`` at each end, average the rest."""
    m, n = jacobian.shape
    result = []
    for k in range(n):
        values = sorted(jacobian[:, k].tolist())
        kept = values[trim_number : m - trim_number]
        result.append(sum(kept) / len(kept))
    return torch.tensor(result, dtype=jacobian.dtype)


@pytest.mark.parametrize(("m", "trim_number"), [(1, 0), (3, 1), (5, 2), (6, 1), (9, 3)])
def test_matches_per_coordinate_reference(m: int, trim_number: int) -> None:
    jacobian = draw(m, 7, generator=seeded(m), dtype=torch.float64)
    assert_close(TrimmedMean(trim_number)(jacobian), _reference(jacobian, trim_number))


def test_golden_values() -> None:
    jacobian = torch.tensor(
        [[1.0, 10.0], [2.0, -5.0], [100.0, 0.0], [3.0, 1.0], [-50.0, 2.0]], dtype=torch.float64
    )
    # Column 0 sorted: -50 1 2 3 100; column 1 sorted: -5 0 1 2 10.
    assert_close(TrimmedMean(0)(jacobian), torch.tensor([11.2, 1.6], dtype=torch.float64))
    assert_close(TrimmedMean(1)(jacobian), torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert_close(TrimmedMean(2)(jacobian), torch.tensor([2.0, 1.0], dtype=torch.float64))


def test_trims_outliers_and_is_permutation_invariant() -> None:
    jacobian = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1e9, -1e9]], dtype=torch.float64)
    jacobian = torch.cat([jacobian, -jacobian[3:]])  # one outlier on each side
    expected = torch.ones(2, dtype=torch.float64)
    assert_close(TrimmedMean(1)(jacobian), expected)
    assert_close(TrimmedMean(1)(jacobian[torch.tensor([4, 2, 0, 3, 1])]), expected)


@pytest.mark.parametrize("scale", [0.0, 1e-10, 1.0, 1e10])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_and_positively_homogeneous(scale: float, dtype: torch.dtype) -> None:
    jacobian = draw(5, 4, generator=seeded(0), dtype=dtype)
    jacobian[1] = jacobian[0]
    update = TrimmedMean(1)(scale * jacobian)
    assert update.dtype == dtype
    assert torch.isfinite(update).all()
    assert_close(update, scale * TrimmedMean(1)(jacobian), rtol=1e-5, atol=0.0)


@pytest.mark.parametrize(
    ("trim_number", "error"),
    [("1", TypeError), (1.0, TypeError), (True, TypeError), (None, TypeError), (-1, ValueError)],
)
def test_invalid_trim_number(trim_number: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="trim_number"):
        TrimmedMean(trim_number)  # type: ignore[arg-type]


@pytest.mark.parametrize(("m", "trim_number"), [(2, 1), (4, 2), (1, 1)])
def test_too_few_rows(m: int, trim_number: int) -> None:
    with pytest.raises(ValueError, match=rf"m={m}.*trim_number ≤ {(m - 1) // 2}"):
        TrimmedMean(trim_number)(torch.ones(m, 3))
