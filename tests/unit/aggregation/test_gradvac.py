"""GradVac against its definition (Wang et al., ICLR 2021), worked by hand, and TorchJD 0.18."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from jdopt.aggregation import GradVac, GradVacWeighting
from tests.utils.device import DEVICE, draw, seeded

F64 = torch.float64


def _gramian(rows) -> torch.Tensor:
    jacobian = torch.tensor(rows, dtype=F64, device=DEVICE)
    return jacobian @ jacobian.T


def test_a_first_call_worked_by_hand() -> None:
    """g₁ = (1, 0), g₂ = (−1, 1), targets 0, ε = 0: cos = −1/√2 < 0 for both pairs.
    i = 1: step = ‖g₁‖ (0 − cos·1) / ‖g₂‖ = 1/2, g′₁ = g₁ + ½g₂ = (½, ½), orthogonal to g₂.
    i = 2: step = ‖g₂‖ (−cos) / ‖g₁‖ = 1, g′₂ = g₂ + g₁ = (0, 1), orthogonal to g₁.
    Weights: the column sums of C = [[1, ½], [1, 1]]: (2, 3/2). Targets: β cos = −1/(2√2)."""
    weighting = GradVacWeighting(beta=0.5, eps=0.0, generator=seeded(0))
    weights = weighting(_gramian([[1.0, 0.0], [-1.0, 1.0]]))
    assert weights.tolist() == pytest.approx([2.0, 1.5], rel=1e-14)
    targets = weighting.state_dict()["_extra_state"]["targets"]
    expected = -1 / (2 * math.sqrt(2))
    assert targets.flatten().tolist() == pytest.approx([0.0, expected, expected, 0.0], rel=1e-14)


def test_rows_above_their_targets_are_left_alone() -> None:
    """Aligned rows (cos > 0 = target): no correction, the weights are ones."""
    weights = GradVacWeighting(eps=0.0)(_gramian([[1.0, 0.0], [1.0, 1.0]]))
    assert weights.tolist() == [1.0, 1.0]


def test_the_generator_orders_and_resume_and_reset() -> None:
    gramians = [(lambda j: j @ j.T)(draw(4, 6, generator=seeded(i), dtype=F64)) for i in range(6)]

    def run(weighting: GradVacWeighting, steps: range) -> list[torch.Tensor]:
        return [weighting(gramians[i]) for i in steps]

    weighting = GradVacWeighting(generator=seeded(1))
    first = run(weighting, range(3))
    saved = copy.deepcopy(weighting.state_dict())
    expected = run(weighting, range(3, 6))
    resumed = GradVacWeighting(generator=seeded(99))
    resumed.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(run(resumed, range(3, 6)), expected, strict=True))
    again = GradVacWeighting(generator=seeded(1))
    assert all(torch.equal(a, b) for a, b in zip(run(again, range(3)), first, strict=True))


def test_errors() -> None:
    with pytest.raises(ValueError, match="beta"):
        GradVac(beta=2.0)
    with pytest.raises(ValueError, match="eps"):
        GradVacWeighting(eps=-1.0)


def test_it_agrees_with_torchjd_over_several_calls() -> None:
    """Both draw the orders with torch.randperm: from the same global seed, the same orders."""
    theirs = pytest.importorskip("torchjd.aggregation")
    if not hasattr(theirs, "GradVacWeighting"):
        pytest.skip("TorchJD < 0.18")
    for m in (2, 3, 6):
        ours, reference = GradVacWeighting(beta=0.3), theirs.GradVacWeighting(beta=0.3)
        for step in range(4):
            jacobian = draw(m, 7, generator=seeded(10 * m + step), dtype=F64)
            gramian = jacobian @ jacobian.T
            torch.manual_seed(step)
            found = ours(gramian)
            torch.manual_seed(step)
            expected = reference(gramian.cpu()).to(found)
            assert torch.allclose(found, expected, rtol=1e-12, atol=1e-14)
