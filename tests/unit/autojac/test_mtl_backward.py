"""What ``mtl_backward`` computes: the shared parameters get the aggregation of the losses'
Jacobian (the row-by-row one), the heads their gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jdopt.autojac import mtl_backward
from tests.utils.reference import Recorder, jacobian_by_rows

from ._mtl_setup import trunk_and_heads


@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_shared_params_get_the_row_by_row_jacobian_and_heads_their_gradients(
    chunk: int | None,
) -> None:
    trunk, heads, features, losses = trunk_and_heads()
    shared = list(trunk.parameters())
    expected = jacobian_by_rows(losses, shared)
    expected_heads = [
        torch.autograd.grad(loss, list(head.parameters()), retain_graph=True)
        for loss, head in zip(losses, heads, strict=True)
    ]
    recorder = Recorder()
    mtl_backward(losses, features, recorder, shared_params=shared, parallel_chunk_size=chunk)
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
    for head, grads in zip(heads, expected_heads, strict=True):
        for p, g in zip(head.parameters(), grads, strict=True):
            assert torch.allclose(p.grad, g, atol=1e-12)


def test_several_features_and_explicit_params_give_the_row_by_row_jacobian() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()
    heads = [nn.Linear(4, 1).double() for _ in range(2)]
    x = torch.randn(4, 3, dtype=torch.float64)
    fa, fb = a(x), b(x)
    losses = torch.stack([h(torch.cat([fa, fb], dim=1)).pow(2).mean() for h in heads])
    shared = [*a.parameters(), *b.parameters()]
    expected = jacobian_by_rows(losses, shared)
    recorder = Recorder()
    mtl_backward(
        losses,
        [fa, fb],
        recorder,
        shared_params=shared,
        tasks_params=[list(h.parameters()) for h in heads],
    )
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
    assert all(p.grad is not None for h in heads for p in h.parameters())


def test_default_shared_params_are_upstream_of_features() -> None:
    trunk, _heads, features, losses = trunk_and_heads()
    shared = list(trunk.parameters())
    expected = jacobian_by_rows(losses, shared).sum(dim=0)
    mtl_backward(losses, features, Recorder())
    grads = torch.cat([p.grad.reshape(-1) for p in shared])
    assert torch.allclose(grads, expected, atol=1e-12)


@pytest.mark.parametrize("retain_graph", [False, True])
def test_features_computed_from_one_another_give_the_row_by_row_jacobian(
    retain_graph: bool,
) -> None:
    """Deep supervision: a head on an inner feature, another on an outer one computed from it.
    The Jacobian is the row-by-row one, whether the graph is kept or not."""
    torch.manual_seed(2)
    inner_layer, outer_layer = nn.Linear(4, 5).double(), nn.Linear(5, 5).double()
    heads = [nn.Linear(5, 1).double(), nn.Linear(5, 1).double()]
    x = torch.randn(6, 4, dtype=torch.float64)
    inner = torch.tanh(inner_layer(x))
    outer = torch.tanh(outer_layer(inner))
    tasks = [(heads[0](inner) ** 2).mean(), (heads[1](outer) ** 2).mean()]
    shared = [*inner_layer.parameters(), *outer_layer.parameters()]
    expected = jacobian_by_rows(torch.stack(tasks), shared)
    recorder = Recorder()
    mtl_backward(tasks, [inner, outer], recorder, shared_params=shared, retain_graph=retain_graph)
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
