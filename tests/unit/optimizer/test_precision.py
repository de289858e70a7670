"""AMP: autocast and GradScaler. The weights are computed in the unscaled space, and a
non-finite Jacobian or Gramian makes the scaler skip the step."""

from __future__ import annotations

import pytest
import torch

from jdopt import JDOptimizer
from tests.unit.aggregation._registry import METHODS

from ._helpers import (
    conv_losses,
    conv_model,
    flat_params,
    float_losses,
    mlp,
    nan_jacobian_losses,
)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_grad_scaler_weights_are_computed_unscaled(method) -> None:
    """Every method steps with a GradScaler as it does without one."""
    if method.aggregator(6) is None:
        return
    plain_model, amp_model = mlp(dtype=torch.float32), mlp(dtype=torch.float32)
    plain = JDOptimizer(
        torch.optim.SGD(plain_model.parameters(), lr=0.1), aggregator=method.aggregator(6)
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    amp = JDOptimizer(
        torch.optim.SGD(amp_model.parameters(), lr=0.1),
        aggregator=method.aggregator(6),
        scaler=scaler,
    )
    plain.step(float_losses(plain_model))
    amp.backward(scaler.scale(float_losses(amp_model)))
    scaler.step(amp)
    scaler.update()
    for p, q in zip(plain_model.parameters(), amp_model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), method.name


def test_grad_scaler_on_autogram_matches_the_unscaled_run() -> None:
    """On the Gramian engine too, a GradScaler leaves the step as it is without one."""
    plain_model, amp_model = conv_model(), conv_model()
    plain = JDOptimizer(
        torch.optim.SGD(plain_model.parameters(), lr=0.1), model=plain_model, batch_dim=0
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    amp = JDOptimizer(
        torch.optim.SGD(amp_model.parameters(), lr=0.1), model=amp_model, batch_dim=0, scaler=scaler
    )
    plain.step(conv_losses(plain_model, 0, "[B]"))
    amp.backward(scaler.scale(conv_losses(amp_model, 0, "[B]")))
    scaler.step(amp)
    scaler.update()
    assert torch.allclose(flat_params(plain_model), flat_params(amp_model), atol=1e-10)


def test_autocast_bfloat16_with_grad_scaler_trains() -> None:
    """Losses computed under bfloat16 autocast, scaled by a GradScaler, decrease."""
    model = mlp(dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu")
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), scaler=scaler)
    first = None
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = float_losses(model)
        first = float(losses.detach().float().mean()) if first is None else first
        jd.zero_grad()
        jd.backward(scaler.scale(losses.float()))
        scaler.step(jd)
        scaler.update()
    assert float(float_losses(model).detach().mean()) < first


def test_overflowing_jacobian_is_skipped_by_the_scaler() -> None:
    """A non-finite Jacobian under a GradScaler: ``last_step.skipped``, the scaler skips the
    step (parameters and optimizer state untouched) and lowers its scale."""
    model = mlp(dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    jd = JDOptimizer(torch.optim.Adam(model.parameters(), lr=0.1), scaler=scaler)
    before = [p.detach().clone() for p in model.parameters()]
    jd.backward(scaler.scale(nan_jacobian_losses(model)))
    assert jd.last_step.skipped
    scaler.step(jd)
    scaler.update()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert jd.state == {} and scaler.get_scale() < 2.0**16


def test_non_finite_gramian_is_skipped_with_a_scaler_and_refused_without() -> None:
    """On the Gramian engine: a non-finite Gramian skips the step under a GradScaler, and
    raises without one, leaving the gradients and the optimizer state untouched."""
    model = conv_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    jd = JDOptimizer(torch.optim.Adam(model.parameters()), model=model, batch_dim=0, scaler=scaler)
    before = flat_params(model)
    losses = conv_losses(model, 0, "[B]")
    jd.backward(scaler.scale(losses + torch.sqrt(losses * 0.0)))
    assert jd.last_step.skipped
    scaler.step(jd)
    scaler.update()
    assert torch.equal(flat_params(model), before) and jd.state == {}
    jd.zero_grad()
    plain = JDOptimizer(torch.optim.Adam(model.parameters()), model=model, batch_dim=0)
    losses = conv_losses(model, 0, "[B]")
    with pytest.raises(ValueError, match="contains NaN or inf"):
        plain.step(losses + torch.sqrt(losses * 0.0))
    assert all(p.grad is None for p in model.parameters()) and plain.state == {}


def test_a_very_large_scale_does_not_overflow_the_gramian() -> None:
    """The Jacobian is unscaled before its Gramian is formed: a scale whose square overflows
    float32 neither skips the step nor lowers the scale."""
    model = mlp(dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**66)
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scaler=scaler)
    jd.backward(scaler.scale(float_losses(model)))
    scaler.step(jd)
    scaler.update()
    assert not jd.last_step.skipped
    assert scaler.get_scale() == 2.0**66  # no overflow found
