from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import jdopt.aggregation as agg
from jdopt import JDOptimizer
from tests.utils.reference import jacobian_by_rows


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randn(
        8, 2, generator=g
    ).double()


def _losses(model: nn.Module, step: int) -> torch.Tensor:
    x, y = _batch(step)
    return ((model(x) - y) ** 2).mean(dim=1)  # one loss per sample: [8]


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


OPTIMIZERS = [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: torch.optim.Adam(ps, lr=0.01),
    lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    lambda ps: torch.optim.RMSprop(ps, lr=0.01),
]


@pytest.mark.parametrize("make", OPTIMIZERS)
@pytest.mark.parametrize(("aggregator", "reduce"), [(agg.Mean(), "mean"), (agg.Sum(), "sum")])
def test_mean_and_sum_equal_the_bare_optimizer(make, aggregator, reduce: str) -> None:
    jd_model, bare_model = _model(), _model()
    jd = JDOptimizer(make(jd_model.parameters()), aggregator=aggregator)
    bare = make(bare_model.parameters())
    for step in range(4):
        jd.zero_grad()
        jd.step(_losses(jd_model, step))
        bare.zero_grad()
        getattr(_losses(bare_model, step), reduce)().backward()
        bare.step()
    assert torch.allclose(_params(jd_model), _params(bare_model), atol=1e-10)


def test_upgrad_step_is_non_conflicting() -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3))
    losses = _losses(model, 0)
    jacobian = jacobian_by_rows(losses, list(model.parameters()))
    before = _params(model)
    jd.step(losses)
    moved = before - _params(model)
    slack = 1e-4 * float((jacobian**2).sum()) * float(moved.abs().max()) * 1e3
    assert (jacobian @ moved >= -slack).all()
    assert (jacobian @ moved).min() < (jacobian.sum(dim=0) @ jacobian.T).max()  # it did move


def test_weighting_is_accepted_and_diagnostics_are_right() -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=agg.MGDAWeighting())
    losses = _losses(model, 0).reshape(4, 2)
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
    model = _model()
    losses = _losses(model, 0)
    expected = make_aggregator()(jacobian_by_rows(losses, list(model.parameters())))
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=make_aggregator())
    jd.backward(losses)
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(grads, expected, atol=1e-10)


def test_jacobian_only_aggregator_has_no_weights() -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=agg.TrimmedMean(1))
    jd.step(_losses(model, 0))
    assert jd.last_step.weights is None


@pytest.mark.parametrize("as_list", [False, True])
def test_multi_task_with_features(as_list: bool) -> None:
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


def test_it_is_a_real_optimizer() -> None:
    model = _model()
    inner = torch.optim.Adam(model.parameters(), lr=0.1)
    jd = JDOptimizer(inner)
    assert isinstance(jd, torch.optim.Optimizer)
    assert jd.param_groups is inner.param_groups and jd.state is inner.state
    assert jd.defaults is inner.defaults
    extra = nn.Parameter(torch.ones(2, dtype=torch.float64))
    jd.add_param_group({"params": [extra], "lr": 0.5})
    assert inner.param_groups[-1]["lr"] == 0.5
    assert "Adam" in repr(jd) and "UPGrad" in repr(jd)
    jd.step(_losses(model, 0))
    assert extra.grad is None  # not reached by the losses: left alone, like backward()
    jd.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5),
    ],
)
def test_lr_schedulers_drive_the_wrapped_optimizer(make_scheduler) -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    scheduler = make_scheduler(jd)
    reference = make_scheduler(torch.optim.SGD(_model().parameters(), lr=0.1, momentum=0.9))
    for step in range(3):
        jd.zero_grad()
        jd.step(_losses(model, step))
        scheduler.step()
        reference.optimizer.step()
        reference.step()
        assert jd.param_groups[0]["lr"] == pytest.approx(reference.optimizer.param_groups[0]["lr"])


def test_reduce_lr_on_plateau() -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(jd, patience=0, factor=0.5)
    for _ in range(3):
        scheduler.step(1.0)
    assert jd.param_groups[0]["lr"] == pytest.approx(0.025)


def test_clipping_between_backward_and_step() -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), aggregator=agg.Sum())
    jd.backward(_losses(model, 0))
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    before = _params(model)
    nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-3)
    jd.step()
    moved = before - _params(model)
    assert torch.allclose(moved, grads * 1e-3 / grads.norm(), atol=1e-9)


def _train(model: nn.Module, jd: JDOptimizer, steps: range) -> None:
    for step in steps:
        jd.zero_grad()
        jd.step(_losses(model, step))


@pytest.mark.parametrize(
    "make_aggregator",
    [
        lambda: agg.PCGrad(generator=torch.Generator().manual_seed(0)),
        lambda: agg.Random(generator=torch.Generator().manual_seed(0)),
        lambda: agg.GradDrop(generator=torch.Generator().manual_seed(0)),
        lambda: agg.NashMTL(n_tasks=8, update_weights_every=2),
    ],
)
def test_resume_from_checkpoint_is_bit_for_bit(make_aggregator) -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), aggregator=make_aggregator())
    _train(model, jd, range(3))
    checkpoint = copy.deepcopy({"model": model.state_dict(), "jd": jd.state_dict()})
    _train(model, jd, range(3, 6))
    resumed = _model(seed=1)
    resumed.load_state_dict(checkpoint["model"])
    jd2 = JDOptimizer(torch.optim.Adam(resumed.parameters(), lr=0.01), aggregator=make_aggregator())
    _train(resumed, jd2, range(1))  # desynchronise the generator before loading
    resumed.load_state_dict(checkpoint["model"])
    jd2.load_state_dict(checkpoint["jd"])
    _train(resumed, jd2, range(3, 6))
    assert torch.equal(_params(resumed), _params(model))
