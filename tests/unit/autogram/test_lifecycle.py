"""The engine's lifecycle: hooks owned and removed, recorded calls consumed or forgotten, steps
that follow each other, and a parameter set fixed at construction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jdopt.autogram import Engine
from tests.utils.device import draw_uniform, seeded

from ._models import F64, B, all_hooks_removed, mlp, mlp_inputs, mlp_losses, randn
from ._reference import (
    TOLERANCE,
    accumulated_grads,
    flat,
    reference_gramian,
    reference_weighted_gradient,
    relative_error,
)


def test_close_removes_every_hook_and_records_nothing_more() -> None:
    """``close()`` removes every hook: later forwards are not recorded."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    assert not all_hooks_removed(model)
    mlp_losses(model, mlp_inputs())

    engine.close()

    assert all_hooks_removed(model)
    losses = mlp_losses(model, mlp_inputs())
    with pytest.raises(RuntimeError, match="no forward call"):
        engine.compute_gramian(losses)


def test_context_manager_removes_every_hook() -> None:
    """A ``with`` block gives the engine and closes it on leaving."""
    model = mlp()
    with Engine(model, batch_dim=0) as engine:
        assert isinstance(engine, Engine)
        losses = mlp_losses(model, mlp_inputs())
        gramian = engine.compute_gramian(losses)
        assert (
            relative_error(gramian, reference_gramian(losses, list(model.parameters())))
            <= TOLERANCE
        )

    assert all_hooks_removed(model)
    with pytest.raises(RuntimeError, match="no forward call"):
        engine.compute_gramian(mlp_losses(model, mlp_inputs()))


def test_context_manager_removes_hooks_on_error() -> None:
    """The hooks are removed even when the block raises."""
    model = mlp()
    with pytest.raises(KeyError), Engine(model, batch_dim=0):
        raise KeyError("boom")
    assert all_hooks_removed(model)


def test_clear_forgets_the_recorded_calls() -> None:
    """``clear()`` forgets the calls recorded so far: losses of those calls are refused."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    losses = mlp_losses(model, mlp_inputs())
    engine.clear()
    with pytest.raises(RuntimeError, match="no forward call"):
        engine.compute_gramian(losses)


def test_losses_computed_before_the_engine_existed_are_refused() -> None:
    """Calls made before the engine was built were not recorded: their losses are refused."""
    model = mlp()
    losses = mlp_losses(model, mlp_inputs())
    engine = Engine(model, batch_dim=0)
    with pytest.raises(RuntimeError, match="no forward call"):
        engine.compute_gramian(losses)


def test_an_ordinary_training_step_in_between_changes_nothing() -> None:
    """A plain ``backward()`` step on the hooked model, even of another batch size, leaves the
    next Gramian exact."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    first = engine.compute_gramian(mlp_losses(model, mlp_inputs()))

    model(mlp_inputs(batch=7, seed=5)).pow(2).sum().backward()  # another batch size, on purpose
    model.zero_grad()
    losses = mlp_losses(model, mlp_inputs())
    second = engine.compute_gramian(losses)

    assert relative_error(second, first) <= TOLERANCE
    assert relative_error(second, reference_gramian(losses, list(model.parameters()))) <= 1e-6


def test_two_engines_on_one_model_are_independent() -> None:
    """Two engines on the same modules each compute their own Gramian, and closing one leaves
    the other's hooks."""
    model = mlp()
    per_sample_engine = Engine(model, batch_dim=0)
    head_engine = Engine(model[4], batch_dim=None)
    losses = mlp_losses(model, mlp_inputs())

    first = per_sample_engine.compute_gramian(losses)
    second = head_engine.compute_gramian(losses)

    everything = reference_gramian(losses, list(model.parameters()))
    head = reference_gramian(losses, list(model[4].parameters()))
    assert relative_error(first, everything) <= TOLERANCE
    assert relative_error(second, head) <= TOLERANCE
    per_sample_engine.close()
    assert model[4]._forward_hooks  # the other engine's hook stays
    head_engine.close()
    assert all_hooks_removed(model)


def test_consecutive_steps_are_each_exact() -> None:
    """Steps that update the parameters in between: every Gramian and weighted gradient is
    that of the current parameters."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    params = list(model.parameters())
    for seed in range(3):
        model.zero_grad()
        losses = mlp_losses(model, mlp_inputs(seed=seed))
        weights = draw_uniform(5, generator=seeded(seed), dtype=F64)
        gramian = engine.compute_gramian(losses)
        assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE
        expected = reference_weighted_gradient(losses, weights, params)
        engine.accumulate_grads(weights)
        assert relative_error(flat(accumulated_grads(params)), flat(expected)) <= TOLERANCE
        with torch.no_grad():
            for p in params:
                p -= 0.1 * p.grad


def test_a_parameter_frozen_after_construction_is_refused() -> None:
    """The engine's parameters are fixed at construction: once one is frozen (or unfrozen),
    ``trainable_changed()`` says so and Gramians are refused until a new engine is built."""
    linear = nn.Linear(3, 2).to(F64)
    engine = Engine(linear, batch_dim=0)
    linear.weight.requires_grad_(False)
    assert engine.trainable_changed()
    losses = (linear(randn(B, 3)) ** 2).sum(dim=1)
    with pytest.raises(ValueError, match="frozen or unfrozen"):
        engine.compute_gramian(losses)
