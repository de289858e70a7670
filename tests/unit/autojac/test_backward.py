from __future__ import annotations

import pytest
import torch
from torch import nn

from jdopt.aggregation import UPGrad
from jdopt.autojac import backward
from tests.utils.reference import Recorder, jacobian_by_rows


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 6)).double()


def _losses(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = model(x)  # [5, 6]
    flat = (out**2).mean(dim=0)  # [6]
    return flat.reshape(shape)


@pytest.mark.parametrize("shape", [(6,), (2, 3), (3, 2, 1)])
@pytest.mark.parametrize("chunk", [None, 1, 2, 4])
def test_jacobian_matches_row_by_row(shape: tuple[int, ...], chunk: int | None) -> None:
    model = _model()
    params = list(model.parameters())
    losses = _losses(model, shape)
    expected = jacobian_by_rows(losses, params)
    recorder = Recorder()
    backward(losses, recorder, inputs=params, parallel_chunk_size=chunk)
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
    grads = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.allclose(grads, expected.sum(dim=0), atol=1e-12)


def test_default_inputs_are_the_reached_leaves() -> None:
    model = _model()
    params = list(model.parameters())
    losses = _losses(model, (6,))
    expected = jacobian_by_rows(losses, params).sum(dim=0)
    backward(losses, Recorder())
    grads = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.allclose(grads, expected, atol=1e-12)


def test_scalar_loss_and_sequence_of_losses() -> None:
    model = _model()
    params = list(model.parameters())
    losses = _losses(model, (6,))
    expected = jacobian_by_rows(losses, params)
    recorder = Recorder()
    backward([losses[:2], losses[2]], recorder, inputs=params, retain_graph=True)
    assert torch.allclose(recorder.jacobian, expected[:3], atol=1e-12)
    backward(losses.sum(), recorder, inputs=params)
    assert recorder.jacobian.shape == (1, expected.shape[1])
    assert torch.allclose(recorder.jacobian[0], expected.sum(dim=0), atol=1e-12)


def test_frozen_and_unused_parameters_are_left_alone() -> None:
    model = _model()
    unused = nn.Parameter(torch.ones(3, dtype=torch.float64))
    model[0].weight.requires_grad_(False)
    losses = _losses(model, (6,))
    trainable = [p for p in model.parameters() if p.requires_grad]
    expected = jacobian_by_rows(losses, trainable)
    recorder = Recorder()
    backward(losses, recorder, inputs=[*trainable, unused])
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
    assert model[0].weight.grad is None and unused.grad is None


def test_explicit_inputs_and_accumulation() -> None:
    model = _model()
    last = list(model[2].parameters())
    losses = _losses(model, (6,))
    expected = jacobian_by_rows(losses, last).sum(dim=0)
    for p in last:
        p.grad = torch.ones_like(p)
    backward(losses, Recorder(), inputs=last)
    grads = torch.cat([p.grad.reshape(-1) for p in last])
    assert torch.allclose(grads, expected + 1, atol=1e-12)
    assert model[0].weight.grad is None


def test_unbatchable_operation_falls_back_to_a_loop() -> None:
    class NoVmap(torch.autograd.Function):
        @staticmethod
        def forward(x: torch.Tensor) -> torch.Tensor:
            return x * 2

        @staticmethod
        def setup_context(ctx, inputs, output) -> None:
            pass

        @staticmethod
        def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
            return grad * 2

    param = torch.ones(3, dtype=torch.float64, requires_grad=True)
    losses = NoVmap.apply(param) * torch.arange(3.0, dtype=torch.float64)
    recorder = Recorder()
    backward(losses, recorder)
    assert torch.allclose(recorder.jacobian, torch.diag(torch.arange(3.0).double() * 2))


def test_upgrad_update_is_non_conflicting() -> None:
    model = _model()
    losses = _losses(model, (6,))
    jacobian = jacobian_by_rows(losses, list(model.parameters()))
    backward(losses, UPGrad())
    update = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    slack = 1e-4 * float((jacobian**2).sum()) * float(update.abs().max())
    assert (jacobian @ update >= -slack).all()


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda p: (p * 0).detach(), ValueError, "does not require grad"),
        (lambda p: p[:0], ValueError, "empty"),
        (lambda p: "loss", TypeError, "losses"),
        (lambda p: lambda: p.sum(), TypeError, "(?i)closure"),
    ],
)
def test_invalid_losses(make, error: type, match: str) -> None:
    param = torch.ones(3, requires_grad=True)
    with pytest.raises(error, match=match):
        backward(make(param), Recorder())
    assert param.grad is None


def test_invalid_chunk_size_and_inputs() -> None:
    param = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="parallel_chunk_size"):
        backward(param * 2, Recorder(), parallel_chunk_size=0)
    with pytest.raises(ValueError, match="inputs"):
        backward(param * 2, Recorder(), inputs=[])
    with pytest.raises(ValueError, match="none of the given parameters"):
        backward(param * 2, Recorder(), inputs=[torch.ones(2, requires_grad=True)])
    assert param.grad is None


def test_adding_to_a_sparse_gradient() -> None:
    """A sparse Embedding's own backward leaves a sparse .grad: adding a dense one works."""
    from jdopt.autojac._accumulate import add_grad

    embedding = torch.nn.Embedding(5, 2, sparse=True)
    embedding(torch.tensor([1, 3])).sum().backward()
    expected = embedding.weight.grad.to_dense() + 1
    add_grad(embedding.weight, torch.ones(5, 2))
    assert torch.equal(embedding.weight.grad, expected)
