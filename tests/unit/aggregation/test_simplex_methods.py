"""MGDA and CAGrad solve their simplex problems exactly, singular Gramians included.

References: MGDA's optimality is certified by its duality gap (``wᵀGw − minᵢ (Gw)ᵢ = 0`` at the
min-norm point of the hull); CAGrad's update is checked against its dual definition,
``argmax_{‖d − g₀‖ ≤ c‖g₀‖} minᵢ gᵢ·d``, solved by a general-purpose solver (scipy's SLSQP) in
the space of the update.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import Tensor

import jdopt.aggregation as agg
from tests.utils.device import draw, on_device, seeded

from ._matrices import HARD


def _low_rank(m: int, rank: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    g = seeded(seed)
    return draw(m, rank, generator=g).to(dtype) @ draw(rank, 200, generator=g).to(dtype)


def _mgda_gap(jacobian: Tensor, weights: Tensor) -> float:
    gramian = jacobian.double() @ jacobian.double().T
    w = weights.double()
    return float(w @ gramian @ w - (gramian @ w).min()) / float(gramian.diagonal().max())


@pytest.mark.parametrize("family", HARD, ids=lambda f: f.__name__)
@pytest.mark.parametrize("m", [1, 2, 5, 9])
def test_mgda_weights_are_the_min_norm_point_of_the_hull(family, m: int) -> None:
    jacobian = family(m)
    weights = agg.MGDA().compute_weights(jacobian)
    assert torch.all(weights >= 0) and math.isclose(float(weights.sum()), 1.0)
    if jacobian.abs().max() > 0:
        assert _mgda_gap(jacobian, weights) <= 1e-8


@pytest.mark.parametrize(
    ("m", "rank", "seed"), [(64, 20, 17), (64, 5, 17), (64, 20, 1), (32, 5, 3)]
)
def test_mgda_is_exact_on_rank_deficient_float32_jacobians(m: int, rank: int, seed: int) -> None:
    """Rounding makes such Gramians singular or slightly indefinite; the solver still reaches
    the optimum (no iteration cap, no warning: warnings are errors in this suite)."""
    jacobian = _low_rank(m, rank, seed, torch.float32)
    weights = agg.MGDA().compute_weights(jacobian)
    assert _mgda_gap(jacobian, weights) <= 1e-6


def test_mgda_gives_zero_when_zero_is_in_the_hull() -> None:
    jacobian = torch.tensor(
        [[2.0, 0.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, 0.0]], dtype=torch.float64
    )
    assert float(agg.MGDA()(jacobian).norm()) <= 1e-6


def _cagrad_reference(jacobian: Tensor, c: float) -> tuple[Tensor, float]:
    """``argmax_{‖d − g₀‖ ≤ c‖g₀‖} minᵢ gᵢ·d`` and its value, by SLSQP over ``(d, z)``."""
    j = jacobian.double().cpu().numpy()
    g0 = j.mean(axis=0)
    radius = c * float((g0 @ g0) ** 0.5)
    n = j.shape[1]
    constraints = [
        {"type": "ineq", "fun": lambda x: j @ x[:n] - x[n], "jac": lambda x: _dz(j)},
        {
            "type": "ineq",
            "fun": lambda x: radius**2 - ((x[:n] - g0) ** 2).sum(),
            "jac": lambda x: _append(-2 * (x[:n] - g0), 0.0),
        },
    ]
    start = _append(g0, float((j @ g0).min()))
    result = minimize(
        lambda x: -x[n],
        start,
        jac=lambda x: _append(0 * x[:n], -1.0),
        constraints=constraints,
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return on_device(torch.from_numpy(result.x[:n])), float(result.x[n])


def _dz(j: np.ndarray) -> np.ndarray:
    return np.hstack([j, -np.ones((j.shape[0], 1))])


def _append(x: np.ndarray, value: float) -> np.ndarray:
    return np.append(x, value)


def _check_cagrad(jacobian: Tensor, c: float) -> None:
    update = agg.CAGrad(c=c)(jacobian)
    g0 = jacobian.mean(dim=0)
    expected, value = _cagrad_reference(jacobian, c)
    scale = float(jacobian.norm(dim=1).max()) ** 2
    assert float((update - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-9) + 1e-12
    assert float((jacobian @ update).min()) >= value - 1e-7 * scale
    assert torch.allclose(update, expected, atol=1e-5 * scale**0.5)


def test_cagrad_is_zero_when_the_ball_reaches_a_hull_containing_zero() -> None:
    """0 is in the rows' hull (no update improves every row) and ``c = 1`` puts 0 in the ball:
    the best worst-case improvement is 0, reached by the zero update."""
    jacobian = torch.tensor(
        [[2.0, 0.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, 0.0]], dtype=torch.float64
    )
    assert torch.allclose(agg.CAGrad(c=1.0)(jacobian), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("c", [0.1, 0.5, 0.9])
def test_cagrad_with_zero_in_the_hull_matches_its_definition(c: float) -> None:
    jacobian = torch.tensor(
        [[2.0, 0.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, 0.0]], dtype=torch.float64
    )
    _check_cagrad(jacobian, c)


@pytest.mark.parametrize("seed", [0, 1, 2, 12, 31])
@pytest.mark.parametrize(("m", "n", "c"), [(4, 3, 0.5), (3, 3, 0.4), (20, 10, 0.5), (6, 30, 0.9)])
def test_cagrad_matches_its_definition(m: int, n: int, c: float, seed: int) -> None:
    g = seeded(seed)
    _check_cagrad(draw(m, n, generator=g, dtype=torch.float64), c)


@pytest.mark.parametrize("seed", range(3))
def test_cagrad_matches_its_definition_on_rank_deficient_jacobians(seed: int) -> None:
    g = seeded(seed)
    a = draw(8, 2, generator=g, dtype=torch.float64)
    _check_cagrad(a @ draw(2, 6, generator=g, dtype=torch.float64), 0.5)


def test_cagrad_on_a_rank_deficient_float32_jacobian_converges() -> None:
    jacobian = _low_rank(64, 20, 17, torch.float32)
    update = agg.CAGrad(c=0.5)(jacobian)  # no warning (warnings are errors here)
    g0 = jacobian.mean(dim=0)
    assert float((update - g0).norm()) <= 0.5 * float(g0.norm()) * (1 + 1e-5)


@pytest.mark.parametrize("c", [0.5, 1.0])
def test_cagrad_without_norm_eps_is_zero_when_zero_is_in_the_hull(c: float) -> None:
    """``norm_eps=0``: a zero ``g_w*`` still gives zero weights (no division by zero, no
    endless search)."""
    jacobian = torch.tensor([[0.0, 0, 0], [1.0, 0.2, 0], [0.5, 1, 0.1]], dtype=torch.float64)
    update = agg.CAGrad(c=c, norm_eps=0.0)(jacobian)
    assert torch.equal(update, torch.zeros(3, dtype=torch.float64))
