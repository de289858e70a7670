"""AMP (autocast + GradScaler) and the error contract: bad input changes nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import jdopt.aggregation as agg
from jdopt import JDOptimizer
from tests.unit.aggregation._registry import METHODS


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))


def _losses(model: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 2, generator=g)
    return ((model(x) - y) ** 2).mean(dim=1)


def _snapshot(model: nn.Module, jd: JDOptimizer) -> dict:
    return copy.deepcopy(
        {
            "params": [p.detach() for p in model.parameters()],
            "grads": [None if p.grad is None else p.grad for p in model.parameters()],
            "state": jd.state_dict(),
        }
    )


def _assert_same(a: dict, b: dict) -> None:
    for x, y in zip(a["params"] + a["grads"], b["params"] + b["grads"], strict=True):
        assert (x is None and y is None) or torch.equal(x, y)
    assert repr(a["state"]) == repr(b["state"])


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_grad_scaler_weights_are_computed_unscaled(method) -> None:
    if method.aggregator(6) is None:
        return
    plain_model, amp_model = _model(), _model()
    plain = JDOptimizer(
        torch.optim.SGD(plain_model.parameters(), lr=0.1), aggregator=method.aggregator(6)
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    amp = JDOptimizer(
        torch.optim.SGD(amp_model.parameters(), lr=0.1),
        aggregator=method.aggregator(6),
        scaler=scaler,
    )
    plain.step(_losses(plain_model))
    amp.backward(scaler.scale(_losses(amp_model)))
    scaler.step(amp)
    scaler.update()
    for p, q in zip(plain_model.parameters(), amp_model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), method.name


def test_autocast_bfloat16_with_grad_scaler_trains() -> None:
    model = _model()
    scaler = torch.amp.GradScaler("cpu")
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), scaler=scaler)
    first = None
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = _losses(model)
        first = float(losses.detach().float().mean()) if first is None else first
        jd.zero_grad()
        jd.backward(scaler.scale(losses.float()))
        scaler.step(jd)
        scaler.update()
    assert float(_losses(model).detach().mean()) < first


def test_overflowing_jacobian_is_skipped_by_the_scaler() -> None:
    model = _model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    jd = JDOptimizer(torch.optim.Adam(model.parameters(), lr=0.1), scaler=scaler)
    before = [p.detach().clone() for p in model.parameters()]
    jd.backward(scaler.scale(_nan_jacobian_losses(model)))
    assert jd.last_step.skipped
    scaler.step(jd)
    scaler.update()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert jd.state == {} and scaler.get_scale() < 2.0**16


def _nan_jacobian_losses(model: nn.Module) -> torch.Tensor:
    """Finite losses whose Jacobian is NaN (the derivative of sqrt at 0 times 0)."""
    losses = _losses(model)
    return losses + torch.sqrt(losses * 0.0)


BAD_INPUTS = [
    (lambda m: _losses(m) * float("nan"), {}, ValueError, "NaN or inf"),
    (lambda m: _losses(m).detach(), {}, ValueError, "does not require grad"),
    (lambda m: _losses(m)[:0], {}, ValueError, "empty"),
    (lambda m: lambda: _losses(m).sum(), {}, TypeError, "closure"),
    (lambda m: [1.0, 2.0], {}, TypeError, "losses"),
    # autojac: no parameter reached; autogram: no call of the hooked modules recorded.
    (
        lambda m: torch.ones(3, requires_grad=True) * 2,
        {},
        (ValueError, RuntimeError),
        "none of the given parameters|no forward call",
    ),
    (lambda m: _losses(m), {"features": "trunk"}, TypeError, "features"),
    (_nan_jacobian_losses, {}, ValueError, "Jacobian of the losses contains NaN"),
    (lambda m: _losses(m), {"features": torch.ones(2)}, ValueError, "require grad"),
]


@pytest.mark.parametrize("gramian_engine", [False, True], ids=["autojac", "autogram"])
@pytest.mark.parametrize(("make", "kwargs", "error", "match"), BAD_INPUTS)
def test_bad_input_raises_before_touching_anything(
    make, kwargs, error, match, gramian_engine: bool
) -> None:
    model = _model()
    engine = {"model": model, "batch_dim": 0} if gramian_engine else {}
    jd = JDOptimizer(torch.optim.Adam(model.parameters(), lr=0.1), **engine)
    jd.step(_losses(model))  # non-trivial optimizer state and gradients
    before = _snapshot(model, jd)
    with pytest.raises(error, match=match):
        jd.step(make(model), **kwargs)
    _assert_same(before, _snapshot(model, jd))


def test_features_outside_the_graph_raise_before_touching_anything() -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.Adam(model.parameters(), lr=0.1))
    before = _snapshot(model, jd)
    with pytest.raises(ValueError, match="do not depend on `features`"):
        jd.step(_losses(model), features=nn.Linear(2, 2)(torch.ones(1, 2)))
    _assert_same(before, _snapshot(model, jd))


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
def test_invalid_constructor_arguments(kwargs, error, match) -> None:
    arguments = {"optimizer": torch.optim.SGD(_model().parameters(), lr=0.1), **kwargs}
    optimizer = arguments.pop("optimizer")
    with pytest.raises(error, match=match):
        JDOptimizer(optimizer, **arguments)


def test_wrapping_twice_is_refused() -> None:
    jd = JDOptimizer(torch.optim.SGD(_model().parameters(), lr=0.1))
    with pytest.raises(TypeError, match="already wrapped"):
        JDOptimizer(jd, aggregator=agg.Mean())


@pytest.mark.parametrize("use_model", [False, True])
def test_a_disabled_scaler_keeps_the_error_contract(use_model: bool) -> None:
    """Regression: GradScaler(enabled=False), the usual `enabled=use_amp` pattern, turned the
    checks off and NaN reached the parameters."""
    model = _model()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    jd = JDOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model=model if use_model else None,
        batch_dim=0 if use_model else None,
        scaler=scaler,
    )
    before = _snapshot(model, jd)
    losses = _losses(model) * torch.tensor([1.0, 1.0, float("nan"), 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        jd.backward(scaler.scale(losses))
    _assert_same(before, _snapshot(model, jd))


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
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=_BadWeighting(kind))
    before = _snapshot(model, jd)
    with pytest.raises(ValueError, match="one finite weight per objective"):
        jd.step(_losses(model))
    _assert_same(before, _snapshot(model, jd))


def test_a_failed_load_leaves_the_aggregator_state_alone() -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=agg.NashMTL(n_tasks=6))
    jd.step(_losses(model))
    saved = jd.state_dict()
    other = JDOptimizer(
        torch.optim.SGD(_model()[0].parameters(), lr=0.1), aggregator=agg.NashMTL(n_tasks=6)
    )
    before = repr(other.aggregator.state_dict())
    with pytest.raises(ValueError):
        other.load_state_dict(saved)  # parameter groups do not match
    assert repr(other.aggregator.state_dict()) == before


def test_a_sparse_embedding_on_the_autojac_engine() -> None:
    """Regression: its sparse gradient rows could not be reshaped into Jacobian rows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 1)).double()
    reference = copy.deepcopy(model)
    idx = torch.tensor([1, 3, 3, 7, 0, 9])
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=agg.Mean())
    jd.step(model(idx).squeeze(1) ** 2)
    plain = torch.optim.SGD(reference.parameters(), lr=0.1)
    (reference(idx).squeeze(1) ** 2).mean().backward()
    plain.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-12)


def test_a_closure_given_by_keyword_is_refused_clearly() -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    before = _snapshot(model, jd)
    with pytest.raises(TypeError, match="does not take a closure"):
        jd.step(closure=lambda: _losses(model).sum())
    _assert_same(before, _snapshot(model, jd))


def test_an_optimizer_that_needs_a_closure_is_refused() -> None:
    """LBFGS raised for its missing closure only after .grad had been written."""
    with pytest.raises(TypeError, match="LBFGS"):
        JDOptimizer(torch.optim.LBFGS(_model().parameters()))


def test_state_dict_hooks_run() -> None:
    """Regression: the overridden state_dict/load_state_dict never ran the registered hooks."""
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    calls = []
    jd.register_state_dict_pre_hook(lambda opt: calls.append("save pre"))
    jd.register_state_dict_post_hook(lambda opt, state: {**state, "tag": 1})
    jd.register_load_state_dict_pre_hook(lambda opt, state: calls.append(state.get("tag")))
    jd.register_load_state_dict_post_hook(lambda opt: calls.append("load post"))
    state = jd.state_dict()
    assert state["tag"] == 1
    jd.load_state_dict(state)
    assert calls == ["save pre", 1, "load post"]


def test_a_very_large_scale_does_not_overflow_the_gramian() -> None:
    """Regression: scale² |J|² overflowed float32 although J did not, and the step was
    skipped (full-Jacobian engine)."""
    model = _model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**66)
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scaler=scaler)
    jd.backward(scaler.scale(_losses(model)))
    scaler.step(jd)
    scaler.update()
    assert not jd.last_step.skipped
    assert scaler.get_scale() == 2.0**66  # no overflow found
