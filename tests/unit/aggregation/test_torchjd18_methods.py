"""The methods TorchJD 0.18 added: golden values derived by hand from the papers' definitions
(the derivation in each test's docstring), their errors, and a step of JDOptimizer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import jdopt.aggregation as agg

from ._jdoptimizer_steps import check_jdoptimizer_step

F64 = torch.float64


def _t(*rows: object) -> Tensor:
    return torch.tensor(rows, dtype=F64)


def test_fairgrad_orthogonal_rows_solve_each_equation_alone() -> None:
    """Orthogonal rows: ``G = diag(‖gᵢ‖²)``, so ``‖gᵢ‖² xᵢ = xᵢ^(−1/α)`` gives
    ``xᵢ = ‖gᵢ‖^(−2α/(1+α))`` and the update's coordinate ``‖gᵢ‖ xᵢ = ‖gᵢ‖^((1−α)/(1+α))``.
    Norms 1, 2, 3 with ``α = ½``: ``(1, 2^⅓, 3^⅓)``; norms 3, 4 with ``α = 2``: ``(3^−⅓, 4^−⅓)``."""
    jacobian = torch.diag(_t(1.0, 2.0, 3.0))
    expected = _t(1.0, 2 ** (1 / 3), 3 ** (1 / 3))
    assert torch.allclose(agg.FairGrad(alpha=0.5)(jacobian), expected, rtol=1e-7, atol=0)
    jacobian = torch.diag(_t(3.0, 4.0))
    expected = _t(3 ** (-1 / 3), 4 ** (-1 / 3))
    assert torch.allclose(agg.FairGrad(alpha=2.0)(jacobian), expected, rtol=1e-7, atol=0)


def test_fairgrad_symmetric_pairs() -> None:
    """Two rows of equal norm give equal weights ``t`` with ``(‖g‖² + g₁·g₂) t = t^(−1/α)``.
    ``g₁ = (2, 0)``, ``g₂ = (1, √3)``: ``G = [[4, 2], [2, 4]]``, ``α = 1``: ``6t = 1/t``,
    ``t = 1/√6``. ``g₁ = (1, 0)``, ``g₂ = (−½, √3/2)`` (120° apart): ``G = [[1, −½], [−½, 1]]``,
    ``α = 1``: ``t/2 = 1/t``, ``t = √2``; each row then gets the progress ``1/t = 1/√2 > 0``."""
    jacobian = _t([2.0, 0.0], [1.0, math.sqrt(3)])
    expected = _t(3.0, math.sqrt(3)) / math.sqrt(6)
    assert torch.allclose(agg.FairGrad(alpha=1.0)(jacobian), expected, rtol=1e-7, atol=0)
    jacobian = _t([1.0, 0.0], [-0.5, math.sqrt(3) / 2])
    update = agg.FairGrad(alpha=1.0)(jacobian)
    assert torch.allclose(update, math.sqrt(2) * _t(0.5, math.sqrt(3) / 2), rtol=1e-7, atol=0)
    assert torch.allclose(jacobian @ update, _t(1.0, 1.0) / math.sqrt(2), rtol=1e-7, atol=0)


def test_fairgrad_weights_scale_as_a_power_of_the_gramian() -> None:
    """``G → sG`` and ``x → s^(−α/(1+α)) x`` keep ``Gx = x^(−1/α)`` (both sides gain the factor
    ``s^(1/(1+α))``); and the weights solve that system."""
    jacobian = _t([1.0, 2.0, 0.0], [-1.0, 0.5, 1.0], [0.0, 1.0, -2.0])
    gramian = jacobian @ jacobian.T
    weights = agg.FairGradWeighting(alpha=3.0)(gramian)
    scaled = agg.FairGradWeighting(alpha=3.0)(100.0 * gramian)
    assert torch.allclose(scaled, 100.0 ** (-3 / 4) * weights, rtol=1e-7, atol=0)
    assert torch.allclose(gramian @ weights, weights ** (-1 / 3), rtol=1e-6, atol=0)


def test_fairgrad_alpha_zero_is_the_mean_and_a_zero_row_gets_no_weight() -> None:
    """``α = 0`` is linear scalarisation with weights ``1/m``; a zero row has ``(Gx)ᵢ = 0``,
    which no ``xᵢ > 0`` solves: it gets weight 0 and the others solve their own system."""
    gramian = _t([4.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0])
    assert torch.equal(agg.FairGradWeighting(alpha=0.0)(gramian), _t(1.0, 1.0, 1.0) / 3)
    weights = agg.FairGradWeighting(alpha=1.0)(gramian)
    assert weights[2] == 0.0
    assert torch.allclose(gramian[:2, :2] @ weights[:2], 1 / weights[:2], rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"alpha": "1"}, TypeError, "alpha"),
        ({"alpha": math.inf}, ValueError, "alpha"),
        ({"alpha": 1.0, "max_iters": 0}, ValueError, "max_iters"),
        ({"alpha": 1.0, "max_iters": 2.5}, TypeError, "max_iters"),
    ],
)
def test_fairgrad_rejects_bad_hyperparameters(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        agg.FairGrad(**kwargs)


def test_fairgrad_raises_when_newton_does_not_converge() -> None:
    """One iteration from the diagonal start cannot solve a strongly coupled system."""
    jacobian = _t([1.0, 0.0], [0.99, 0.1])
    with pytest.raises(RuntimeError, match="max_iters=1"):
        agg.FairGrad(alpha=1.0, max_iters=1)(jacobian)


def test_fairgrad_steps_jdoptimizer_on_the_gramian_engine() -> None:
    check_jdoptimizer_step(agg.FairGrad(alpha=2.0), agg.FairGrad(alpha=2.0), "autogram")


def _pcd(tau: float | Tensor, beta: float = 0.0) -> agg.PCD:
    """With ``eps = 0`` and ``beta = 0`` the normalised rows are the unit rows ``gᵢ/‖gᵢ‖``."""
    return agg.PCD(tau=tau, beta=beta, eps=0.0)


def test_pcd_projects_the_primary_row_onto_the_constraints() -> None:
    """Unit rows ``(1, 0)`` and ``(0, 1)``, ``τ = ½``: the closest ``d`` to ``(1, 0)`` with
    ``d₂ ≥ ½`` is ``(1, ½)``, rescaled to ``‖g₁‖ = 2``. Three orthogonal rows with
    ``τ = (0.2, 0.4)``: ``d = (1, 0.2, 0.4)``, rescaled to ``‖g₁‖ = 1``. A met constraint
    (``g̃₂·g̃₁ = 1/√2 ≥ ½``) leaves ``g₁`` as it is."""
    update = _pcd(0.5)(_t([2.0, 0.0], [0.0, 3.0]))
    assert torch.allclose(update, 2 * _t(1.0, 0.5) / math.sqrt(1.25), rtol=1e-12, atol=0)
    update = _pcd(_t(0.2, 0.4))(torch.diag(_t(1.0, 5.0, 0.5)))
    assert torch.allclose(update, _t(1.0, 0.2, 0.4) / math.sqrt(1.2), rtol=1e-12, atol=0)
    assert torch.allclose(_pcd(0.5)(_t([2.0, 0.0], [1.0, 1.0])), _t(2.0, 0.0), rtol=1e-12)


def test_pcd_special_cases() -> None:
    """Opposite secondary rows cannot both gain: the constraints are dropped and the update is
    ``g₁``. A zero primary row gives a zero update."""
    jacobian = _t([1.0, 1.0], [0.0, 1.0], [0.0, -2.0])
    assert torch.allclose(_pcd(0.1)(jacobian), _t(1.0, 1.0), rtol=1e-12, atol=0)
    assert torch.equal(_pcd(0.1)(_t([0.0, 0.0], [0.0, 1.0])), _t(0.0, 0.0))


def test_pcd_normalises_by_the_debiased_moving_average() -> None:
    """``β = ½``: after ``‖g₂‖² = 1`` then ``9``, ``v̂₂ = (¼·1 + ½·9)/(1 − ¼) = 19/3``, so
    ``g̃₂ = (0, c)`` with ``c = 3√(3/19)`` (``g̃₁ = (1, 0)`` throughout). ``c·d₂ ≥ ½c²`` gives
    ``d = (1, c/2)``, rescaled to norm 1. The same second call after :meth:`reset`, or with
    ``β = 0``, sees ``c = 1``. Loading the state after the first call resumes exactly. (With
    ``eps = 0`` the debiasing factor, common to every row, cancels in the rescaling.)"""
    first, second = _t([1.0, 0.0], [0.0, 1.0]), _t([1.0, 0.0], [0.0, 3.0])
    c = 3 * math.sqrt(3 / 19)
    pcd = _pcd(0.5, beta=0.5)
    pcd(first)
    resumed = _pcd(0.5, beta=0.5)
    resumed.load_state_dict(pcd.state_dict())
    expected = _t(1.0, c / 2) / math.sqrt(1 + c**2 / 4)
    assert torch.allclose(pcd(second), expected, rtol=1e-12, atol=0)
    assert torch.allclose(resumed(second), expected, rtol=1e-12, atol=0)
    pcd.reset()
    assert torch.allclose(pcd(second), _t(1.0, 0.5) / math.sqrt(1.25), rtol=1e-12, atol=0)


def test_pcd_eps_is_added_to_the_debiased_average() -> None:
    """One call, ``β = ½``, ``eps = 1``: ``v̂ = ‖gᵢ‖²`` (debiased), so ``g₁ = (1, 0)`` and
    ``g₂ = (0, √3)`` become ``(1/√2, 0)`` and ``(0, √3/2)``; ``(√3/2)·d₂ ≥ ½·¾`` gives
    ``d = (1/√2, √3/4)``, rescaled to norm 1."""
    update = agg.PCD(tau=0.5, beta=0.5, eps=1.0)(_t([1.0, 0.0], [0.0, math.sqrt(3)]))
    direction = _t(1 / math.sqrt(2), math.sqrt(3) / 4)
    assert torch.allclose(update, direction / direction.norm(), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tau": 1.5}, ValueError, r"\[0, 1\]"),
        ({"tau": -0.1}, ValueError, "tau"),
        ({"tau": "0.1"}, TypeError, "tau"),
        ({"tau": _t([0.1, 0.2])}, ValueError, "tau"),
        ({"tau": _t(0.1, 2.0)}, ValueError, r"\[0, 1\]"),
        ({"beta": 1.0}, ValueError, "beta"),
        ({"eps": -1.0}, ValueError, "eps"),
    ],
)
def test_pcd_rejects_bad_hyperparameters(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        agg.PCD(**kwargs)


def test_pcd_needs_one_tau_per_secondary_row() -> None:
    with pytest.raises(ValueError, match="2 secondary objectives"):
        agg.PCD(tau=_t(0.1))(torch.eye(3, dtype=F64))


def test_pcd_steps_jdoptimizer_on_the_gramian_engine() -> None:
    check_jdoptimizer_step(agg.PCD(tau=0.5), agg.PCD(tau=0.5), "autogram")
