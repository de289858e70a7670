"""The error contract: invalid arguments are refused at construction, and bad input to a step
raises a clear error before any parameter, gradient or optimizer state changes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import jdopt.aggregation as agg
from jdopt import JDOptimizer

from ._helpers import assert_same, float_losses, mlp, nan_jacobian_losses, snapshot


def _model() -> nn.Module:
    return mlp(dtype=torch.float32)


BAD_INPUTS = [
    (lambda m: float_losses(m) * float("nan"), {}, ValueError, "NaN or inf"),
    (lambda m: float_losses(m).detach(), {}, ValueError, "does not require grad"),
    (lambda m: float_losses(m)[:0], {}, ValueError, "empty"),
    (lambda m: lambda: float_losses(m).sum(), {}, TypeError, "closure"),
    (lambda m: [1.0, 2.0], {}, TypeError, "losses"),
    # autojac: no parameter reached; autogram: no call of the hooked modules recorded.
    (
        lambda m: torch.ones(3, requires_grad=True) * 2,
        {},
        (ValueError, RuntimeError),
        "none of the given parameters|no forward call",
    ),
    (lambda m: float_losses(m), {"features": "trunk"}, TypeError, "features"),
    (nan_jacobian_losses, {}, ValueError, "Jacobian of the losses contains NaN"),
    (lambda m: float_losses(m), {"features": torch.ones(2)}, ValueError, "require grad"),
]


@pytest.mark.parametrize("gramian_engine", [False, True], ids=["autojac", "autogram"])
@pytest.mark.parametrize(("make", "kwargs", "error", "match"), BAD_INPUTS)
def test_bad_input_raises_before_touching_anything(
    make, kwargs, error, match, gramian_engine: bool
) -> None:
    """Each bad input raises its error on both engines; parameters, gradients and the
    optimizer state are left as they were."""
    model = _model()
    engine = {"model": model, "batch_dim": 0} if gramian_engine else {}
    jd = JDOptimizer(torch.optim.Adam(model.parameters(), lr=0.1), **engine)
    jd.step(float_losses(model))  # non-trivial optimizer state and gradients
    before = snapshot(model, jd)
    with pytest.raises(error, match=match):
        jd.step(make(model), **kwargs)
    assert_same(before, snapshot(model, jd))


def test_features_outside_the_graph_raise_before_touching_anything() -> None:
    """Features that the losses do not depend on are refused, and nothing changes."""
    model = _model()
    jd = JDOptimizer(torch.optim.Adam(model.parameters(), lr=0.1))
    before = snapshot(model, jd)
    with pytest.raises(ValueError, match="do not depend on `features`"):
        jd.step(float_losses(model), features=nn.Linear(2, 2)(torch.ones(1, 2)))
    assert_same(before, snapshot(model, jd))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"optimizer": "adam"}, TypeError, "optimizer"),
        ({"aggregator": torch.mean}, TypeError, "aggregator"),
        ({"engine": "fast"}, ValueError, "engine"),
        ({"model": "net"}, TypeError, "model"),
        ({"batch_dim": 0.5}, TypeError, "batch_dim"),
        ({"scaler": 2.0}, TypeError, "scaler"),
        ({"parallel_chunk_size": 0}, ValueError, "parallel_chunk_size"),
    ],
)
def test_invalid_constructor_arguments_are_refused(kwargs, error, match) -> None:
    """Each invalid argument raises an error that names it."""
    arguments = {"optimizer": torch.optim.SGD(_model().parameters(), lr=0.1), **kwargs}
    optimizer = arguments.pop("optimizer")
    with pytest.raises(error, match=match):
        JDOptimizer(optimizer, **arguments)


def test_wrapping_twice_is_refused() -> None:
    """A JDOptimizer is not an optimizer to wrap."""
    jd = JDOptimizer(torch.optim.SGD(_model().parameters(), lr=0.1))
    with pytest.raises(TypeError, match="already wrapped"):
        JDOptimizer(jd, aggregator=agg.Mean())


def test_an_optimizer_that_needs_a_closure_is_refused() -> None:
    """An optimizer whose step re-evaluates the loss (LBFGS) is refused at construction,
    before any gradient is written."""
    with pytest.raises(TypeError, match="LBFGS"):
        JDOptimizer(torch.optim.LBFGS(_model().parameters()))


def test_a_closure_given_by_keyword_is_refused_clearly() -> None:
    """``step(closure=...)`` raises an error that says how to step, and nothing changes."""
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    before = snapshot(model, jd)
    with pytest.raises(TypeError, match="does not take a closure"):
        jd.step(closure=lambda: float_losses(model).sum())
    assert_same(before, snapshot(model, jd))


@pytest.mark.parametrize("use_model", [False, True])
def test_a_disabled_scaler_keeps_the_error_contract(use_model: bool) -> None:
    """A disabled GradScaler (the usual ``GradScaler(enabled=use_amp)``) skips nothing:
    non-finite losses raise and nothing changes, as without a scaler, on both engines."""
    model = _model()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    jd = JDOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model=model if use_model else None,
        batch_dim=0 if use_model else None,
        scaler=scaler,
    )
    before = snapshot(model, jd)
    losses = float_losses(model) * torch.tensor([1.0, 1.0, float("nan"), 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        jd.backward(scaler.scale(losses))
    assert_same(before, snapshot(model, jd))


class _BadWeighting(agg.Weighting):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, gramian: torch.Tensor) -> torch.Tensor:
        m = gramian.shape[0]
        if self.kind == "shape":
            return torch.ones(m + 1)
        return torch.full((m,), float("nan"))


@pytest.mark.parametrize("kind", ["shape", "nan"])
def test_bad_weights_from_a_custom_weighting_change_nothing(kind: str) -> None:
    """A weighting must return one finite weight per objective; otherwise the step raises and
    nothing changes."""
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=_BadWeighting(kind))
    before = snapshot(model, jd)
    with pytest.raises(ValueError, match="one finite weight per objective"):
        jd.step(float_losses(model))
    assert_same(before, snapshot(model, jd))


def test_a_failed_load_leaves_the_aggregator_state_alone() -> None:
    """A state dict that the wrapped optimizer refuses leaves the aggregator's state as it
    was."""
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=agg.NashMTL(n_tasks=6))
    jd.step(float_losses(model))
    saved = jd.state_dict()
    other = JDOptimizer(
        torch.optim.SGD(_model()[0].parameters(), lr=0.1), aggregator=agg.NashMTL(n_tasks=6)
    )
    before = repr(other.aggregator.state_dict())
    with pytest.raises(ValueError):
        other.load_state_dict(saved)  # parameter groups do not match
    assert repr(other.aggregator.state_dict()) == before


class _RaisingWeighting(agg.Weighting):
    def forward(self, gramian: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the method's own error")


NON_FINITE_LOSSES = {
    "NaN losses": lambda m: float_losses(m) * float("nan"),
    "infinite losses with finite gradients": lambda m: float_losses(m) + float("inf"),
}
METHODS = {
    "Mean (weights whatever the Gramian)": agg.MeanWeighting,
    "UPGrad": agg.UPGrad,
    "a method that raises": _RaisingWeighting,
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("losses", list(NON_FINITE_LOSSES))
@pytest.mark.parametrize("gramian_engine", [False, True], ids=["autojac", "autogram"])
def test_non_finite_losses_raise_their_error_whatever_the_method_does_with_them(
    method: str, losses: str, gramian_engine: bool
) -> None:
    """The step checks the losses after the weights (one read of the device for every check),
    yet their error is the one raised, and nothing changes."""
    model = _model()
    engine = {"model": model, "batch_dim": 0} if gramian_engine else {}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    jd = JDOptimizer(optimizer, aggregator=METHODS[method](), **engine)
    before = snapshot(model, jd)
    with pytest.raises(ValueError, match="`losses` contains NaN or inf"):
        jd.step(NON_FINITE_LOSSES[losses](model))
    assert_same(before, snapshot(model, jd))


def test_a_methods_own_error_reaches_the_caller_on_good_input() -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=_RaisingWeighting())
    before = snapshot(model, jd)
    with pytest.raises(RuntimeError, match="the method's own error"):
        jd.step(float_losses(model))
    assert_same(before, snapshot(model, jd))


def test_an_enabled_scaler_skips_a_step_whose_scaled_losses_overflow() -> None:
    """float32 losses of 1e35 scaled by 2¹⁶ are inf: the scaler skips the step (no error) and
    lowers its scale; nothing changes."""
    model = _model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scaler=scaler)
    before = snapshot(model, jd)
    jd.backward(scaler.scale(float_losses(model) * 1e35))
    assert jd.last_step.skipped
    scaler.step(jd)
    scaler.update()
    assert scaler.get_scale() < 2.0**16
    after = snapshot(model, jd)  # the gradients are NaN: that is how the scaler skips
    assert all(torch.equal(x, y) for x, y in zip(before["params"], after["params"], strict=True))
    assert repr(before["state"]) == repr(after["state"])


@pytest.mark.parametrize("scaled", [False, True], ids=["no scaler", "GradScaler"])
def test_a_non_finite_jacobian_leaves_a_stateful_methods_state_alone(scaled: bool) -> None:
    model = _model()
    method = agg.PCD()
    scaler = torch.amp.GradScaler("cpu") if scaled else None
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=method, scaler=scaler)
    jd.step(float_losses(model))
    state = copy.deepcopy(method.state_dict())
    losses = nan_jacobian_losses(model)
    if scaled:
        jd.backward(scaler.scale(losses))
        assert jd.last_step.skipped
    else:
        with pytest.raises(ValueError, match="Jacobian of the losses contains NaN"):
            jd.step(losses)
    after = method.state_dict()["weighting._extra_state"]
    assert torch.equal(after["average"], state["weighting._extra_state"]["average"])
    assert after["steps"] == state["weighting._extra_state"]["steps"]
