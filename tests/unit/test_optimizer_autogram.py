"""JDOptimizer on the Gramian engine: same steps as the full-Jacobian engine."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

import jdopt.aggregation as agg
from jdopt import JDOptimizer
from tests.utils.architectures import ARCHITECTURES


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1),
        nn.GroupNorm(1, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(15, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    ).double()


def _losses(model: nn.Module, step: int, shape: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(6, 2, 5, generator=g, dtype=torch.float64)
    y = torch.randn(6, 3, generator=g, dtype=torch.float64)
    errors = (model(x) - y) ** 2  # [6, 3]
    if shape == "[B]":
        return errors.mean(dim=1)
    if shape == "[B, k]":
        return errors
    return errors.mean(dim=0)  # "[k]": one loss per output, not per sample


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _train(jd: JDOptimizer, model: nn.Module, shape: str, steps: int = 3) -> None:
    for step in range(steps):
        jd.zero_grad()
        jd.step(_losses(model, step, shape))


@pytest.mark.parametrize(("shape", "batch_dim"), [("[B]", 0), ("[B, k]", 0), ("[k]", None)])
@pytest.mark.parametrize("aggregator", [agg.UPGrad(), agg.MGDAWeighting(), agg.Mean()])
def test_autogram_steps_equal_autojac_steps(shape: str, batch_dim, aggregator) -> None:
    gram_model, jac_model = _model(), _model()
    gram = JDOptimizer(
        torch.optim.Adam(gram_model.parameters(), lr=0.01),
        aggregator=aggregator,
        model=gram_model,
        batch_dim=batch_dim,
    )
    jac = JDOptimizer(torch.optim.Adam(jac_model.parameters(), lr=0.01), aggregator=aggregator)
    _train(gram, gram_model, shape)
    _train(jac, jac_model, shape)
    assert gram.last_step.engine == "autogram" and jac.last_step.engine == "autojac"
    assert torch.allclose(_params(gram_model), _params(jac_model), atol=1e-9)
    assert torch.allclose(gram.last_step.gramian, jac.last_step.gramian, atol=1e-9)


@pytest.mark.parametrize("name", ["transformer_encoder", "embedding_gru", "siamese_fallback"])
def test_zoo_models_with_graph_based_rules_step_like_autojac(name: str) -> None:
    """The saved-factor path frees the graph early unless a rule needs it (attention, the
    fallback): the steps still equal the full-Jacobian engine's."""
    arch = next(a for a in ARCHITECTURES if a.name == name)
    models = [arch.make()[0] for _ in range(2)]
    inputs = arch.make()[1]
    gram = JDOptimizer(
        torch.optim.SGD(models[0].parameters(), lr=0.1), model=models[0], batch_dim=0
    )
    jac = JDOptimizer(torch.optim.SGD(models[1].parameters(), lr=0.1), engine="autojac")
    for jd, model in ((gram, models[0]), (jac, models[1])):
        for _ in range(2):
            jd.zero_grad()
            jd.step(arch.outputs(model, inputs).pow(2).mean(dim=1))
    assert torch.allclose(_params(models[0]), _params(models[1]), atol=1e-9)


def test_partial_engine_weights_the_whole_model() -> None:
    model = _model()
    last = model[-1]
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=last, batch_dim=0)
    losses = _losses(model, 0, "[B]")
    params = list(model.parameters())
    jacobian = torch.stack(
        [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
            for loss in losses
        ]
    )
    tail = torch.tensor(
        [i >= len(params) - 2 for i, p in enumerate(params) for _ in range(p.numel())]
    )
    partial = jacobian[:, tail]
    weights = agg.UPGradWeighting()(partial @ partial.T)
    jd.backward(losses)
    grads = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.allclose(grads, weights @ jacobian, atol=1e-10)
    assert torch.allclose(jd.last_step.weights, weights, atol=1e-10)


def test_engine_choice() -> None:
    model = _model()
    params = model.parameters
    assert JDOptimizer(torch.optim.SGD(params(), lr=1.0), model=model).engine == "autogram"
    assert JDOptimizer(torch.optim.SGD(params(), lr=1.0)).engine == "autojac"
    configured = JDOptimizer(
        torch.optim.SGD(params(), lr=1.0), aggregator=agg.ConFIG(), model=model
    )
    assert configured.engine == "autojac"
    forced = JDOptimizer(torch.optim.SGD(params(), lr=1.0), model=model, engine="autojac")
    assert forced.engine == "autojac"
    with pytest.raises(ValueError, match="needs the whole Jacobian"):
        JDOptimizer(
            torch.optim.SGD(params(), lr=1.0),
            aggregator=agg.GradDrop(),
            model=model,
            engine="autogram",
        )
    with pytest.raises(ValueError, match="needs `model=`"):
        JDOptimizer(torch.optim.SGD(params(), lr=1.0), engine="autogram")
    with pytest.raises(ValueError, match="GroupNorm or LayerNorm"):
        JDOptimizer(torch.optim.SGD(params(), lr=1.0), model=nn.BatchNorm1d(3), batch_dim=0)


def test_close_removes_the_hooks_and_falls_back_to_autojac() -> None:
    model = _model()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=model, batch_dim=0)
    jd.close()
    assert all(not m._forward_hooks for m in model.modules())
    jd.step(_losses(model, 0, "[B]"))
    assert jd.last_step.engine == "autojac"


def test_grad_scaler_on_autogram_matches_the_unscaled_run() -> None:
    plain_model, amp_model = _model(), _model()
    plain = JDOptimizer(
        torch.optim.SGD(plain_model.parameters(), lr=0.1), model=plain_model, batch_dim=0
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    amp = JDOptimizer(
        torch.optim.SGD(amp_model.parameters(), lr=0.1), model=amp_model, batch_dim=0, scaler=scaler
    )
    plain.step(_losses(plain_model, 0, "[B]"))
    amp.backward(scaler.scale(_losses(amp_model, 0, "[B]")))
    scaler.step(amp)
    scaler.update()
    assert torch.allclose(_params(plain_model), _params(amp_model), atol=1e-10)


def test_non_finite_gramian_is_skipped_with_a_scaler_and_refused_without() -> None:
    model = _model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    jd = JDOptimizer(torch.optim.Adam(model.parameters()), model=model, batch_dim=0, scaler=scaler)
    before = _params(model)
    losses = _losses(model, 0, "[B]")
    jd.backward(scaler.scale(losses + torch.sqrt(losses * 0.0)))
    assert jd.last_step.skipped
    scaler.step(jd)
    scaler.update()
    assert torch.equal(_params(model), before) and jd.state == {}
    jd.zero_grad()
    plain = JDOptimizer(torch.optim.Adam(model.parameters()), model=model, batch_dim=0)
    losses = _losses(model, 0, "[B]")
    with pytest.raises(ValueError, match="contains NaN or inf"):
        plain.step(losses + torch.sqrt(losses * 0.0))
    assert all(p.grad is None for p in model.parameters()) and plain.state == {}


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
    gram_model, jac_model = _MultiTask(**variant), _MultiTask(**variant)
    gram = JDOptimizer(
        torch.optim.Adam(gram_model.parameters(), lr=0.01),
        aggregator=aggregator,
        model=gram_model.trunk,
        engine="autogram",
    )
    jac = JDOptimizer(torch.optim.Adam(jac_model.parameters(), lr=0.01), aggregator=aggregator)
    for step in range(3):
        x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        for jd, model in ((gram, gram_model), (jac, jac_model)):
            tasks, features = model(x)
            jd.zero_grad()
            jd.step(tasks if form == "list" else torch.stack(tasks), features=features)
    assert gram.last_step.engine == engine and jac.last_step.engine == "autojac-mtl"
    assert torch.allclose(_params(gram_model), _params(jac_model), atol=1e-9)
    assert torch.allclose(gram.last_step.gramian, jac.last_step.gramian, atol=1e-9)


def test_multi_task_steps_on_auto_time_both_engines_then_keep_one() -> None:
    """engine="auto" with the trunk on the engine: the first steps take both multi-task
    engines, later steps one of them; every step is the reference's."""
    auto_model, jac_model = _MultiTask(), _MultiTask()
    auto = JDOptimizer(torch.optim.Adam(auto_model.parameters(), lr=0.01), model=auto_model.trunk)
    jac = JDOptimizer(torch.optim.Adam(jac_model.parameters(), lr=0.01))
    used = []
    for step in range(8):
        x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        for jd, model in ((auto, auto_model), (jac, jac_model)):
            tasks, features = model(x)
            jd.zero_grad()
            jd.step(tasks, features=features)
        used.append(auto.last_step.engine)
        assert torch.allclose(_params(auto_model), _params(jac_model), atol=1e-9)
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


class _Custom(nn.Module):
    """A head with direct parameters: the engine's fallback rule."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(5, dtype=torch.float64))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features * self.weight).sum(dim=1)


@pytest.mark.parametrize("case", ["nested", "view", "sibling", "repeated", "separate"])
def test_multi_task_features_that_overlap_fall_back_to_the_full_jacobian(case: str) -> None:
    """Regressions: the losses' gradients at nested, overlapping or repeated features are not
    the features' own contributions; the engine path must not take them for such."""

    def run(model):
        torch.manual_seed(0)
        trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh()).double()
        head = nn.Linear(6, 3).double()
        params = [*trunk.parameters(), *head.parameters()]
        jd = JDOptimizer(torch.optim.SGD(params, lr=0.1), model=trunk if model else None)
        h = trunk(
            torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        )
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


@pytest.mark.parametrize("change", ["freeze", "unfreeze"])
def test_freezing_or_unfreezing_after_construction(change: str) -> None:
    """Regression: the engine kept the trainable parameters of its construction, so a frozen
    weight still moved (and entered the Gramian), an unfrozen one was left out of it. The
    step that sees the change runs on the autojac engine and the Gramian engine is rebuilt."""
    gram_model, jac_model = _model(), _model()
    if change == "unfreeze":
        gram_model[4].weight.requires_grad_(False)
    gram = JDOptimizer(
        torch.optim.SGD(gram_model.parameters(), lr=0.1),
        aggregator=agg.UPGrad(),
        model=gram_model,
        batch_dim=0,
    )
    for model in (gram_model, jac_model):
        model[4].weight.requires_grad_(change == "unfreeze")
    jac = JDOptimizer(torch.optim.SGD(jac_model.parameters(), lr=0.1), aggregator=agg.UPGrad())
    frozen = gram_model[4].weight.detach().clone()
    _train(gram, gram_model, "[B]")
    _train(jac, jac_model, "[B]")
    assert torch.allclose(_params(gram_model), _params(jac_model), rtol=1e-9, atol=1e-12)
    assert gram.last_step.engine == "autogram"  # rebuilt after the first step
    if change == "freeze":
        assert torch.equal(gram_model[4].weight, frozen)


def test_a_model_parameter_the_optimizer_does_not_hold_is_refused() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"optimizer does not hold \(e\.g\. '0\.weight'\)"):
        JDOptimizer(
            torch.optim.SGD(model[4:].parameters(), lr=0.1),
            aggregator=agg.Mean(),
            model=model,
            batch_dim=0,
        )


def test_a_rebuild_that_fails_is_tried_again_at_the_next_step() -> None:
    """Regression: the failed rebuild left the optimizer without hooks, on autojac for good."""
    model = _model()
    model[0].requires_grad_(False)
    gram = JDOptimizer(
        torch.optim.SGD(model[1:].parameters(), lr=0.1),
        aggregator=agg.Mean(),
        model=model,
        batch_dim=0,
    )
    _train(gram, model, "[B]", steps=1)
    model[0].requires_grad_(True)  # not in the optimizer: the new engine is refused
    with pytest.raises(ValueError, match="optimizer does not hold"):
        _train(gram, model, "[B]", steps=1)
    model[0].requires_grad_(False)  # undone: the old engine is current again
    _train(gram, model, "[B]", steps=1)
    assert gram.last_step.engine == "autogram"


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
        x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        tasks, features = model(x)
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
    assert torch.allclose(_params(net), _params(reference), atol=1e-12)
