from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from jdopt.aggregation import GradDrop
from tests.utils.device import draw, draw_uniform, seeded


def _gen(seed: int) -> torch.Generator:
    return seeded(seed)


def _t(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _reference(
    jacobian: Tensor,
    draw: Tensor,
    f: Callable[[Tensor], Tensor] | None = None,
    leak: Tensor | None = None,
) -> Tensor:
    """GradDrop from the paper's definitions, one coordinate at a time, for a given draw U."""
    m, n = jacobian.shape
    leaks = [0.0] * m if leak is None else leak.tolist()
    purity = []
    for k in range(n):
        column = jacobian[:, k].tolist()
        mass = sum(abs(x) for x in column)
        purity.append(0.5 if mass == 0 else 0.5 * (1 + sum(column) / mass))
    purity = torch.tensor(purity, dtype=jacobian.dtype)
    keep_positive = (purity if f is None else f(purity)).tolist()
    update = [0.0] * n
    for i in range(m):
        for k in range(n):
            x = float(jacobian[i, k])
            u = float(draw[k])
            kept = (keep_positive[k] > u and x > 0) or (keep_positive[k] < u and x < 0)
            update[k] += (leaks[i] + (1 - leaks[i]) * float(kept)) * x
    return torch.tensor(update, dtype=jacobian.dtype)


def _draw(seed: int, n: int) -> Tensor:
    return draw_uniform(n, generator=_gen(seed), dtype=torch.float64)


@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize("with_leak", [False, True])
def test_matches_per_coordinate_reference(m: int, with_leak: bool) -> None:
    jacobian = draw(m, 9, generator=_gen(m), dtype=torch.float64)
    jacobian[:, 0] = 0.0  # an all-zero column
    leak = torch.linspace(0.0, 1.0, m, dtype=torch.float64) if with_leak else None
    update = GradDrop(leak=leak, generator=_gen(7))(jacobian)
    assert_close(update, _reference(jacobian, _draw(7, 9), leak=leak))


def test_matches_reference_with_custom_f() -> None:
    jacobian = draw(4, 9, generator=_gen(1), dtype=torch.float64)
    f = torch.sqrt
    assert_close(GradDrop(f=f, generator=_gen(3))(jacobian), _reference(jacobian, _draw(3, 9), f))


def test_purity_golden_values() -> None:
    seen = []

    def spy(purity: Tensor) -> Tensor:
        seen.append(purity)
        return purity

    jacobian = torch.tensor([[1.0, -2.0, 0.0, -1.0], [3.0, 2.0, 0.0, -3.0]], dtype=torch.float64)
    GradDrop(f=spy)(jacobian)
    # Column sums 4, 0, 0, -4 over masses 4, 4, 0, 4; the all-zero column gets ½.
    assert_close(seen[0], _t(1.0, 0.5, 0.5, 0.0))


@pytest.mark.parametrize(
    ("keep", "leak", "expected"),
    [
        (1.0, None, [4.0, 2.0]),  # f = 1 > U: keep the positive entries only
        (0.0, None, [0.0, -2.0]),  # f = 0 < U: keep the negative entries only
        (0.0, [0.5, 0.0], [0.5, -2.0]),  # half of row 0 leaks through: 0.5·1 + 0 + -2
        (0.0, [1.0, 1.0], [4.0, 0.0]),  # full leak: the plain sum
    ],
)
def test_golden_values(keep: float, leak: list[float] | None, expected: list[float]) -> None:
    jacobian = torch.tensor([[1.0, -2.0], [3.0, 2.0]], dtype=torch.float64)
    leak_tensor = None if leak is None else _t(*leak)
    aggregator = GradDrop(f=lambda p: torch.full_like(p, keep), leak=leak_tensor)
    assert_close(aggregator(jacobian), _t(*expected))


def test_single_sign_columns_pass_through() -> None:
    # P = 1 (all positive) or 0 (all negative): with f = identity the column is always kept.
    jacobian = torch.tensor([[1.0, -2.0], [3.0, -1.0]], dtype=torch.float64)
    assert_close(GradDrop(generator=_gen(0))(jacobian), _t(4.0, -3.0))


def test_same_seed_same_output_and_state_dict_continues_the_sequence() -> None:
    jacobian = draw(4, 50, generator=_gen(0), dtype=torch.float64)
    a, b = GradDrop(generator=_gen(5)), GradDrop(generator=_gen(5))
    assert_close(a(jacobian), b(jacobian))
    state = a.state_dict()
    expected = [a(jacobian) for _ in range(3)]
    resumed = GradDrop(generator=_gen(99))
    resumed.load_state_dict(state)
    assert_close(torch.stack([resumed(jacobian) for _ in range(3)]), torch.stack(expected))
    assert not torch.equal(expected[0], expected[1])  # a new draw at every call


@pytest.mark.parametrize("scale", [0.0, 1e-10, 1e10])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_inputs_finite(scale: float, dtype: torch.dtype) -> None:
    jacobian = draw(3, 5, generator=_gen(0), dtype=dtype)
    jacobian[1] = jacobian[0]
    jacobian[2] = 0.0
    update = GradDrop(leak=torch.tensor([0.2, 0.0, 1.0]), generator=_gen(0))(scale * jacobian)
    assert update.dtype == dtype
    assert torch.isfinite(update).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"f": 3.0}, TypeError, "`f` should be a callable"),
        ({"leak": [0.5]}, TypeError, "`leak`"),
        ({"leak": torch.ones(2, 2)}, ValueError, "`leak`"),
        ({"leak": torch.tensor([0.5, 1.5])}, ValueError, r"\[0, 1\].*1\.5"),
        ({"leak": torch.tensor([-0.1])}, ValueError, r"\[0, 1\]"),
        ({"leak": torch.tensor([math.nan])}, ValueError, "finite"),
        ({"leak": torch.tensor([0.5j])}, TypeError, "real"),
        ({"generator": 0}, TypeError, "`generator`"),
    ],
)
def test_invalid_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        GradDrop(**kwargs)


def test_leak_length_mismatch() -> None:
    with pytest.raises(ValueError, match="`leak` has 2 entries but there are 3"):
        GradDrop(leak=torch.tensor([0.0, 1.0]))(torch.ones(3, 4))


def test_f_with_wrong_output_shape() -> None:
    with pytest.raises(ValueError, match=r"`f` should map the purities \(shape \(4,\)\)"):
        GradDrop(f=lambda p: p.sum())(torch.ones(3, 4))


def test_integer_leak_is_accepted() -> None:
    jacobian = torch.tensor([[1.0, -2.0], [3.0, 2.0]])
    assert_close(GradDrop(leak=torch.tensor([1, 1]))(jacobian), torch.tensor([4.0, 0.0]))
