"""ExcessMTL against its definition (He et al., ICML 2024), worked by hand, and TorchJD 0.18."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from jdopt import JDOptimizer
from jdopt.aggregation import ExcessMTL
from tests.utils.device import DEVICE, draw, seeded

F64 = torch.float64
FLOOR = 1e-7


def _jacobian() -> torch.Tensor:
    return torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64, device=DEVICE)


def _weights(method: ExcessMTL, jacobian: torch.Tensor) -> list[float]:
    return method.compute_weights(jacobian).tolist()


def test_two_calls_worked_by_hand() -> None:
    """J = diag(1, 2), η = 1, no warm-up. Call 1: Σg² = J², Ê = (1/√(1+ε), 4/√(4+ε)) is the
    baseline, used raw: w = softmax(log ½ + Ê). Call 2, same J: Σg² = 2J², Ê = (1/√(2+ε),
    4/√(8+ε)), divided by the baseline (+ε): w ← softmax(log w + Ê / Ê₀)."""
    method = ExcessMTL()
    first = [1 / math.sqrt(1 + FLOOR), 4 / math.sqrt(4 + FLOOR)]
    w = [math.exp(e) / (math.exp(first[0]) + math.exp(first[1])) for e in first]
    assert _weights(method, _jacobian()) == pytest.approx(w, rel=1e-14)
    second = [1 / math.sqrt(2 + FLOOR), 4 / math.sqrt(8 + FLOOR)]
    logits = [math.log(w[i]) + second[i] / (first[i] + FLOOR) for i in range(2)]
    total = sum(math.exp(v) for v in logits)
    assert _weights(method, _jacobian()) == pytest.approx(
        [math.exp(v) / total for v in logits], rel=1e-13
    )


def test_warm_up_calls_return_uniform_weights_and_set_the_baseline() -> None:
    """Two warm-up calls with J = diag(1, 2): ½ each time; the baseline is their mean Ê."""
    method = ExcessMTL(robust_step_size=0.5, n_warmup_steps=2)
    assert _weights(method, _jacobian()) == [0.5, 0.5]
    assert _weights(method, _jacobian()) == [0.5, 0.5]
    e = [[a / math.sqrt(k * a + FLOOR) for a in (1.0, 4.0)] for k in (1, 2, 3)]
    baseline = [(e[0][i] + e[1][i]) / 2 for i in range(2)]
    logits = [math.log(0.5) + 0.5 * e[2][i] / (baseline[i] + FLOOR) for i in range(2)]
    total = sum(math.exp(v) for v in logits)
    assert _weights(method, _jacobian()) == pytest.approx(
        [math.exp(v) / total for v in logits], rel=1e-13
    )


def test_resume_reset_and_errors() -> None:
    jacobians = [draw(3, 5, generator=seeded(i), dtype=F64) for i in range(6)]
    method = ExcessMTL(n_warmup_steps=1)
    first = [method(j) for j in jacobians[:3]]
    saved = copy.deepcopy(method.state_dict())
    expected = [method(j) for j in jacobians[3:]]
    resumed = ExcessMTL(n_warmup_steps=1)
    resumed.load_state_dict(saved)
    assert all(torch.equal(resumed(j), e) for j, e in zip(jacobians[3:], expected, strict=True))
    method.reset()
    assert all(torch.equal(method(j), f) for j, f in zip(jacobians[:3], first, strict=True))
    with pytest.raises(ValueError, match="reset"):
        method(draw(2, 5, generator=seeded(0), dtype=F64))
    with pytest.raises(ValueError, match="robust_step_size"):
        ExcessMTL(robust_step_size=0.0)


def test_it_steps_in_jdoptimizer_on_the_full_jacobian() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(DEVICE, F64)
    method = ExcessMTL()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=method)
    before = model.weight.detach().clone()
    for step in range(3):
        jd.zero_grad()
        jd.step(model(draw(8, 4, generator=seeded(step), dtype=F64)).pow(2).mean(dim=0))
    assert jd.last_step.engine == "autojac" and not torch.equal(model.weight, before)
    assert method.state_dict()["weighting._extra_state"]["_calls"] == 3


@pytest.mark.parametrize("warm_up", [0, 2])
def test_it_agrees_with_torchjd_over_several_calls(warm_up: int) -> None:
    theirs = pytest.importorskip("torchjd.aggregation")
    if not hasattr(theirs, "ExcessMTL"):
        pytest.skip("TorchJD < 0.18")
    ours, reference = ExcessMTL(0.7, warm_up), theirs.ExcessMTL(0.7, warm_up)
    for step in range(5):
        jacobian = draw(3, 6, generator=seeded(step), dtype=F64)
        expected = reference(jacobian.cpu()).to(jacobian)
        assert torch.allclose(ours(jacobian), expected, rtol=1e-12, atol=1e-14)
