"""What the engine records of a module's calls: every call with grad enabled that the losses
depend on, however the module takes its inputs and returns its outputs, and nothing else."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from jdopt.autogram import Engine

from ._models import F64, B, mlp, mlp_inputs, mlp_losses, randn
from ._reference import TOLERANCE, assert_exact, reference_gramian, relative_error


def test_a_forward_kept_alive_outside_the_losses_is_ignored() -> None:
    """A recorded call that the losses do not depend on adds nothing to their Gramian."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    other = model(mlp_inputs(batch=7, seed=5))  # recorded, but not part of the losses below
    losses = mlp_losses(model, mlp_inputs())

    gramian = engine.compute_gramian(losses)

    assert other.requires_grad
    assert relative_error(gramian, reference_gramian(losses, list(model.parameters()))) <= TOLERANCE


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_forwards_without_grad_are_ignored(context: type) -> None:
    """Calls under ``no_grad`` or ``inference_mode`` are not recorded."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    with context():
        model(mlp_inputs(batch=7, seed=5))
    unrelated = (model[0].weight ** 2).sum(dim=1)  # requires grad, but no forward call
    with pytest.raises(RuntimeError, match="no forward call"):
        engine.compute_gramian(unrelated)

    losses = mlp_losses(model, mlp_inputs())
    with context():
        model(mlp_inputs(batch=7, seed=5))
    gramian = engine.compute_gramian(losses)

    assert relative_error(gramian, reference_gramian(losses, list(model.parameters()))) <= TOLERANCE


class _DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=F64))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"features": x * self.scale}


class _WithDictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = _DictOutput()
        self.head = nn.Linear(3, 2).to(F64)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)["features"])


def test_outputs_nested_in_a_dict_are_recorded() -> None:
    """A module's outputs are found at any depth of what it returns (here a dict): its
    parameters count in the Gramian."""
    torch.manual_seed(0)
    model = _WithDictOutput()
    engine = Engine(model, batch_dim=0)
    losses = (model(randn(B, 3)) ** 2).sum(dim=1)
    assert_exact(engine, losses, list(model.parameters()))


def test_an_input_given_by_keyword_is_recorded() -> None:
    """``linear(input=x)``: inputs given by keyword are recorded like positional ones."""
    torch.manual_seed(0)
    linear = nn.Linear(3, 2).to(F64)
    engine = Engine(linear, batch_dim=0)
    losses = (linear(input=randn(B, 3)) ** 2).sum(dim=1)
    assert_exact(engine, losses, list(linear.parameters()))


def test_a_user_hook_that_replaces_an_output_is_differentiated_through() -> None:
    """The engine records the module's own output, before a user's forward hook (registered
    earlier) replaces it: the replacement is part of the graph above the call."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(F64)
    model[0].register_forward_hook(lambda module, args, output: 2.0 * output)
    engine = Engine(model, batch_dim=0)
    losses = model(randn(B, 3)).squeeze(1) ** 2
    assert_exact(engine, losses, list(model.parameters()))


class _TwoNames(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=F64))
        self.alias = self.scale  # the same Parameter registered under a second name

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x * self.scale)


def test_a_parameter_registered_under_two_names_counts_once() -> None:
    """One Parameter registered twice in a module (``self.alias = self.scale``) is one
    parameter, not two tied ones."""
    model = _TwoNames()
    engine = Engine(model, batch_dim=0)
    losses = (model(randn(B, 3)) ** 2).sum(dim=1)
    assert_exact(engine, losses, list(model.parameters()))
