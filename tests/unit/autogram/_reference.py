"""Slow references for the Gramian engine: row-by-row ``autograd.grad`` Jacobians."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tests.utils.device import draw_uniform, seeded
from tests.utils.reference import jacobian_by_rows

TOLERANCE = 1e-6  # relative, in float64


def reference_gramian(losses: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The generalized Gramian ``[*S, *reversed(S)]`` of ``losses`` (shape ``S``), from the
    Jacobian of the flattened losses (the graph of ``losses`` is kept)."""
    jacobian = jacobian_by_rows(losses, params)
    shape = losses.shape
    k = len(shape)
    full = (jacobian @ jacobian.T).reshape(tuple(shape) * 2)
    if k == 0:
        return full.reshape(())
    return full.permute(*range(k), *reversed(range(k, 2 * k)))


def reference_weighted_gradient(
    losses: Tensor, weights: Tensor, params: Sequence[Tensor]
) -> list[Tensor]:
    """``Σᵢ weights[i] ∇losses[i]`` for every parameter (zeros where a parameter is unused)."""
    grads = torch.autograd.grad(
        (losses * weights).sum(), params, retain_graph=True, allow_unused=True
    )
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``‖actual - expected‖ / ‖expected‖`` (Frobenius), as a Python float."""
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    difference = (actual.detach() - expected.detach()).norm()
    return (difference / expected.detach().norm()).item()


def accumulated_grads(params: Sequence[Tensor]) -> list[Tensor]:
    """The ``.grad`` of every parameter, zeros where it is ``None``."""
    return [torch.zeros_like(p) if p.grad is None else p.grad for p in params]


def flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def assert_exact(engine, losses: Tensor, params: Sequence[Tensor]) -> frozenset:
    """Asserts that the engine's Gramian of ``losses`` and its weighted gradient (seeded random
    weights) match the row-by-row references; returns the ids of the parameters whose
    gradients came from the exact fallback (so a test can require the closed forms)."""
    weights = draw_uniform(losses.shape, generator=seeded(9), dtype=losses.dtype)
    gramian = engine.compute_gramian(losses)
    assert relative_error(gramian, reference_gramian(losses, params)) <= TOLERANCE
    fallback = frozenset(id(p) for p in engine.fallback_parameters)
    expected = reference_weighted_gradient(losses, weights, params)
    engine.accumulate_grads(weights)
    assert relative_error(flat(accumulated_grads(params)), flat(expected)) <= TOLERANCE
    return fallback
