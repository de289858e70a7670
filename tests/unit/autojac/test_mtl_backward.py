from __future__ import annotations

import pytest
import torch
from torch import nn

from jdopt.autojac import mtl_backward
from jdopt.autojac._heads import split_at_features, task_roots
from tests.utils.reference import Recorder, jacobian_by_rows


def _setup(n_tasks: int = 3):
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5)).double()
    heads = [nn.Linear(5, 1).double() for _ in range(n_tasks)]
    x = torch.randn(6, 4, dtype=torch.float64)
    features = trunk(x)
    losses = torch.stack([(head(features) ** 2).mean() for head in heads])
    return trunk, heads, features, losses


@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_shared_jacobian_and_head_gradients(chunk: int | None) -> None:
    trunk, heads, features, losses = _setup()
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


def test_several_features_and_explicit_params() -> None:
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


def test_invalid_features() -> None:
    trunk, _heads, features, losses = _setup()
    with pytest.raises(ValueError, match="require grad"):
        mtl_backward(losses, features.detach(), Recorder())
    with pytest.raises(ValueError, match="one entry per task"):
        mtl_backward(losses, features, Recorder(), tasks_params=[[]])
    with pytest.raises(TypeError, match="features"):
        mtl_backward(losses, "features", Recorder())
    assert all(p.grad is None for p in trunk.parameters())


def test_default_shared_params_are_upstream_of_features() -> None:
    trunk, _heads, features, losses = _setup()
    shared = list(trunk.parameters())
    expected = jacobian_by_rows(losses, shared).sum(dim=0)
    mtl_backward(losses, features, Recorder())
    grads = torch.cat([p.grad.reshape(-1) for p in shared])
    assert torch.allclose(grads, expected, atol=1e-12)


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


@pytest.mark.usefixtures("two_stage")
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_losses_given_as_a_list_match_the_row_by_row_jacobian(
    tied: bool, chunk: int | None
) -> None:
    """The shared Jacobian is the losses' whole Jacobian, paths around the features included
    (given ``tasks_params``: by default a tied weight would be both shared and task-specific)."""
    trunk, heads, _, _ = _setup()
    x = torch.randn(6, 4, dtype=torch.float64)
    tasks, features, own = _task_list(trunk, heads, x, tied=tied)
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


@pytest.mark.usefixtures("two_stage")
def test_a_listed_task_that_ignores_the_features_gets_a_zero_row() -> None:
    trunk, heads, features, _ = _setup(2)
    own = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    tasks = [(heads[0](features) ** 2).mean(), own**2, (heads[1](features) ** 2).mean()]
    losses = torch.stack(tasks)
    shared = list(trunk.parameters())
    expected = jacobian_by_rows(losses, shared)
    recorder = Recorder()
    mtl_backward(tasks, features, recorder, shared_params=shared)
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
    assert recorder.jacobian[1].abs().max() == 0
    assert torch.allclose(own.grad, torch.tensor(4.0, dtype=torch.float64))


@pytest.mark.usefixtures("two_stage")
def test_losses_that_reach_no_feature_give_a_zero_jacobian() -> None:
    """As in TorchJD: zero rows, not an error; the heads still get their gradients."""
    trunk, _, features, _ = _setup(2)
    own = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    recorder = Recorder()
    mtl_backward([own**2, own**3], features, recorder)
    n = sum(p.numel() for p in trunk.parameters())
    assert torch.equal(recorder.jacobian, torch.zeros(2, n, dtype=torch.float64))
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in trunk.parameters())
    assert torch.allclose(own.grad, torch.tensor(16.0, dtype=torch.float64))


@pytest.mark.usefixtures("two_stage")
@pytest.mark.parametrize("form", ["stacked", "list"])
def test_separate_heads_of_scalar_tasks_match_the_row_by_row_jacobian(form: str) -> None:
    torch.manual_seed(1)
    trunk = nn.Sequential(nn.Linear(4, 5), nn.Tanh()).double()
    heads = [nn.Linear(3, 1).double(), nn.Linear(2, 2).double(), nn.Linear(3, 1).double()]
    x = torch.randn(6, 4, dtype=torch.float64)
    first, second = trunk(x).split([3, 2], dim=1)  # two features from one node
    tasks = [
        (heads[0](first) ** 2).mean() + second.pow(3).mean(),  # uses both features
        heads[1](second).sum() * heads[1](second).mean(),  # a head used twice
        heads[2](first).exp().mean(),
    ]
    losses = torch.stack(tasks)
    shared = list(trunk.parameters())
    assert split_at_features(task_roots(losses, None), [first, second], shared) is not None
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


@pytest.mark.usefixtures("two_stage")
@pytest.mark.parametrize("case", ["reached twice", "split feature", "nested features"])
def test_heads_that_share_nothing_but_meet_the_trunk_oddly(case: str) -> None:
    """Regressions: a head node reached along two paths, a task that uses the other output of
    the node that makes a feature, a feature computed from another feature."""
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
    shared = list(trunk.parameters())
    if case == "reached twice":  # the split applies: the test covers the two-stage pass
        assert split_at_features(task_roots(torch.stack(tasks), None), features, shared)
    expected = _rows_by_task(tasks, shared)
    recorder = Recorder()
    mtl_backward(tasks, features, recorder, shared_params=shared)
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)


@pytest.mark.usefixtures("two_stage")
def test_head_gradients_never_share_storage() -> None:
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
        mtl_backward(tasks, f, Recorder())
    assert b1.grad.data_ptr() != b2.grad.data_ptr()
    f = x @ trunk
    expected = torch.autograd.grad(((f @ weight + b1 + b2) ** 2).sum(), [b1, b2])
    assert torch.allclose(b1.grad, 2 * expected[0]) and torch.allclose(b2.grad, 2 * expected[1])


def test_invalid_losses_get_the_losses_error_with_features() -> None:
    _, _, features, _ = _setup()
    for bad in (None, 3.0):
        with pytest.raises(TypeError, match="`losses` should be a tensor"):
            mtl_backward(bad, features, Recorder())


@pytest.mark.parametrize("retain_graph", [False, True])
def test_features_computed_from_one_another(retain_graph: bool) -> None:
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
