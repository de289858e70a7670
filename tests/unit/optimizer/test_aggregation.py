"""Each step writes the aggregation of the losses' Jacobian into ``.grad``, and reports it
(``last_step``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import jdopt.aggregation as agg
from jdopt import JDOptimizer
from tests.utils.reference import jacobian_by_rows

from ._helpers import flat_params, mlp, sample_losses


def test_upgrad_step_is_non_conflicting() -> None:
    """The default (UPGrad) step decreases no loss to first order, and it moves."""
    model = mlp()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3))
    losses = sample_losses(model, 0)
    jacobian = jacobian_by_rows(losses, list(model.parameters()))
    before = flat_params(model)
    jd.step(losses)
    moved = before - flat_params(model)
    slack = 1e-4 * float((jacobian**2).sum()) * float(moved.abs().max()) * 1e3
    assert (jacobian @ moved >= -slack).all()
    assert (jacobian @ moved).min() < (jacobian.sum(dim=0) @ jacobian.T).max()  # it did move


def test_a_weighting_is_accepted_and_the_diagnostics_follow_from_the_gramian() -> None:
    """A Weighting works as an aggregator; ``last_step`` holds its weights in the losses'
    shape, the Gramian, the pairwise cosines and the fraction of conflicting pairs."""
    model = mlp()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=agg.MGDAWeighting())
    losses = sample_losses(model, 0).reshape(4, 2)
    jacobian = jacobian_by_rows(losses, list(model.parameters()))
    jd.step(losses)
    info = jd.last_step
    gramian = jacobian @ jacobian.T
    norms = gramian.diagonal().sqrt()
    assert info.engine == "autojac"
    assert info.weights.shape == (4, 2)
    assert torch.allclose(info.weights.reshape(-1), agg.MGDAWeighting()(gramian), atol=1e-8)
    assert torch.allclose(info.gramian, gramian, atol=1e-12)
    assert torch.allclose(info.cosine_similarities, gramian / norms.outer(norms), atol=1e-12)
    pairs = [(i, j) for i in range(8) for j in range(i + 1, 8)]
    expected = sum(float(gramian[i, j]) < 0 for i, j in pairs) / len(pairs)
    assert float(info.conflict_fraction) == pytest.approx(expected)


@pytest.mark.parametrize(
    "make_aggregator",
    [
        agg.UPGrad,
        agg.MGDA,
        agg.ConFIG,
        lambda: agg.TrimmedMean(1),
        lambda: agg.GradDrop(generator=torch.Generator().manual_seed(0)),
    ],
)
def test_gradients_are_the_aggregated_jacobian(make_aggregator) -> None:
    """Gramian methods work on the Jacobian's blocks, the others on the matrix: same result."""
    model = mlp()
    losses = sample_losses(model, 0)
    expected = make_aggregator()(jacobian_by_rows(losses, list(model.parameters())))
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=make_aggregator())
    jd.backward(losses)
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(grads, expected, atol=1e-10)


def test_jacobian_only_aggregator_has_no_weights() -> None:
    """A method that is not a weighting of the rows reports no weights."""
    model = mlp()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=agg.TrimmedMean(1))
    jd.step(sample_losses(model, 0))
    assert jd.last_step.weights is None


@pytest.mark.parametrize("as_list", [False, True])
def test_multi_task_sum_gives_the_gradient_of_the_summed_losses(as_list: bool) -> None:
    """With ``features=``, Sum on the trunk and the heads' own gradients add up to the
    gradient of the summed task losses, whether the tasks come as a list or stacked."""
    torch.manual_seed(0)
    trunk = nn.Linear(3, 4).double()
    heads = nn.ModuleList(nn.Linear(4, 1).double() for _ in range(3))
    params = [*trunk.parameters(), *heads.parameters()]
    jd = JDOptimizer(torch.optim.SGD(params, lr=0.1), aggregator=agg.Sum())
    x = torch.randn(5, 3, dtype=torch.float64)
    features = trunk(x)
    tasks = [h(features).pow(2).mean() for h in heads]
    losses = torch.stack(tasks)
    expected = [g.clone() for g in torch.autograd.grad(losses.sum(), params, retain_graph=True)]
    jd.backward(tasks if as_list else losses, features=features)
    assert jd.last_step.engine == "autojac-mtl"
    for p, g in zip(params, expected, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-12)
