"""MoCo against its definition (Algorithm 1 of Fernando et al., ICLR 2023), worked by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from jdopt import JDOptimizer
from jdopt.aggregation._moco import MoCo, project_onto_simplex
from tests.utils.device import DEVICE, draw, seeded

F64 = torch.float64


def _tensor(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64, device=DEVICE)


def test_two_calls_worked_by_hand() -> None:
    """J₁ = diag(2, 1): Y = J₁, G = diag(4, 1), λ = Π(½ − 0.1·(2, ½)) = Π(0.3, 0.45) =
    (0.425, 0.575) (τ = −0.125), update = (0.85, 0.575).

    J₂ = diag(0, 1): β₂ = 0.5/√2, Y = diag(2(1 − β₂), 1), γ₂ = 0.1/√2,
    λ = Π(λ − γ₂ Y Yᵀ λ), update = λᵀY."""
    moco = MoCo()
    first = moco(_tensor([[2.0, 0.0], [0.0, 1.0]]))
    assert first.tolist() == pytest.approx([0.85, 0.575], rel=1e-14)
    beta, gamma = 0.5 / math.sqrt(2), 0.1 / math.sqrt(2)
    y11 = 2 * (1 - beta)
    step = [0.425 - gamma * y11**2 * 0.425, 0.575 - gamma * 0.575]
    tau = (sum(step) - 1) / 2
    weights = [step[0] - tau, step[1] - tau]
    second = moco(_tensor([[0.0, 0.0], [0.0, 1.0]]))
    assert second.tolist() == pytest.approx([weights[0] * y11, weights[1]], rel=1e-13)


@pytest.mark.parametrize(
    ("vector", "expected"),
    [
        ([0.5, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]),
        ([2.0, 0.0, -1.0], [1.0, 0.0, 0.0]),
        ([0.6, 0.3, 0.2], [0.6 - 0.1 / 3, 0.3 - 0.1 / 3, 0.2 - 0.1 / 3]),
        ([0.0, 0.0], [0.5, 0.5]),
    ],
)
def test_the_simplex_projection_by_hand(vector: list[float], expected: list[float]) -> None:
    found = project_onto_simplex(torch.tensor(vector, dtype=F64))
    assert found.tolist() == pytest.approx(expected, abs=1e-15)


def test_a_fixed_jacobian_drives_the_weights_to_mgdas() -> None:
    """With J fixed, Y = J and λ descends ½λᵀJJᵀλ on the simplex: for rows (1, 0) and (0, 2),
    MGDA's minimum-norm point has λ = (0.8, 0.2) (‖λᵀJ‖² = λ₁² + 4λ₂²)."""
    moco = MoCo(gamma=0.5, gamma_sigma=0.0)
    jacobian = _tensor([[1.0, 0.0], [0.0, 2.0]])
    for _ in range(200):
        update = moco(jacobian)
    assert update.tolist() == pytest.approx([0.8, 0.4], rel=1e-9)


def test_resume_and_reset() -> None:
    def jacobians(seed: int) -> list[torch.Tensor]:
        return [draw(3, 5, generator=seeded(seed + i), dtype=F64) for i in range(4)]

    moco = MoCo()
    for j in jacobians(0):
        moco(j)
    saved = copy.deepcopy(moco.state_dict())
    expected = [moco(j) for j in jacobians(10)]
    resumed = MoCo()
    resumed.load_state_dict(saved)
    assert all(torch.equal(resumed(j), e) for j, e in zip(jacobians(10), expected, strict=True))
    moco.reset()
    fresh = MoCo()
    assert all(torch.equal(moco(j), fresh(j)) for j in jacobians(0))


def test_errors() -> None:
    with pytest.raises(ValueError, match="beta"):
        MoCo(beta=1.5)
    with pytest.raises(ValueError, match="gamma"):
        MoCo(gamma=0.0)
    moco = MoCo()
    moco(_tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="reset"):
        moco(_tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_moco_steps_in_jdoptimizer() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2).to(DEVICE, F64)
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=MoCo())
    x = draw(8, 4, generator=seeded(0), dtype=F64)
    before = model.weight.detach().clone()
    for _ in range(3):
        jd.zero_grad()
        jd.step(model(x).pow(2).mean(dim=0))
    assert jd.last_step.engine == "autojac" and not torch.equal(model.weight, before)
    assert "jdopt" in jd.state_dict()
