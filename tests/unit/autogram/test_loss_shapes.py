"""The losses ``compute_gramian`` takes, of any shape ``S``, and the generalized Gramian
``[*S, *reversed(S)]`` it returns; the ways of passing them, and those it refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jdopt.autogram import Engine

from ._models import F64, B, mlp, mlp_inputs, mlp_losses, randn
from ._reference import TOLERANCE, reference_gramian, relative_error
from ._settings import per_sample


def test_three_dimensional_losses_give_the_generalized_gramian() -> None:
    """Losses ``[B, k, l]`` give a Gramian ``[B, k, l, l, k, B]``."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    out = model(mlp_inputs())
    losses = torch.stack([per_sample(out), per_sample(torch.tanh(out))], dim=2)  # [5, 3, 2]

    gramian = engine.compute_gramian(losses)

    assert gramian.shape == (5, 3, 2, 2, 3, 5)
    assert relative_error(gramian, reference_gramian(losses, list(model.parameters()))) <= TOLERANCE


def test_a_negative_batch_dim_counts_from_the_end() -> None:
    """``batch_dim=-1`` on losses ``[k, B]`` is their last dimension."""
    model = mlp()
    engine = Engine(model, batch_dim=-1)
    losses = per_sample(model(mlp_inputs())).T  # [3, 5]

    gramian = engine.compute_gramian(losses)

    assert gramian.shape == (3, 5, 5, 3)
    assert relative_error(gramian, reference_gramian(losses, list(model.parameters()))) <= TOLERANCE


def test_a_batch_of_one_gives_a_one_by_one_gramian() -> None:
    """One sample: a ``[1, 1]`` Gramian."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    losses = mlp_losses(model, mlp_inputs(batch=1))

    gramian = engine.compute_gramian(losses)

    assert gramian.shape == (1, 1)
    assert relative_error(gramian, reference_gramian(losses, list(model.parameters()))) <= TOLERANCE


def test_a_sequence_of_losses_is_concatenated() -> None:
    """A list of tensors is the concatenation of their flattened entries."""
    model = mlp()
    engine = Engine(model, batch_dim=None)
    out = model(mlp_inputs())
    parts = [(out**2).mean(), out.sum(dim=0)]

    gramian = engine.compute_gramian(parts)

    expected = reference_gramian(
        torch.cat([p.reshape(-1) for p in parts]), list(model.parameters())
    )
    assert relative_error(gramian, expected) <= TOLERANCE


def test_a_scalar_loss_gives_a_0d_gramian() -> None:
    """Without a batch dimension, a scalar loss has a 0-d Gramian: its squared gradient norm."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).to(F64)
    engine = Engine(model, batch_dim=None)
    loss = (model(randn(B, 3)) ** 2).mean()

    gramian = engine.compute_gramian(loss)

    assert gramian.shape == ()
    assert relative_error(gramian, reference_gramian(loss, list(model.parameters()))) <= 1e-6


def test_a_scalar_loss_with_a_batch_dim_is_refused() -> None:
    """A 0-d loss has no batch dimension: a ``ValueError`` names ``batch_dim``."""
    model = nn.Linear(3, 2).to(F64)
    engine = Engine(model, batch_dim=0)
    loss = (model(randn(B, 3)) ** 2).mean()
    with pytest.raises(ValueError, match="batch_dim"):
        engine.compute_gramian(loss)


@pytest.mark.parametrize("batch_dim", [2, -3, 5])
def test_a_batch_dim_outside_the_losses_is_refused(batch_dim: int) -> None:
    """A ``batch_dim`` that the losses do not have: a ``ValueError`` names it."""
    model = mlp()
    engine = Engine(model, batch_dim=batch_dim)
    losses = per_sample(model(mlp_inputs()))  # [5, 3]
    with pytest.raises(ValueError, match="batch_dim"):
        engine.compute_gramian(losses)


def test_losses_without_grad_are_refused() -> None:
    """Losses computed under ``no_grad`` depend on no parameter: a ``ValueError`` says so."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    with torch.no_grad():
        losses = mlp_losses(model, mlp_inputs())
    with pytest.raises(ValueError, match="does not require grad"):
        engine.compute_gramian(losses)


# ---------------------------------------------------------------------------- TorchJD's names
def test_compute_gramian_takes_the_losses_by_torchjds_name() -> None:
    """TorchJD's ``Engine.compute_gramian(output)`` names its argument ``output``: the same call
    works unchanged, as do positional and ``losses=`` calls."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    gramians = []
    for call in (
        lambda losses: engine.compute_gramian(losses),
        lambda losses: engine.compute_gramian(losses=losses),
        lambda losses: engine.compute_gramian(output=losses),
    ):
        gramians.append(call(mlp_losses(model, mlp_inputs())))
    assert torch.equal(gramians[0], gramians[1]) and torch.equal(gramians[0], gramians[2])


def test_compute_gramian_with_both_names_is_refused() -> None:
    """``losses`` and ``output`` name the same argument: giving both is a ``TypeError``."""
    model = mlp()
    engine = Engine(model, batch_dim=0)
    losses = mlp_losses(model, mlp_inputs())
    with pytest.raises(TypeError, match="both `losses` and `output`"):
        engine.compute_gramian(losses, output=losses)


def test_compute_gramian_without_losses_is_refused() -> None:
    """Neither name given: a ``TypeError`` says the argument is missing."""
    engine = Engine(mlp(), batch_dim=0)
    with pytest.raises(TypeError, match="missing"):
        engine.compute_gramian()


def test_an_invalid_output_is_named_by_its_name() -> None:
    """An invalid argument is named as the caller named it (``output``)."""
    engine = Engine(mlp(), batch_dim=0)
    with pytest.raises(TypeError, match="`output` should be a tensor"):
        engine.compute_gramian(output=3.0)
