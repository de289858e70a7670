"""The training steps timed against each other, each on its own copy of one model: a plain SGD
step, ``JDOptimizer`` with UPGrad and with Mean, and TorchJD's engine when installed."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

if __package__:  # imported as benchmarks._steps
    from ._setups import SETUPS, task_losses
    from ._zoo import MultiTaskResNet18
else:  # models.py run as a script: its folder is on the path
    from _setups import SETUPS, task_losses
    from _zoo import MultiTaskResNet18

from jdopt import JDOptimizer
from jdopt.aggregation import Mean, UPGrad

Step = Callable[[], None]


def make_steps(name: str, batch: int, device: str) -> tuple[dict[str, Step], dict[str, Step | str]]:
    """The steps timed together, and TorchJD's (timed apart; or why it refused), each on its
    own copy of the same model."""
    setup = SETUPS[name]
    torch.manual_seed(0)
    model = setup.build().to(device)
    x, y = (t.to(device) for t in setup.batch(batch, torch.Generator().manual_seed(1)))
    if setup.losses is None:
        steps = {"plain": _plain_multitask(copy.deepcopy(model), x, y)}
        for key, aggregator, trunk in [("upgrad", UPGrad(), True), ("mean", Mean(), True),
                                       ("upgrad_autojac", UPGrad(), False)]:  # fmt: skip
            steps[key] = _jd_multitask(copy.deepcopy(model), x, y, aggregator, trunk)
        other = _torchjd_multitask(copy.deepcopy(model), x, y)
    else:
        losses = setup.losses
        steps = {"plain": _plain(copy.deepcopy(model), x, y, losses)}
        for key, aggregator in [("upgrad", UPGrad()), ("mean", Mean())]:
            steps[key] = _jd(copy.deepcopy(model), x, y, losses, aggregator)
        other = _torchjd(copy.deepcopy(model), x, y, losses)
    return steps, {"torchjd": other} if other is not None else {}


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1e-3)


def _plain(model: nn.Module, x: Tensor, y: Tensor, losses: Callable) -> Step:
    optimizer = _sgd(model)

    def step() -> None:
        optimizer.zero_grad()
        losses(model, x, y).mean().backward()
        optimizer.step()

    return step


def _jd(model: nn.Module, x: Tensor, y: Tensor, losses: Callable, aggregator) -> Step:
    jd = JDOptimizer(_sgd(model), aggregator=aggregator, model=model, batch_dim=0)

    def step() -> None:
        jd.zero_grad()
        jd.step(losses(model, x, y))

    step.optimizer = jd  # type: ignore[attr-defined]  # to read the engine it used
    return step


def _plain_multitask(model: MultiTaskResNet18, x: Tensor, y: Tensor) -> Step:
    optimizer = _sgd(model)

    def step() -> None:
        optimizer.zero_grad()
        torch.stack(task_losses(model, x, y)[0]).sum().backward()
        optimizer.step()

    return step


def _jd_multitask(model: MultiTaskResNet18, x: Tensor, y: Tensor, aggregator, trunk: bool) -> Step:
    jd = JDOptimizer(_sgd(model), aggregator=aggregator, model=model.trunk if trunk else None)

    def step() -> None:
        jd.zero_grad()
        losses, features = task_losses(model, x, y)
        jd.step(losses, features=features)

    step.optimizer = jd  # type: ignore[attr-defined]
    return step


def _torchjd(model: nn.Module, x: Tensor, y: Tensor, losses: Callable) -> Step | str | None:
    """TorchJD's autogram Engine + UPGradWeighting; ``None`` when not installed, the error's
    text when it refuses the model (at construction or on a first step)."""
    try:
        from torchjd.aggregation import UPGradWeighting
        from torchjd.autogram import Engine
    except ImportError:
        return None
    optimizer = _sgd(model)
    weighting = UPGradWeighting()
    try:
        engine = Engine(model, batch_dim=0)
    except Exception as error:
        return _refusal(error)

    def step() -> None:
        optimizer.zero_grad()
        values = losses(model, x, y)
        values.backward(weighting(engine.compute_gramian(values)))
        optimizer.step()

    return _tried(step)


def _torchjd_multitask(model: MultiTaskResNet18, x: Tensor, y: Tensor) -> Step | str | None:
    """TorchJD's ``mtl_backward`` then ``jac_to_grad`` with UPGrad on the trunk."""
    try:
        from torchjd.aggregation import UPGrad as TorchJDUPGrad
        from torchjd.autojac import jac_to_grad, mtl_backward
    except ImportError:
        return None
    optimizer = _sgd(model)
    aggregator, shared = TorchJDUPGrad(), list(model.trunk.parameters())

    def step() -> None:
        optimizer.zero_grad()
        losses, features = task_losses(model, x, y)
        mtl_backward(losses, features=features)
        jac_to_grad(shared, aggregator)
        optimizer.step()

    return _tried(step)


def _tried(step: Step) -> Step | str:
    try:
        step()
    except Exception as error:
        return _refusal(error)
    return step


def _refusal(error: Exception) -> str:
    return f"refuses: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
