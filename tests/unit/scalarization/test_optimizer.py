"""A scalarizer in JDOptimizer: one ordinary backward pass of the scalarized losses, learnable
parameters trained without being added by hand, state in ``state_dict``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from jdopt import JDOptimizer
from jdopt.scalarization import FAMO, UW, GeometricMean, Mean
from tests.utils.device import DEVICE, draw, seeded


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DEVICE, torch.float64)


def _losses(model: nn.Module, step: int = 0) -> torch.Tensor:
    x = draw(16, 4, generator=seeded(step), dtype=torch.float64)
    return model(x).pow(2).mean(dim=0) + 0.1  # three task losses, positive


def test_a_step_writes_the_gradient_of_the_scalarized_losses() -> None:
    model, reference = _model(), _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=GeometricMean())
    jd.step(_losses(model))
    GeometricMean()(_losses(reference)).backward()
    torch.optim.SGD(reference.parameters(), lr=0.1).step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=0, atol=1e-15)
    assert jd.engine == "losses" and jd.last_step.engine == "losses"
    assert jd.last_step.gramian is None and jd.last_step.weights is None


def test_learnable_parameters_join_the_optimizer_train_and_resume() -> None:
    model = _model()
    uw = UW(3).to(DEVICE, torch.float64)
    jd = JDOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), aggregator=uw)
    assert any(uw.log_var is p for p in jd.param_groups[-1]["params"])
    for step in range(3):
        jd.zero_grad()
        jd.step(_losses(model, step))
    assert uw.log_var.abs().min() > 0  # trained
    saved = copy.deepcopy(jd.state_dict()), copy.deepcopy(model.state_dict())
    for step in range(3, 5):
        jd.zero_grad()
        jd.step(_losses(model, step))
    expected = [p.detach().clone() for p in model.parameters()] + [uw.log_var.detach().clone()]
    resumed_model, resumed_uw = _model(), UW(3).to(DEVICE, torch.float64)
    resumed_model.load_state_dict(saved[1])
    optimizer = torch.optim.Adam(resumed_model.parameters(), lr=0.01)
    resumed = JDOptimizer(optimizer, aggregator=resumed_uw)
    resumed.load_state_dict(saved[0])
    assert torch.equal(resumed_uw.log_var, saved[0]["jdopt"]["aggregator"]["log_var"])
    for step in range(3, 5):
        resumed.zero_grad()
        resumed.step(_losses(resumed_model, step))
    found = [*resumed_model.parameters(), resumed_uw.log_var]
    assert all(torch.equal(a, b) for a, b in zip(found, expected, strict=True))


def test_famo_learns_its_weights_from_step_to_step_inside_the_optimizer() -> None:
    model = _model()
    famo = FAMO(3).to(DEVICE, torch.float64)
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), aggregator=famo)
    for step in range(3):
        jd.zero_grad()
        jd.step(_losses(model, step))
    assert famo.logits.abs().min() > 0
    assert not any(famo.logits is p for g in jd.param_groups for p in g["params"])


def test_the_scalarizer_sees_the_losses_unscaled_under_a_grad_scaler() -> None:
    model, reference = _model(), _model()
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=1024.0)
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=GeometricMean(),
                     scaler=scaler)  # fmt: skip
    jd.backward(scaler.scale(_losses(model)))
    GeometricMean()(_losses(reference)).backward()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p.grad, 1024.0 * q.grad, rtol=1e-12, atol=0)


def test_non_finite_losses_raise_and_change_nothing() -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=Mean())
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="NaN or inf"):
        jd.step(_losses(model) * float("nan"))
    assert all(
        torch.equal(p, b) and p.grad is None
        for p, b in zip(model.parameters(), before, strict=True)
    )


def test_a_scalarizer_needs_no_engine() -> None:
    model = _model()
    with pytest.raises(ValueError, match="needs neither engine"):
        JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=Mean(),
                    engine="autojac")  # fmt: skip


def test_an_overflowing_step_under_a_grad_scaler_is_skipped_before_the_scalarizer() -> None:
    """FAMO would learn NaN logits from inf losses, and every later step would be skipped: the
    step is skipped (NaN gradients) without calling it."""
    model = _model()
    famo = FAMO(3).to(DEVICE, torch.float64)
    scaler = torch.amp.GradScaler(DEVICE.type)
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=famo, scaler=scaler)
    for step in range(2):
        jd.zero_grad()
        jd.backward(scaler.scale(_losses(model, step)))
        scaler.step(jd)
        scaler.update()
    state = copy.deepcopy(famo.state_dict())
    jd.zero_grad()
    jd.backward(scaler.scale(_losses(model, 2) * float("inf")))
    assert jd.last_step.skipped
    assert all(torch.isnan(p.grad).all() for p in model.parameters())
    for name, value in famo.state_dict().items():
        assert name == "_extra_state" or torch.equal(value, state[name]), name
    assert torch.equal(famo.state_dict()["_extra_state"]["last"], state["_extra_state"]["last"])
