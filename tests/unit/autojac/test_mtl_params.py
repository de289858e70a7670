"""Which parameters ``mtl_backward`` writes, and what: TorchJD 0.8's rules.

A shared parameter gets its slice of the aggregated update (zeros when the features do not
depend on it); a task parameter gets the sum of the gradients of the tasks that list it (zeros
when none of them reaches it); repeats count once; a parameter cannot be both.
"""

from __future__ import annotations

import pytest
import torch

from jdopt.autojac import mtl_backward
from tests.utils.reference import Recorder, jacobian_by_rows

_F64 = torch.float64


def _problem(*, cross: bool = False):
    """Shared ``p0 [2]``, ``p1 [1]``; heads ``h1``, ``h2``; features ``p0 * p1``; with
    ``cross``, the second loss also uses ``h1``."""
    p0, p1 = (torch.tensor(v, dtype=_F64, requires_grad=True) for v in ([1.0, 2.0], [3.0]))
    h1, h2 = (torch.tensor(v, dtype=_F64, requires_grad=True) for v in ([1.0, -1.0], [2.0, 0.5]))
    features = p0 * p1
    second = ((features * h2) ** 2).sum() + (h1**2).sum() * cross
    return [p0, p1], [h1, h2], features, [(features * h1).sum(), second]


def _task_grad(losses: list[torch.Tensor], tasks: list[int], param: torch.Tensor):
    """The gradient of the sum of the listed tasks' losses (zeros when they do not reach it)."""
    total = sum(losses[i] for i in tasks)
    (grad,) = torch.autograd.grad(total, [param], retain_graph=True, allow_unused=True)
    return torch.zeros_like(param) if grad is None else grad


def test_a_repeated_shared_parameter_counts_once() -> None:
    shared, _, features, losses = _problem()
    expected = jacobian_by_rows(torch.stack(losses), shared)
    recorder = Recorder()
    mtl_backward(losses, features, recorder, shared_params=[shared[0], *shared, shared[0]])
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
    assert torch.allclose(torch.cat([p.grad for p in shared]), expected.sum(dim=0), atol=1e-12)


LISTINGS = {  # tasks_params as indices of the heads, and for each head the tasks that list it
    "default": (None, {0: [0, 1], 1: [1]}),
    "own heads": ([[0], [1]], {0: [0], 1: [1]}),
    "repeated": ([[0, 0], [1, 1]], {0: [0], 1: [1]}),
    "shared head": ([[0], [1, 0]], {0: [0, 1], 1: [1]}),
    "swapped": ([[1], [0]], {0: [1], 1: [0]}),
}


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("listing", LISTINGS.values(), ids=LISTINGS.keys())
def test_a_task_parameter_gets_the_gradients_of_the_tasks_that_list_it(
    listing, cross, two_stage
) -> None:
    indices, listed_by = listing
    _, heads, features, losses = _problem(cross=cross)
    losses = two_stage(losses)
    if indices is None and not cross:
        listed_by = {0: [0], 1: [1]}  # by default: the tasks whose loss reaches the head
    expected = [_task_grad(losses, listed_by[j], head) for j, head in enumerate(heads)]
    tasks_params = None if indices is None else [[heads[j] for j in own] for own in indices]
    mtl_backward(losses, features, Recorder(), tasks_params=tasks_params)
    for head, grad in zip(heads, expected, strict=True):
        assert torch.allclose(head.grad, grad, atol=1e-12)


def test_listed_parameters_that_are_not_reached_get_zeros(two_stage) -> None:
    shared, heads, features, losses = _problem()
    losses = two_stage(losses)
    extra_shared, extra_head = (torch.ones(3, dtype=_F64, requires_grad=True) for _ in range(2))
    expected = jacobian_by_rows(torch.stack(losses), [*shared, extra_shared])  # zero columns
    recorder = Recorder()
    mtl_backward(
        losses,
        features,
        recorder,
        tasks_params=[[heads[0], extra_head], [heads[1]]],
        shared_params=[*shared, extra_shared],
    )
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
    assert torch.equal(extra_shared.grad, torch.zeros(3, dtype=_F64))
    assert torch.equal(extra_head.grad, torch.zeros(3, dtype=_F64))


def test_a_trunk_parameter_listed_for_a_task_gets_that_tasks_gradient(two_stage) -> None:
    """Its gradient goes through the features (TorchJD 0.8 fails here: the graph is freed)."""
    (p0, p1), heads, features, losses = _problem()
    losses = two_stage(losses)
    expected = _task_grad(losses, [1], p1)
    mtl_backward(
        losses, features, Recorder(), tasks_params=[heads[:1], [heads[1], p1]], shared_params=[p0]
    )
    assert torch.allclose(p1.grad, expected, atol=1e-12)


def test_a_task_loss_that_is_its_own_parameter(two_stage) -> None:
    """A leaf given as a task's loss (as it is, or plus a zero shared by the tasks), and as that
    task's parameter: a zero row, gradient 1."""
    shared, heads, features, losses = _problem()
    leaf = torch.tensor(2.0, dtype=_F64, requires_grad=True)
    tasks = two_stage([losses[0], leaf])
    expected = jacobian_by_rows(torch.stack(tasks), shared)
    recorder = Recorder()
    mtl_backward(tasks, features, recorder, tasks_params=[heads[:1], [leaf]])
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
    assert torch.equal(leaf.grad, torch.tensor(1.0, dtype=_F64))


def test_empty_parameters_leave_their_side_alone() -> None:
    """Empty ``shared_params``: only the heads get gradients (the aggregator is not called);
    empty task parameters: only the trunk; both: nothing."""
    shared, heads, features, losses = _problem()
    expected = [_task_grad(losses, [j], head) for j, head in enumerate(heads)]
    recorder = Recorder()
    mtl_backward(losses, features, recorder, shared_params=[], retain_graph=True)
    assert recorder.jacobian is None and all(p.grad is None for p in shared)
    assert all(torch.allclose(h.grad, g, atol=1e-12) for h, g in zip(heads, expected, strict=True))
    for head in heads:
        head.grad = None
    mtl_backward(
        losses, features, recorder, tasks_params=[[], []], shared_params=[], retain_graph=True
    )
    assert recorder.jacobian is None and all(p.grad is None for p in [*shared, *heads])
    mtl_backward(losses, features, recorder, tasks_params=[[], []])
    assert recorder.jacobian is not None and all(h.grad is None for h in heads)


OVERLAPS = {
    "given": lambda sh, hs, ls: (ls, {"tasks_params": [[hs[0], sh[0]], [hs[1]]]}, "Remove"),
    "tied, by default": lambda sh, hs, ls: ([ls[0] + sh[0].sum(), ls[1]], {}, "directly"),
    "tied, shared given": lambda sh, hs, ls: (
        [ls[0] + sh[0].sum(), ls[1]],
        {"shared_params": sh},
        "directly",
    ),
}


@pytest.mark.parametrize("case", OVERLAPS.values(), ids=OVERLAPS.keys())
def test_a_parameter_both_shared_and_task_specific_is_refused(case) -> None:
    shared, heads, features, losses = _problem()
    losses, kwargs, match = case(shared, heads, losses)
    with pytest.raises(ValueError, match=f"no tensor in common(.|\n)*{match}"):
        mtl_backward(losses, features, Recorder(), **kwargs)
    assert all(p.grad is None for p in [*shared, *heads])


@pytest.mark.parametrize("chunk", [None, 1])
def test_retain_graph_false_frees_the_graph(chunk: int | None, two_stage) -> None:
    shared, _, features, losses = _problem()
    losses = two_stage(losses)
    expected = jacobian_by_rows(torch.stack(losses), shared).sum(dim=0)
    mtl_backward(losses, features, Recorder(), retain_graph=True, parallel_chunk_size=chunk)
    mtl_backward(losses, features, Recorder(), parallel_chunk_size=chunk)
    assert torch.allclose(torch.cat([p.grad for p in shared]), 2 * expected, atol=1e-12)
    with pytest.raises(RuntimeError, match="second time"):
        mtl_backward(losses, features, Recorder(), parallel_chunk_size=chunk)


@pytest.mark.parametrize("chunk", [None, 1])
def test_features_and_shared_tensors_that_retain_grad(chunk: int | None, two_stage) -> None:
    """The features' .grad is left alone; a non-leaf shared tensor gets its slice of the
    update."""
    shared, heads, _, _ = _problem()
    scaled = shared[0] * 1.5
    features = scaled * shared[1]
    losses = two_stage([(features * heads[0]).sum(), ((features * heads[1]) ** 2).sum()])
    expected = jacobian_by_rows(torch.stack(losses), [scaled, shared[1]]).sum(dim=0)
    for tensor in (scaled, features):
        tensor.retain_grad()
    mtl_backward(
        losses, features, Recorder(), shared_params=[scaled, shared[1]], parallel_chunk_size=chunk
    )
    assert features.grad is None
    assert torch.allclose(torch.cat([scaled.grad, shared[1].grad]), expected, atol=1e-12)
