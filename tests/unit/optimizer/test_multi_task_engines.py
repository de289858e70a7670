"""Multi-task steps (``features=``): the trunk on the Gramian engine where it applies, the
full Jacobian otherwise, the race between the two with ``engine="auto"`` — always the
reference step."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

import jdopt.aggregation as agg
from jdopt import JDOptimizer
from tests.utils.device import draw, seeded

from ._helpers import flat_params


class _MultiTask(nn.Module):
    """A trunk and three heads; ``shared_head``: one head module for every task; ``tied``: the
    first task also uses the trunk's first weight directly."""

    def __init__(self, shared_head: bool = False, tied: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(5, 1) for _ in range(1 if shared_head else 3))
        self.shared_head, self.tied = shared_head, tied
        self.double()

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        features = self.trunk(x)
        heads = [self.heads[0]] * 3 if self.shared_head else list(self.heads)
        tasks = [(h(features).squeeze(1) - i).pow(2).mean() for i, h in enumerate(heads)]
        if self.tied:
            tasks[0] = tasks[0] + self.trunk[0].weight.sum() ** 2
        return tasks, features


class _Custom(nn.Module):
    """A head with direct parameters: the engine's fallback rule."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(5, dtype=torch.float64))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features * self.weight).sum(dim=1)


def _batch(step: int) -> torch.Tensor:
    return draw(7, 4, generator=seeded(step), dtype=torch.float64)


@pytest.mark.parametrize(
    ("variant", "engine"),
    [
        ({}, "autogram-mtl"),
        ({"shared_head": True}, "autogram-mtl"),
        ({"tied": True}, "autojac-mtl"),
    ],
)
@pytest.mark.parametrize("form", ["list", "stacked"])
@pytest.mark.parametrize("aggregator", [agg.UPGrad(), agg.MGDAWeighting(), agg.Sum()])
def test_multi_task_steps_with_the_trunk_on_the_engine(variant, engine, form, aggregator) -> None:
    """``engine="autogram"`` takes the trunk on the engine unless a trunk parameter reaches
    the losses around the features (then the full Jacobian); the steps and Gramians are the
    full Jacobian's."""
    gram_model, jac_model = _MultiTask(**variant), _MultiTask(**variant)
    gram = JDOptimizer(
        torch.optim.Adam(gram_model.parameters(), lr=0.01),
        aggregator=aggregator,
        model=gram_model.trunk,
        engine="autogram",
    )
    jac = JDOptimizer(torch.optim.Adam(jac_model.parameters(), lr=0.01), aggregator=aggregator)
    for step in range(3):
        x = _batch(step)
        for jd, model in ((gram, gram_model), (jac, jac_model)):
            tasks, features = model(x)
            jd.zero_grad()
            jd.step(tasks if form == "list" else torch.stack(tasks), features=features)
    assert gram.last_step.engine == engine and jac.last_step.engine == "autojac-mtl"
    assert torch.allclose(flat_params(gram_model), flat_params(jac_model), atol=1e-9)
    assert torch.allclose(gram.last_step.gramian, jac.last_step.gramian, atol=1e-9)


def test_multi_task_steps_on_auto_time_both_engines_then_keep_one() -> None:
    """engine="auto" with the trunk on the engine: the first steps take both multi-task
    engines, later steps one of them; every step is the reference's."""
    auto_model, jac_model = _MultiTask(), _MultiTask()
    auto = JDOptimizer(torch.optim.Adam(auto_model.parameters(), lr=0.01), model=auto_model.trunk)
    jac = JDOptimizer(torch.optim.Adam(jac_model.parameters(), lr=0.01))
    used = []
    for step in range(8):
        x = _batch(step)
        for jd, model in ((auto, auto_model), (jac, jac_model)):
            tasks, features = model(x)
            jd.zero_grad()
            jd.step(tasks, features=features)
        used.append(auto.last_step.engine)
        assert torch.allclose(flat_params(auto_model), flat_params(jac_model), atol=1e-9)
    assert set(used) == {"autogram-mtl", "autojac-mtl"}
    assert len(set(used[-3:])) == 1


@pytest.mark.parametrize(("model", "engine"), [("whole", "autogram-mtl"), ("last", "autojac-mtl")])
def test_multi_task_engine_on_more_or_less_than_the_trunk(model: str, engine: str) -> None:
    """The whole model (heads hooked too) still uses the engine; an engine that misses part of
    the trunk leaves the step to the full-Jacobian engine. Both give the reference gradients."""
    net = _MultiTask()
    hooked = net if model == "whole" else net.trunk[2]
    jd = JDOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), aggregator=agg.Sum(), model=hooked)
    tasks, features = net(torch.randn(7, 4, dtype=torch.float64))
    expected = torch.autograd.grad(sum(tasks), list(net.parameters()), retain_graph=True)
    jd.backward(tasks, features=features)
    assert jd.last_step.engine == engine
    for p, g in zip(net.parameters(), expected, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-12)


@pytest.mark.parametrize("case", ["nested", "view", "sibling", "repeated", "separate"])
def test_multi_task_features_that_overlap_take_the_full_jacobian(case: str) -> None:
    """The losses' gradients at nested, overlapping or repeated features are not the features'
    own contributions: such steps take the full Jacobian; separate features stay on the
    engine. Every step is the reference's."""

    def run(model):
        torch.manual_seed(0)
        trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh()).double()
        head = nn.Linear(6, 3).double()
        params = [*trunk.parameters(), *head.parameters()]
        jd = JDOptimizer(torch.optim.SGD(params, lr=0.1), model=trunk if model else None)
        x = draw(5, 4, generator=seeded(1), dtype=torch.float64)
        h = trunk(x)
        first, rest = h.split([2, 4], dim=1)
        features = {
            "nested": [h, h.exp()],
            "view": [h, h[:, :3]],
            "sibling": [first],
            "repeated": [h, h],
            "separate": [first, rest],
        }[case]
        if case == "nested":
            used = torch.cat([h[:, :3], features[1][:, 3:]], dim=1)
        elif case in ("sibling", "separate"):  # sibling: `rest` is not a feature
            used = torch.cat([first, rest.exp()], dim=1)
        else:
            used = h
        losses = head(used).pow(2).mean(dim=0)  # one head for the three tasks: [3]
        jd.step(losses, features=features)
        return torch.cat([p.detach().reshape(-1) for p in params]), jd.last_step.engine

    (engine_params, engine), (reference, _) = run(True), run(False)
    assert engine == ("autogram-mtl" if case == "separate" else "autojac-mtl")
    assert torch.allclose(engine_params, reference, atol=1e-12)


def test_a_multi_task_step_off_the_engine_leaves_nothing_recorded() -> None:
    """The calls the engine recorded for a step it did not take are forgotten: their
    activations are freed with the step's graph."""
    net = _MultiTask(tied=True)
    jd = JDOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), model=net.trunk)
    seen: list[weakref.ref] = []  # the storage of the Tanh's outputs (the next Linear's inputs)

    def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        seen.append(weakref.ref(out.untyped_storage()))

    net.trunk[1].register_forward_hook(record)
    for step in range(3):
        tasks, features = net(torch.randn(7, 4, dtype=torch.float64))
        jd.step(tasks, features=features)
        assert jd.last_step.engine == "autojac-mtl"
        del tasks, features
        gc.collect()
        assert len(seen) == step + 1 and seen[-1]() is None


def test_a_fallback_head_outside_the_step_gets_no_gradient() -> None:
    """A hooked head that the losses do not use keeps ``.grad`` None and does not move (not
    even by weight decay)."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(4, 5), nn.Tanh()).double()
    used, unused = _Custom(), _Custom()
    whole = nn.ModuleList([trunk, used, unused])
    jd = JDOptimizer(torch.optim.AdamW(whole.parameters(), lr=0.1, weight_decay=0.1), model=whole)
    features = trunk(torch.randn(6, 4, dtype=torch.float64))
    unused(features)  # called, but not part of the losses
    jd.step([used(features).pow(2).mean(), features.sum()], features=features)
    assert jd.last_step.engine == "autogram-mtl"
    assert unused.weight.grad is None and torch.equal(unused.weight, torch.ones(5).double())
    assert used.weight.grad is not None


@pytest.mark.parametrize("on_engine", [True, False])
@pytest.mark.parametrize("kind", ["per-sample", "multi-task"])
def test_losses_and_features_that_retain_grad_keep_a_usable_grad(on_engine, kind) -> None:
    """Tensors of the step that called ``retain_grad()`` keep the ``.grad`` they had (the
    batched passes must not leave them a tensor without storage), and the step is unchanged."""
    net, reference = _MultiTask(), _MultiTask()
    steps = []
    for model, retain in ((net, True), (reference, False)):
        jd = JDOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            aggregator=agg.UPGrad(),
            model=model.trunk if on_engine else None,
            batch_dim=0 if kind == "per-sample" and on_engine else None,
        )
        tasks, features = model(_batch(0))
        losses = torch.stack(tasks) if kind == "multi-task" else model.heads[0](features)[:, 0]
        # Features of a multi-task step (given to step) and losses; not other graph tensors.
        kept = [losses, features] if kind == "multi-task" else [losses]
        if retain:
            for tensor in kept:
                tensor.retain_grad()
                tensor.grad = torch.ones_like(tensor)
        jd.zero_grad()
        jd.step(losses, features=features if kind == "multi-task" else None)
        steps.append(jd.last_step.engine)
        if retain:  # reading the values fails on a tensor without storage
            assert all(torch.equal(t.grad, torch.ones_like(t)) for t in kept)
    assert steps[0] == steps[1]
    assert torch.allclose(flat_params(net), flat_params(reference), atol=1e-12)
