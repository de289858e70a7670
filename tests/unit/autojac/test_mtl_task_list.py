"""Task losses given as a list of scalars: the shared Jacobian is still the losses' whole
Jacobian, one row per task, on the two-stage pass and on the batched one alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jdopt.autojac import mtl_backward
from tests.utils.reference import Recorder, jacobian_by_rows

from ._mtl_setup import trunk_and_heads


def _task_list(trunk: nn.Module, heads: list[nn.Module], x: torch.Tensor, *, tied: bool):
    """Scalar task losses, three of them from one head; with ``tied``, the last head also uses
    the trunk's first weight directly (a path around the features). Returns the tasks, the
    features and each task's parameters."""
    features = trunk(x)
    tasks = [(heads[0](features) ** 2).mean(), *(heads[1](features) ** 2).squeeze(1)[:3]]
    last = (heads[2](features) ** 2).mean()
    if tied:
        last = last + trunk[0].weight.sum() ** 2
    own = [list(heads[i].parameters()) for i in (0, 1, 1, 1, 2)]
    return [*tasks, last], features, own


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_losses_given_as_a_list_match_the_row_by_row_jacobian(
    tied: bool, chunk: int | None, two_stage
) -> None:
    """The shared Jacobian is the losses' whole Jacobian, paths around the features included
    (given ``tasks_params``: by default a tied weight would be both shared and task-specific)."""
    trunk, heads, _, _ = trunk_and_heads()
    x = torch.randn(6, 4, dtype=torch.float64)
    tasks, features, own = _task_list(trunk, heads, x, tied=tied)
    tasks = two_stage(tasks)
    losses = torch.stack(tasks)
    shared = list(trunk.parameters())
    expected = jacobian_by_rows(losses, shared)
    head_params = [p for h in heads for p in h.parameters()]
    expected_heads = torch.autograd.grad(losses.sum(), head_params, retain_graph=True)
    recorder = Recorder()
    mtl_backward(
        tasks,
        features,
        recorder,
        tasks_params=own if tied else None,
        shared_params=shared,
        parallel_chunk_size=chunk,
    )
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
    for p, g in zip(head_params, expected_heads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-12)


def test_a_listed_task_that_ignores_the_features_gets_a_zero_row(two_stage) -> None:
    trunk, heads, features, _ = trunk_and_heads(2)
    own = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    tasks = [(heads[0](features) ** 2).mean(), own**2, (heads[1](features) ** 2).mean()]
    tasks = two_stage(tasks)
    losses = torch.stack(tasks)
    shared = list(trunk.parameters())
    expected = jacobian_by_rows(losses, shared)
    recorder = Recorder()
    mtl_backward(tasks, features, recorder, shared_params=shared)
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
    assert recorder.jacobian[1].abs().max() == 0
    assert torch.allclose(own.grad, torch.tensor(4.0, dtype=torch.float64))


def test_losses_that_reach_no_feature_give_a_zero_jacobian(two_stage) -> None:
    """As in TorchJD: zero rows, not an error; the heads still get their gradients."""
    trunk, _, features, _ = trunk_and_heads(2)
    own = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    recorder = Recorder()
    mtl_backward(two_stage([own**2, own**3]), features, recorder)
    n = sum(p.numel() for p in trunk.parameters())
    assert torch.equal(recorder.jacobian, torch.zeros(2, n, dtype=torch.float64))
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in trunk.parameters())
    assert torch.allclose(own.grad, torch.tensor(16.0, dtype=torch.float64))
