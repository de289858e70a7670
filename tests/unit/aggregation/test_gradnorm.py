"""GradNorm against its definition (Algorithm 1 of Chen et al., ICML 2018), worked by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from jdopt import JDOptimizer
from jdopt.aggregation._gradnorm import GradNorm, GradNormWeighting
from tests.utils.device import DEVICE, draw, seeded

F64 = torch.float64


def _tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, device=DEVICE)


def test_two_calls_worked_by_hand() -> None:
    """G = diag(4, 1): norms (2, 1); α = 1, lr = 0.1.

    Call 1, L = (1, 1) = L(0): returns w = (1, 1); wᵢ‖gᵢ‖ = (2, 1), mean 1.5, r = (1, 1),
    targets (1.5, 1.5), signs (+, −): w = (0.8, 1.1) · 2 / 1.9.
    Call 2, L = (0.5, 1): returns that w; L̃ = (0.5, 1), r = (2/3, 4/3), targets
    mean(w‖g‖) · r; signs (+, −) again: w − 0.1 (2, −1), renormalised to sum 2."""
    weighting = GradNormWeighting(alpha=1.0, lr=0.1)
    gramian = _tensor([[4.0, 0.0], [0.0, 1.0]])
    weighting.observe_losses(_tensor([1.0, 1.0]))
    assert weighting(gramian).tolist() == [1.0, 1.0]
    w = [0.8 * 2 / 1.9, 1.1 * 2 / 1.9]
    weighting.observe_losses(_tensor([0.5, 1.0]))
    assert weighting(gramian).tolist() == pytest.approx(w, rel=1e-14)
    mean = (2 * w[0] + w[1]) / 2
    targets = [mean * 2 / 3, mean * 4 / 3]
    assert 2 * w[0] > targets[0] and w[1] < targets[1]  # the signs used below
    stepped = [w[0] - 0.1 * 2, w[1] + 0.1 * 1]
    expected = [v * 2 / sum(stepped) for v in stepped]
    weighting.observe_losses(_tensor([0.5, 1.0]))
    assert weighting(gramian).tolist() == pytest.approx(expected, rel=1e-14)


def test_alpha_zero_balances_the_weighted_norms() -> None:
    """With α = 0 every target is the mean weighted norm: w‖g‖ tends to equal entries."""
    weighting = GradNormWeighting(alpha=0.0, lr=0.01)
    gramian = _tensor([[9.0, 1.0], [1.0, 1.0]])
    for _ in range(400):
        weighting.observe_losses(_tensor([1.0, 2.0]))
        weights = weighting(gramian)
    # From 3 : 1 at w = (1, 1) to within the sign steps' oscillation (lr · norm) of 1 : 1.
    assert float(weights[0] * 3 / weights[1]) == pytest.approx(1.0, abs=0.1)
    assert float(weights.sum()) == pytest.approx(2.0, rel=1e-12)


def test_without_losses_every_task_trains_at_the_same_rate() -> None:
    """No observed losses: r = (1, 1), whatever α: the step of α = 0 with equal losses."""
    gramian = _tensor([[4.0, 0.0], [0.0, 1.0]])
    alone, reference = GradNormWeighting(alpha=3.0), GradNormWeighting(alpha=0.0)
    for _ in range(3):
        reference.observe_losses(_tensor([2.0, 5.0]))
        assert torch.equal(alone(gramian), reference(gramian))
    with pytest.raises(ValueError, match="one loss per objective"):
        alone.observe_losses(_tensor([1.0, 2.0, 3.0]))
        alone(gramian)


def test_resume_and_reset() -> None:
    gramians = [(lambda a: a @ a.T)(draw(3, 4, generator=seeded(i), dtype=F64)) for i in range(6)]
    losses = [1.0 + draw(3, generator=seeded(50 + i), dtype=F64).abs() for i in range(6)]

    def run(weighting: GradNormWeighting, steps: range) -> list[torch.Tensor]:
        found = []
        for i in steps:
            weighting.observe_losses(losses[i])
            found.append(weighting(gramians[i]))
        return found

    weighting = GradNormWeighting()
    first = run(weighting, range(3))
    saved = copy.deepcopy(weighting.state_dict())
    expected = run(weighting, range(3, 6))
    resumed = GradNormWeighting()
    resumed.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(run(resumed, range(3, 6)), expected, strict=True))
    weighting.reset()
    assert all(torch.equal(a, b) for a, b in zip(run(weighting, range(3)), first, strict=True))


def test_jdoptimizer_gives_it_the_losses_on_the_gramian_engine() -> None:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh()).to(DEVICE, F64)
    heads = nn.ModuleList(nn.Linear(6, 1) for _ in range(3)).to(DEVICE, F64)
    params = [*trunk.parameters(), *heads.parameters()]
    method = GradNorm()
    optimizer = torch.optim.SGD(params, lr=0.05)
    jd = JDOptimizer(optimizer, aggregator=method, model=trunk, engine="autogram")
    for step in range(4):
        features = trunk(draw(16, 4, generator=seeded(step), dtype=F64))
        losses = torch.stack([(3**t) * h(features).pow(2).mean() for t, h in enumerate(heads)])
        jd.zero_grad()
        jd.step(losses, features=features)
    assert jd.last_step.engine == "autogram-mtl"
    weights = jd.last_step.weights
    assert float(weights.sum()) == pytest.approx(3.0, rel=1e-12)
    assert not torch.equal(weights, torch.ones_like(weights))
