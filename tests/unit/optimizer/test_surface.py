"""JDOptimizer is a torch optimizer: the torch.optim surface, LR schedulers, state dicts, and
the same steps as the bare optimizer where Jacobian descent reduces to a plain gradient."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import jdopt.aggregation as agg
from jdopt import JDOptimizer

from ._helpers import flat_params, mlp, sample_losses

OPTIMIZERS = [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: torch.optim.Adam(ps, lr=0.01),
    lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    lambda ps: torch.optim.RMSprop(ps, lr=0.01),
]


@pytest.mark.parametrize("make", OPTIMIZERS)
@pytest.mark.parametrize(("aggregator", "reduce"), [(agg.Mean(), "mean"), (agg.Sum(), "sum")])
def test_mean_and_sum_equal_the_bare_optimizer(make, aggregator, reduce: str) -> None:
    """Mean and Sum steps are the bare optimizer's steps on ``losses.mean()`` / ``.sum()``."""
    jd_model, bare_model = mlp(), mlp()
    jd = JDOptimizer(make(jd_model.parameters()), aggregator=aggregator)
    bare = make(bare_model.parameters())
    for step in range(4):
        jd.zero_grad()
        jd.step(sample_losses(jd_model, step))
        bare.zero_grad()
        getattr(sample_losses(bare_model, step), reduce)().backward()
        bare.step()
    assert torch.allclose(flat_params(jd_model), flat_params(bare_model), atol=1e-10)


def test_sparse_embedding_gradients_step_like_the_bare_optimizer() -> None:
    """A sparse Embedding's gradients enter the full Jacobian like dense ones: the Mean step
    equals the bare optimizer's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 1)).double()
    reference = copy.deepcopy(model)
    idx = torch.tensor([1, 3, 3, 7, 0, 9])
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=agg.Mean())
    jd.step(model(idx).squeeze(1) ** 2)
    plain = torch.optim.SGD(reference.parameters(), lr=0.1)
    (reference(idx).squeeze(1) ** 2).mean().backward()
    plain.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-12)


def test_it_is_a_torch_optimizer_that_delegates_to_the_wrapped_one() -> None:
    """``param_groups``, ``state``, ``defaults``, ``add_param_group``, ``zero_grad`` and the
    repr are the wrapped optimizer's; a parameter the losses do not reach keeps ``.grad``
    None, as with ``backward()``."""
    model = mlp()
    inner = torch.optim.Adam(model.parameters(), lr=0.1)
    jd = JDOptimizer(inner)
    assert isinstance(jd, torch.optim.Optimizer)
    assert jd.param_groups is inner.param_groups and jd.state is inner.state
    assert jd.defaults is inner.defaults
    extra = nn.Parameter(torch.ones(2, dtype=torch.float64))
    jd.add_param_group({"params": [extra], "lr": 0.5})
    assert inner.param_groups[-1]["lr"] == 0.5
    assert "Adam" in repr(jd) and "UPGrad" in repr(jd)
    jd.step(sample_losses(model, 0))
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
    """An LR scheduler on JDOptimizer sets the wrapped optimizer's learning rates as it would
    on the bare optimizer."""
    model = mlp()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    scheduler = make_scheduler(jd)
    reference = make_scheduler(torch.optim.SGD(mlp().parameters(), lr=0.1, momentum=0.9))
    for step in range(3):
        jd.zero_grad()
        jd.step(sample_losses(model, step))
        scheduler.step()
        reference.optimizer.step()
        reference.step()
        assert jd.param_groups[0]["lr"] == pytest.approx(reference.optimizer.param_groups[0]["lr"])


def test_reduce_lr_on_plateau_drives_the_wrapped_optimizer() -> None:
    """ReduceLROnPlateau lowers the wrapped optimizer's learning rate."""
    model = mlp()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(jd, patience=0, factor=0.5)
    for _ in range(3):
        scheduler.step(1.0)
    assert jd.param_groups[0]["lr"] == pytest.approx(0.025)


def test_gradients_can_be_clipped_between_backward_and_step() -> None:
    """``backward`` fills ``.grad`` and ``step()`` without losses steps on it as it is."""
    model = mlp()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), aggregator=agg.Sum())
    jd.backward(sample_losses(model, 0))
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    before = flat_params(model)
    nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-3)
    jd.step()
    moved = before - flat_params(model)
    assert torch.allclose(moved, grads * 1e-3 / grads.norm(), atol=1e-9)


def _train(model: nn.Module, jd: JDOptimizer, steps: range) -> None:
    for step in steps:
        jd.zero_grad()
        jd.step(sample_losses(model, step))


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
    """The state dict holds the aggregator's state (generators, buffers) with the wrapped
    optimizer's: training resumed from a checkpoint repeats the original steps exactly."""
    model = mlp()
    jd = JDOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), aggregator=make_aggregator())
    _train(model, jd, range(3))
    checkpoint = copy.deepcopy({"model": model.state_dict(), "jd": jd.state_dict()})
    _train(model, jd, range(3, 6))
    resumed = mlp(seed=1)
    resumed.load_state_dict(checkpoint["model"])
    jd2 = JDOptimizer(torch.optim.Adam(resumed.parameters(), lr=0.01), aggregator=make_aggregator())
    _train(resumed, jd2, range(1))  # desynchronise the generator before loading
    resumed.load_state_dict(checkpoint["model"])
    jd2.load_state_dict(checkpoint["jd"])
    _train(resumed, jd2, range(3, 6))
    assert torch.equal(flat_params(resumed), flat_params(model))


def test_state_dict_hooks_run_as_on_a_torch_optimizer() -> None:
    """Hooks registered on JDOptimizer run around ``state_dict`` and ``load_state_dict``; a
    post-hook's return value replaces the state."""
    model = mlp()
    jd = JDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    calls = []
    jd.register_state_dict_pre_hook(lambda opt: calls.append("save pre"))
    jd.register_state_dict_post_hook(lambda opt, state: {**state, "tag": 1})
    jd.register_load_state_dict_pre_hook(lambda opt, state: calls.append(state.get("tag")))
    jd.register_load_state_dict_post_hook(lambda opt: calls.append("load post"))
    state = jd.state_dict()
    assert state["tag"] == 1
    jd.load_state_dict(state)
    assert calls == ["save pre", 1, "load post"]
