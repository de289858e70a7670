"""Every architecture of the zoo × every loss setting, against the row-by-row reference."""

from __future__ import annotations

import pytest
import torch

from jdopt.autogram import Engine
from tests.utils.architectures import ARCHITECTURES, Architecture, trainable_parameters
from tests.utils.device import draw, draw_uniform, seeded

from ._reference import (
    TOLERANCE,
    accumulated_grads,
    assert_exact,
    flat,
    reference_gramian,
    reference_weighted_gradient,
    relative_error,
)
from ._settings import PER_SAMPLE, SETTINGS, Setting

_ARCHITECTURES = pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: a.name)
_SETTINGS = pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)


def test_the_zoo_is_large_and_named_uniquely() -> None:
    """At least 20 architectures, each with its own name (the tests' ids)."""
    names = [arch.name for arch in ARCHITECTURES]
    assert len(names) >= 20
    assert len(set(names)) == len(names)


@_ARCHITECTURES
@_SETTINGS
def test_gramian_matches_reference(arch: Architecture, setting: Setting) -> None:
    """Every architecture, every loss setting: the Gramian, of the losses' generalized shape
    and dtype, equals the row-by-row reference."""
    model, inputs = arch.make()
    engine = Engine(model, batch_dim=setting.batch_dim)
    losses = setting.losses(arch.outputs(model, inputs))
    assert losses.shape == setting.shape(inputs[0].shape[0])

    gramian = engine.compute_gramian(losses)

    expected = reference_gramian(losses, trainable_parameters(model))
    shape = (*losses.shape, *reversed(losses.shape))
    assert gramian.shape == shape
    assert gramian.dtype == torch.float64
    assert relative_error(gramian, expected) <= TOLERANCE


@_ARCHITECTURES
@_SETTINGS
def test_accumulate_grads_matches_reference(arch: Architecture, setting: Setting) -> None:
    """Every architecture, every loss setting: the weighted gradient equals the reference, and
    frozen parameters get no ``.grad``."""
    model, inputs = arch.make()
    frozen = [p for p in model.parameters() if not p.requires_grad]
    params = trainable_parameters(model)
    engine = Engine(model, batch_dim=setting.batch_dim)
    losses = setting.losses(arch.outputs(model, inputs))
    weights = draw_uniform(losses.shape, generator=seeded(3), dtype=losses.dtype)
    engine.compute_gramian(losses)
    expected = reference_weighted_gradient(losses, weights, params)

    engine.accumulate_grads(weights)

    assert relative_error(flat(accumulated_grads(params)), flat(expected)) <= TOLERANCE
    assert all(p.grad is None for p in frozen)


@_ARCHITECTURES
def test_accumulate_grads_adds_to_existing_grads(arch: Architecture) -> None:
    """``accumulate_grads`` adds to an existing ``.grad``, as ``backward()`` does."""
    model, inputs = arch.make()
    params = trainable_parameters(model)
    for p in params:
        p.grad = torch.ones_like(p)
    engine = Engine(model, batch_dim=0)
    losses = PER_SAMPLE.losses(arch.outputs(model, inputs))
    weights = draw(losses.shape, generator=seeded(4), dtype=losses.dtype)
    engine.compute_gramian(losses)
    expected = [g + 1 for g in reference_weighted_gradient(losses, weights, params)]

    engine.accumulate_grads(weights)

    assert relative_error(flat(accumulated_grads(params)), flat(expected)) <= TOLERANCE


@pytest.mark.parametrize("method", ["inner", "per_sample", "grouped", "looped", "pairs"])
@_ARCHITECTURES
def test_every_forced_method_is_exact(method: str, arch: Architecture) -> None:
    """``Engine(method=...)`` forces one way wherever a layer offers it: each is exact."""
    model, inputs = arch.make()
    engine = Engine(model, batch_dim=0, method=method)
    losses = PER_SAMPLE.losses(arch.outputs(model, inputs))
    assert_exact(engine, losses, trainable_parameters(model))


@_ARCHITECTURES
@_SETTINGS
def test_a_later_gramian_without_the_graph_kept_matches_reference(
    arch: Architecture, setting: Setting
) -> None:
    """After the first (checked) Gramian, ``retain_graph=False`` frees the graph during the
    engine's pass: the layers that finish their work during that pass, and those that
    differentiate their own part of the graph, must still be exact."""
    model, inputs = arch.make()
    engine = Engine(model, batch_dim=setting.batch_dim)
    engine.compute_gramian(setting.losses(arch.outputs(model, inputs)))
    engine.clear()
    losses = setting.losses(arch.outputs(model, inputs))
    params = trainable_parameters(model)
    weights = draw_uniform(losses.shape, generator=seeded(3), dtype=losses.dtype)
    expected_gramian = reference_gramian(losses, params)
    expected = reference_weighted_gradient(losses, weights, params)
    gramian = engine.compute_gramian(losses, retain_graph=False)
    assert relative_error(gramian, expected_gramian) <= TOLERANCE
    engine.accumulate_grads(weights)
    assert relative_error(flat(accumulated_grads(params)), flat(expected)) <= TOLERANCE
