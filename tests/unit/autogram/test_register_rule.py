"""``register_rule``: a closed form for a custom layer, registered through the public API, gives
exact Gramians and weighted gradients on every loss setting; the registration can be undone,
declined per module, and is checked."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from jdopt.autogram import Engine, Layout, Rule, Use, register_rule
from tests.utils.device import draw, seeded

from ._reference import assert_exact
from ._settings import SETTINGS, Setting

_F64 = torch.float64


class _Scale(nn.Module):
    """``y = x ⊙ weight + bias`` over the last dimension of ``[batch, ..., features]``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, features, dtype=_F64))
        self.bias = nn.Parameter(torch.linspace(-0.2, 0.3, features, dtype=_F64))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight + self.bias


class _ScaleRule(Rule):
    gatherable = True
    computes_with = frozenset({"weight", "bias"})
    calls = 0  # how often the engine asked this rule (so a test can tell it from the fallback)

    def per_objective(self, uses: list[Use], name: str, layout: Layout) -> Tensor:
        type(self).calls += 1
        total = 0
        for use in uses:
            dy = layout.grad_rows(use.grads[0])
            grads = dy * layout.rows(use.args[0]) if name == "weight" else dy
            grads = grads.flatten(0, 1)
            total = total + grads.reshape(len(grads), -1, grads.shape[-1]).sum(1)
        return total


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(2, 3).double()
        self.scale = _Scale(3)
        self.last = nn.Linear(3, 2).double()

    def forward(self, x: Tensor) -> Tensor:
        h = self.scale(torch.tanh(self.first(x)))  # [B, T, 3]
        h = self.scale(torch.sin(h))  # called twice
        return self.last(h).sum(dim=1)


def _inputs() -> Tensor:
    return draw(4, 5, 2, generator=seeded(1), dtype=_F64)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_a_registered_rule_gives_exact_gramians(setting: Setting) -> None:
    """A rule registered for a custom layer is used (no fallback) and exact, on every loss
    setting, for a layer called twice."""
    torch.manual_seed(0)
    model = _Model()
    with register_rule(_Scale, _ScaleRule):
        engine = Engine(model, batch_dim=setting.batch_dim)
    before = _ScaleRule.calls
    losses = setting.losses(model(_inputs()))
    fallback = assert_exact(engine, losses, list(model.parameters()))
    assert not fallback
    assert _ScaleRule.calls > before


def test_removing_a_registration_restores_the_fallback() -> None:
    """Once the handle is removed, engines built afterwards give the layer the fallback."""
    torch.manual_seed(0)
    model = _Model()
    handle = register_rule(_Scale, _ScaleRule)
    handle.remove()
    engine = Engine(model, batch_dim=0)
    losses = model(_inputs()).sum(dim=1)
    fallback = assert_exact(engine, losses, list(model.parameters()))
    assert fallback == {id(model.scale.weight), id(model.scale.bias)}


def test_a_factory_can_decline_a_module_and_a_rule_refuses_other_parameters() -> None:
    """A factory returning ``None``, or a module with parameters outside the rule's
    ``computes_with``: the module takes the exact fallback."""
    torch.manual_seed(0)
    model = _Model()
    model.scale.extra = nn.Parameter(torch.zeros((), dtype=_F64))  # computes_with excludes it
    declined = _Model()
    with register_rule(_Scale, lambda module, names: None):
        declining = Engine(declined, batch_dim=0)
    with register_rule(_Scale, _ScaleRule):
        engine = Engine(model, batch_dim=0)
    for engine_, model_ in [(declining, declined), (engine, model)]:
        losses = model_(_inputs()).sum(dim=1)
        fallback = assert_exact(engine_, losses, list(model_.parameters()))
        assert id(model_.scale.weight) in fallback


def test_register_rule_checks_its_arguments() -> None:
    """An ``nn.Module`` subclass, then a callable factory: a ``TypeError`` otherwise."""
    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        register_rule(_ScaleRule, _ScaleRule)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        register_rule(_Scale, "ScaleRule")  # type: ignore[arg-type]
