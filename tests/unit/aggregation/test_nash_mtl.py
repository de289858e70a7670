from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from jdopt.aggregation import NashMTL
from jdopt.aggregation._nash_solver import RIDGE
from tests.utils.device import draw, on_device, seeded


def _random(m: int, n: int = 6, seed: int = 0) -> Tensor:
    return draw(m, n, generator=seeded(seed), dtype=torch.float64)


def _t(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _alpha(jacobian: Tensor) -> Tensor:
    """The unclipped Nash weights."""
    return NashMTL(jacobian.shape[0], max_norm=0.0).compute_weights(jacobian)


@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("scale", [1e-10, 1.0, 1e10])
def test_weights_solve_the_bargaining_equation(m: int, scale: float) -> None:
    jacobian = scale * _random(m, seed=m)
    alpha = _alpha(jacobian)
    gramian = jacobian @ jacobian.T
    assert (alpha > 0).all()
    # G α = 1/α, up to the ridge (relative to the trace) that keeps singular cases solvable.
    assert_close(alpha * (gramian @ alpha), torch.ones(m, dtype=torch.float64), rtol=0, atol=1e-4)


def test_weights_minimise_the_potential() -> None:
    optimize = pytest.importorskip("scipy.optimize")
    jacobian = _random(4, seed=3)
    gramian = (jacobian @ jacobian.T).cpu().numpy()

    def potential(x: np.ndarray) -> tuple[float, np.ndarray]:
        return 0.5 * x @ gramian @ x - sum(math.log(v) for v in x), gramian @ x - 1 / x

    result = optimize.minimize(
        potential,
        [1.0] * 4,
        jac=True,
        bounds=[(1e-9, None)] * 4,
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12},
    )
    assert_close(_alpha(jacobian), on_device(torch.from_numpy(result.x)), rtol=1e-4, atol=0)


@pytest.mark.parametrize(
    ("jacobian", "alpha"),
    [
        ([[2.0, 0.0], [0.0, 1.0]], [0.5, 1.0]),  # G = diag(4, 1): αᵢ = 1/‖gᵢ‖
        # G = [[1, 1], [1, 2]]: α₁² + α₁α₂ = 1 = α₁α₂ + 2α₂², so α₁ = √2 α₂, α₂ = 1/√(2 + √2).
        (
            [[1.0, 0.0], [1.0, 1.0]],
            [math.sqrt(2) / math.sqrt(2 + math.sqrt(2)), 1 / math.sqrt(2 + math.sqrt(2))],
        ),
        ([[3.0, 4.0]], [0.2]),  # m = 1: α = 1/‖g‖
    ],
)
def test_golden_weights(jacobian: list[list[float]], alpha: list[float]) -> None:
    assert_close(_alpha(torch.tensor(jacobian, dtype=torch.float64)), _t(*alpha), rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    ("max_norm", "expected"),
    [(0.0, [1.0, 1.0]), (10.0, [1.0, 1.0]), (1.0, [1 / math.sqrt(2), 1 / math.sqrt(2)])],
)
def test_golden_update_and_clipping(max_norm: float, expected: list[float]) -> None:
    jacobian = _t(2.0, 0.0, 0.0, 1.0).reshape(2, 2)  # α = (½, 1), update (1, 1) of norm √2
    assert_close(NashMTL(2, max_norm=max_norm)(jacobian), _t(*expected), rtol=1e-5, atol=0)


def test_matches_torchjd_documented_example() -> None:
    jacobian = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    assert_close(NashMTL(2)(jacobian), torch.tensor([0.0542, 0.7061, 0.7061]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("m", [2, 4, 6])
def test_non_conflicting_and_scale_invariant(m: int) -> None:
    jacobian = _random(m, n=12, seed=10 + m)
    update = NashMTL(m, max_norm=0.0)(jacobian)
    assert (jacobian @ update > 0).all()
    assert_close(update.norm(), torch.tensor(math.sqrt(m), dtype=torch.float64), rtol=1e-5, atol=0)
    row_scales = torch.logspace(-6, 6, m, dtype=torch.float64).unsqueeze(1)
    assert_close(NashMTL(m, max_norm=0.0)(row_scales * jacobian), update, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_inputs_finite(dtype: torch.dtype) -> None:
    row = _random(1)
    cases = {
        "zero": torch.zeros(3, 6, dtype=torch.float64),
        "zero_row": torch.cat([_random(2), torch.zeros(1, 6, dtype=torch.float64)]),
        "duplicated": row.repeat(3, 1),
        "opposite": torch.cat([row, -row]),
        "rank_one_wide": _random(5, 1) @ _random(1, 6),
        "more_rows_than_columns": _random(6, 2),
    }
    for name, jacobian in cases.items():
        for max_norm in [0.0, 1.0]:
            update = NashMTL(jacobian.shape[0], max_norm=max_norm)(jacobian.to(dtype))
            assert update.dtype == dtype
            assert torch.isfinite(update).all(), name
            assert update.norm() <= math.sqrt(jacobian.shape[0]) * (1 + 1e-5), name


def test_special_cases() -> None:
    assert_close(NashMTL(3)(torch.zeros(3, 4, dtype=torch.float64)), torch.zeros(4).double())
    # Duplicated rows are one task counted twice: α₁ = α₂ = 1/(√2‖g‖).
    row = _t(3.0, 4.0).unsqueeze(0)
    assert_close(_alpha(row.repeat(2, 1)), _t(1.0, 1.0) / (5 * math.sqrt(2)), rtol=1e-5, atol=0)
    # A zero row gets no say; the others still bargain: J·update = 1/α > 0 on them.
    jacobian = torch.cat([_random(2), torch.zeros(1, 6, dtype=torch.float64)])
    update = NashMTL(3, max_norm=0.0)(jacobian)
    assert_close(update, NashMTL(2, max_norm=0.0)(jacobian[:2]), rtol=1e-5, atol=1e-8)
    # Exactly opposite rows: nothing helps both, the update is (close to) zero.
    update = NashMTL(2, max_norm=0.0)(torch.cat([row, -row]))
    assert update.norm() <= 10 * math.sqrt(RIDGE)


def test_update_weights_every_reuses_the_weights() -> None:
    aggregator = NashMTL(3, max_norm=0.0, update_weights_every=2)
    jacobians = [_random(3, seed=s) for s in range(3)]
    first = aggregator.compute_weights(jacobians[0])
    assert_close(aggregator.compute_weights(jacobians[1]), first)  # reused
    assert_close(aggregator(jacobians[2]), _alpha(jacobians[2]) @ jacobians[2])  # recomputed
    assert_close(aggregator(jacobians[0]), _alpha(jacobians[2]) @ jacobians[0])  # reused
    assert int(aggregator.weighting.step) == 4


def test_state_dict_round_trip_and_reset() -> None:
    jacobians = [_random(3, seed=s) for s in range(4)]
    aggregator = NashMTL(3, update_weights_every=3)
    for jacobian in jacobians[:2]:
        aggregator(jacobian)
    state = aggregator.state_dict()
    assert set(state) == {"weighting.alpha", "weighting.step"}
    resumed = NashMTL(3, update_weights_every=3)
    resumed.load_state_dict(state)
    for jacobian in jacobians[2:]:  # the third call reuses the weights of the first
        assert_close(resumed(jacobian), aggregator(jacobian))
    aggregator.reset()
    assert int(aggregator.weighting.step) == 0
    assert_close(aggregator.weighting.alpha, torch.ones(3, dtype=torch.float64))
    assert_close(aggregator(jacobians[3]), NashMTL(3, update_weights_every=3)(jacobians[3]))


def test_warm_start_gives_the_same_weights() -> None:
    aggregator = NashMTL(4, max_norm=0.0)
    aggregator(_random(4, seed=0))
    jacobian = _random(4, seed=1)
    assert_close(aggregator.compute_weights(jacobian), _alpha(jacobian), rtol=1e-6, atol=0)


def test_warns_when_newton_does_not_converge() -> None:
    jacobian = _random(5, seed=2)
    with pytest.warns(RuntimeWarning, match=r"optim_niter=1 iterations"):
        weights = NashMTL(5, max_norm=0.0, optim_niter=1).compute_weights(jacobian)
    assert torch.isfinite(weights).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_tasks": "2"}, TypeError, "n_tasks"),
        ({"n_tasks": 2.0}, TypeError, "n_tasks"),
        ({"n_tasks": True}, TypeError, "n_tasks"),
        ({"n_tasks": 0}, ValueError, "n_tasks=0"),
        ({"n_tasks": 2, "max_norm": "1"}, TypeError, "max_norm"),
        ({"n_tasks": 2, "max_norm": -1.0}, ValueError, "max_norm=-1.0"),
        ({"n_tasks": 2, "max_norm": math.inf}, ValueError, "max_norm=inf"),
        ({"n_tasks": 2, "update_weights_every": 1.5}, TypeError, "update_weights_every"),
        ({"n_tasks": 2, "update_weights_every": 0}, ValueError, "update_weights_every=0"),
        ({"n_tasks": 2, "optim_niter": "20"}, TypeError, "optim_niter"),
        ({"n_tasks": 2, "optim_niter": 0}, ValueError, "optim_niter=0"),
    ],
)
def test_invalid_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        NashMTL(**kwargs)


def test_wrong_number_of_rows() -> None:
    with pytest.raises(ValueError, match="n_tasks=2 but the Jacobian has m=3 rows"):
        NashMTL(2)(torch.ones(3, 4))


def test_repr() -> None:
    assert "n_tasks=2, max_norm=1.0, update_weights_every=1, optim_niter=20" in repr(NashMTL(2))
