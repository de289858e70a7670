"""Separate heads of scalar tasks run once, in one ordinary backward pass, and only the trunk
runs batched over the tasks (the two-stage pass); the result is the row-by-row Jacobian, as on
the batched pass that runs every head for every row."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jdopt.autojac import mtl_backward
from jdopt.autojac._heads import split_at_features, task_roots
from tests.utils.reference import Recorder, jacobian_by_rows


@pytest.mark.parametrize("form", ["stacked", "list"])
def test_separate_heads_of_scalar_tasks_match_the_row_by_row_jacobian(form: str, two_stage) -> None:
    torch.manual_seed(1)
    trunk = nn.Sequential(nn.Linear(4, 5), nn.Tanh()).double()
    heads = [nn.Linear(3, 1).double(), nn.Linear(2, 2).double(), nn.Linear(3, 1).double()]
    x = torch.randn(6, 4, dtype=torch.float64)
    first, second = trunk(x).split([3, 2], dim=1)  # two features from one node
    tasks = two_stage(
        [
            (heads[0](first) ** 2).mean() + second.pow(3).mean(),  # uses both features
            heads[1](second).sum() * heads[1](second).mean(),  # a head used twice
            heads[2](first).exp().mean(),
        ]
    )
    losses = torch.stack(tasks)
    shared = list(trunk.parameters())
    split = split_at_features(task_roots(losses, None), [first, second], shared)
    assert (split is not None) == (two_stage is list)  # each pass is reached
    expected = jacobian_by_rows(losses, shared)
    own = [p for m in heads for p in m.parameters()]
    expected_heads = torch.autograd.grad(losses.sum(), own, retain_graph=True)
    recorder = Recorder()
    given = losses if form == "stacked" else tasks
    mtl_backward(given, [first, second], recorder, shared_params=shared)
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
    for p, g in zip(own, expected_heads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-12)


def _split(tasks: list[torch.Tensor], features: list[torch.Tensor], shared) -> object:
    return split_at_features(task_roots(torch.stack(tasks), None), features, shared)


def test_the_split_applies_only_to_separate_heads_of_scalar_tasks() -> None:
    torch.manual_seed(0)
    trunk, shared_head = nn.Linear(3, 4).double(), nn.Linear(4, 2).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    features = trunk(x)
    shared = list(trunk.parameters())
    separate = [features[:, 0].mean(), features[:, 1].pow(2).mean()]
    assert [len(e) for e in _split(separate, [features], shared).edges] == [1, 1]
    outputs = shared_head(features)  # one node reached by both tasks
    assert _split([outputs[:, 0].mean(), outputs[:, 1].mean()], [features], shared) is None
    around = [features.mean(), trunk.weight.sum()]  # a shared parameter around the features
    assert _split(around, [features], shared) is None
    total = features.sum()  # an objective that is a feature itself
    assert _split([total, features.mean()], [total], shared) is None
    leaf = torch.randn(2, requires_grad=True)
    assert _split([leaf.sum(), leaf.mean()], [leaf], []) is None
    vector = torch.stack([features.mean(dim=0), features.sum(dim=0)])  # not a stack of scalars
    assert task_roots(vector, None) is None
    assert task_roots(torch.cat([features.sum(0), features.sum(0)]), None) is None
    assert task_roots(torch.ones(2), [features.sum(0), features.sum()]) is None


def _rows_by_task(tasks: list[torch.Tensor], params: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(
        [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(t, params, retain_graph=True)])
            for t in tasks
        ]
    )


@pytest.mark.parametrize("case", ["reached twice", "split feature", "nested features"])
def test_heads_that_meet_the_trunk_oddly_give_the_row_by_row_jacobian(case: str, two_stage) -> None:
    """Whatever the shape of the graph between heads and features (a head node reached along
    two paths, a task that uses the other output of the node that makes a feature, a feature
    computed from another feature), the shared Jacobian is the row-by-row one."""
    torch.manual_seed(0)
    trunk = nn.Linear(3, 6).double()
    heads = [nn.Linear(k, 1).double() for k in (2, 4, 6, 6, 6)]
    x = torch.randn(5, 3, dtype=torch.float64)
    h = trunk(x)
    if case == "reached twice":
        z = [heads[2](h), heads[3](h.tanh())]
        tasks, features = [(z[0] * z[0]).mean(), (z[1] + z[1].exp()).mean()], [h]
    elif case == "split feature":
        first, rest = h.split([2, 4], dim=1)
        tasks, features = [heads[0](first).pow(2).mean(), heads[1](rest).pow(2).mean()], [h, first]
    else:
        inner = h.exp()
        outer = 2 * inner
        tasks = [heads[2](h).pow(2).mean(), heads[3](inner).mean(), heads[4](outer).sin().mean()]
        features = [h, outer]
    tasks, shared = two_stage(tasks), list(trunk.parameters())
    if case == "reached twice":  # the split applies to tasks with nodes of their own
        split = split_at_features(task_roots(torch.stack(tasks), None), features, shared)
        assert (split is not None) == (two_stage is list)
    expected = _rows_by_task(tasks, shared)
    recorder = Recorder()
    mtl_backward(tasks, features, recorder, shared_params=shared)
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)


def test_head_gradients_never_share_storage(two_stage) -> None:
    """autograd may return one tensor for two parameters (here two biases added together)."""
    torch.manual_seed(0)
    trunk = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    weight, b1, b2, other = (
        torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        for shape in ((4, 4), (4,), (4,), (4,))
    )
    x = torch.randn(3, dtype=torch.float64)
    for _ in range(2):  # the second step accumulates into .grad
        f = x @ trunk
        tasks = [((f @ weight + b1 + b2) ** 2).sum(), ((f * other).sum() ** 2)]
        mtl_backward(two_stage(tasks), f, Recorder())
    assert b1.grad.data_ptr() != b2.grad.data_ptr()
    f = x @ trunk
    expected = torch.autograd.grad(((f @ weight + b1 + b2) ** 2).sum(), [b1, b2])
    assert torch.allclose(b1.grad, 2 * expected[0]) and torch.allclose(b2.grad, 2 * expected[1])
