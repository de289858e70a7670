"""Each scalarizer against its definition, on values small enough to compute by hand."""

from __future__ import annotations

import math

import pytest
import torch

from jdopt.scalarization import (
    COSMOS,
    DWA,
    FAMO,
    IMTLL,
    PBI,
    STCH,
    UW,
    Constant,
    GeometricMean,
    Mean,
    Random,
    Sum,
)
from tests.utils.device import DEVICE, seeded

F64 = torch.float64


def _values(*entries: float) -> torch.Tensor:
    return torch.tensor(entries, dtype=F64, device=DEVICE, requires_grad=True)


def _value_and_grad(scalarizer, values: torch.Tensor) -> tuple[float, torch.Tensor]:
    out = scalarizer.to(DEVICE)(values)
    (grad,) = torch.autograd.grad(out, values)
    return float(out.detach()), grad


def test_sum_mean_and_constant_weight_the_values_linearly() -> None:
    v = _values(1.0, 2.0, 3.0)
    assert _value_and_grad(Sum(), v)[0] == 6.0
    value, grad = _value_and_grad(Mean(), v)
    assert value == 2.0 and torch.allclose(grad, torch.full_like(grad, 1 / 3))
    weights = torch.tensor([1.0, 0.0, 2.0], dtype=F64)
    value, grad = _value_and_grad(Constant(weights), v)
    assert value == 7.0 and torch.equal(grad, weights.to(DEVICE))


def test_the_geometric_mean_weights_each_loss_by_the_mean_over_m_times_the_loss() -> None:
    """(1·2·3)^(1/3) = 6^(1/3); ∂/∂Lᵢ = GM / (3 Lᵢ)."""
    value, grad = _value_and_grad(GeometricMean(), _values(1.0, 2.0, 3.0))
    gm = 6 ** (1 / 3)
    assert value == pytest.approx(gm, rel=1e-14)
    expected = torch.tensor([gm / 3, gm / 6, gm / 9], dtype=F64, device=DEVICE)
    assert torch.allclose(grad, expected, rtol=1e-14, atol=0)


def test_random_weights_are_positive_sum_to_one_and_follow_the_generator() -> None:
    v = _values(1.0, 2.0, 3.0, 4.0)
    _, first = _value_and_grad(Random(generator=seeded(3)), v)
    _, again = _value_and_grad(Random(generator=seeded(3)), v)
    _, other = _value_and_grad(Random(generator=seeded(4)), v)
    assert (first > 0).all() and float(first.sum()) == pytest.approx(1.0, rel=1e-14)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_stch_is_mu_log_sum_exp_of_the_weighted_gaps() -> None:
    """μ = 0.5, λ = 1/3, z = 0: 0.5 log(e^(2/3) + e^(4/3) + e^2); with z = (1, 2, 3), every
    gap is 0: 0.5 log 3."""
    v = _values(1.0, 2.0, 3.0)
    value, grad = _value_and_grad(STCH(0.5), v)
    assert value == pytest.approx(0.5 * math.log(math.exp(2 / 3) + math.exp(4 / 3) + math.e**2))
    assert float(grad.sum()) == pytest.approx(1 / 3, rel=1e-12)  # softmax weights times λ
    reference = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    assert _value_and_grad(STCH(0.5, reference=reference), v)[0] == pytest.approx(0.5 * math.log(3))


def test_pbi_adds_theta_times_the_distance_to_the_preference_direction() -> None:
    """w = (1, 1, 1): d₁ = 6/√3; L − d₁ŵ = (−1, 0, 1), d₂ = √2; θ = 5."""
    value, _ = _value_and_grad(PBI(5.0, torch.ones(3, dtype=F64)), _values(1.0, 2.0, 3.0))
    assert value == pytest.approx(6 / math.sqrt(3) + 5 * math.sqrt(2 + 1e-12), rel=1e-12)


def test_cosmos_subtracts_lambda_times_the_cosine_of_values_and_preferences() -> None:
    """r = (1, 1, 1): 6 − 6 / (√3 √14)."""
    value, _ = _value_and_grad(COSMOS(1.0, torch.ones(3, dtype=F64)), _values(1.0, 2.0, 3.0))
    assert value == pytest.approx(6 - 6 / (math.sqrt(3) * math.sqrt(14)), rel=1e-14)


def test_uw_and_imtll_at_their_parameters() -> None:
    """UW: Σ ½e^(−s)L + ½s; IMTL-L: Σ e^(s)L − s; at s = (0, log 2)."""
    v = _values(1.0, 4.0)
    uw, imtll = UW(2).double(), IMTLL(2).double()
    with torch.no_grad():
        uw.log_var.copy_(torch.tensor([0.0, math.log(2)]))
        imtll.log_scale.copy_(torch.tensor([0.0, math.log(2)]))
    assert _value_and_grad(uw, v)[0] == pytest.approx(0.5 + 0.5 * 4 / 2 + 0.5 * math.log(2))
    assert _value_and_grad(imtll, v)[0] == pytest.approx(1 + 2 * 4 - math.log(2))
    out = uw(v)
    (grad,) = torch.autograd.grad(out, uw.log_var)  # ½ − ½e^(−s)L
    assert torch.allclose(grad, torch.tensor([0.5 - 0.5, 0.5 - 0.5 * 4 / 2], dtype=F64))


def test_dwa_weights_by_the_softmax_of_the_last_two_epochs_loss_ratios() -> None:
    """Epoch averages (1, 1) then (0.5, 1): ratios (0.5, 1), weights 2 softmax(ratios / 2)."""
    dwa = DWA(temperature=2.0)
    for epoch in ([[1.0, 1.0], [1.0, 1.0]], [[0.4, 1.0], [0.6, 1.0]]):
        for batch in epoch:
            assert _value_and_grad(dwa, _values(*batch))[1].tolist() == [1.0, 1.0]
        dwa.step()
    _, grad = _value_and_grad(dwa, _values(3.0, 5.0))
    e1, e2 = math.exp(0.25), math.exp(0.5)
    assert grad.tolist() == pytest.approx([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], rel=1e-12)
    dwa.reset()
    assert _value_and_grad(dwa, _values(3.0, 5.0))[1].tolist() == [1.0, 1.0]


def test_famo_combines_the_log_losses_into_a_convex_combination_of_gradients() -> None:
    """z = (½, ½): c = 1 / Σ zᵢ/ℓᵢ; the gradient c zᵢ / ℓᵢ sums to 1."""
    famo = FAMO(2)
    v = _values(1.0, 4.0)
    value, grad = _value_and_grad(famo, v)
    c = 1 / (0.5 / (1 + 1e-8) + 0.5 / (4 + 1e-8))
    assert value == pytest.approx(c * 0.5 * (math.log(1 + 1e-8) + math.log(4 + 1e-8)))
    assert float(grad.sum()) == pytest.approx(1.0, rel=1e-12)
    assert grad[0] > grad[1]  # the smaller loss weighs more


@pytest.mark.parametrize("protocol", ["next call", "update"])
def test_famo_lowers_the_weight_of_the_loss_that_fell_faster(protocol: str) -> None:
    """ℓ: (2, 1) → (1, 1): δ = (log 2, 0), ∂(zᵀδ)/∂w = z ⊙ (δ − zᵀδ) = (¼ log 2, −¼ log 2);
    Adam's first step moves each logit by −lr · sign: w = (−0.025, 0.025), up to Adam's ε."""
    famo = FAMO(2).double()
    famo(_values(2.0, 1.0))
    if protocol == "update":
        famo.update(torch.tensor([1.0, 1.0], dtype=F64))
        famo(_values(1.0, 1.0))  # no second update
    else:
        famo(_values(1.0, 1.0))
    step = 0.025 * (0.25 * math.log(2)) / (0.25 * math.log(2) + 1e-8)
    assert famo.logits.tolist() == pytest.approx([-step, step], rel=1e-12)


def test_famo_update_before_a_call_raises() -> None:
    with pytest.raises(ValueError, match="needs the losses of a call first"):
        FAMO(2).update(torch.ones(2))
