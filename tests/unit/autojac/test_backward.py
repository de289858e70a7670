from __future__ import annotations

import pytest
import torch
from torch import nn

from jdopt.aggregation import UPGrad
from jdopt.autojac import backward
from tests.utils.device import draw, seeded
from tests.utils.reference import Recorder, jacobian_by_rows


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 6)).double()


def _losses(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    x = draw(5, 3, generator=seeded(1), dtype=torch.float64)
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


def test_an_input_the_losses_do_not_reach_is_a_zero_column() -> None:
    """As in TorchJD: the aggregator sees a zero column, and the input's .grad gets zeros; a
    frozen parameter that is not an input is left alone."""
    model = _model()
    unused = nn.Parameter(torch.ones(3, dtype=torch.float64))
    model[0].weight.requires_grad_(False)
    losses = _losses(model, (6,))
    inputs = [*(p for p in model.parameters() if p.requires_grad), unused]
    expected = jacobian_by_rows(losses, inputs)  # zeros in the columns of `unused`
    recorder = Recorder()
    backward(losses, recorder, inputs=inputs)
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
    assert torch.equal(unused.grad, torch.zeros(3, dtype=torch.float64))
    assert model[0].weight.grad is None


def test_inputs_that_no_loss_reaches_get_zeros() -> None:
    param, other = (torch.ones(2, dtype=torch.float64, requires_grad=True) for _ in range(2))
    recorder = Recorder()
    backward(torch.stack([param.sum(), param.prod()]), recorder, inputs=[other])
    assert torch.equal(recorder.jacobian, torch.zeros(2, 2, dtype=torch.float64))
    assert torch.equal(other.grad, torch.zeros(2, dtype=torch.float64))
    assert param.grad is None


def test_default_inputs_come_nearest_to_the_losses_first() -> None:
    """The Jacobian's columns follow a breadth-first walk from the losses, as in TorchJD."""
    model = _model()
    losses = _losses(model, (6,))
    order = [model[2].bias, model[2].weight, model[0].bias, model[0].weight]
    expected = jacobian_by_rows(losses, order)
    recorder = Recorder()
    backward(losses, recorder)
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)


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


class _Unbatchable(torch.autograd.Function):
    """Doubles its input; its backward reads a value on the host, which vmap cannot batch."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * 2 if float(grad.abs().sum()) >= 0 else grad


def test_an_unbatchable_operation_falls_back_to_one_pass_per_row() -> None:
    """When the failing node runs first, the failed batched pass has freed nothing."""
    param = torch.ones(3, dtype=torch.float64, requires_grad=True)
    losses = _Unbatchable.apply(param**2)
    recorder = Recorder()
    backward(losses, recorder)
    assert torch.allclose(recorder.jacobian, torch.eye(3, dtype=torch.float64) * 4)
    with pytest.raises(RuntimeError, match="graph has been freed"):  # by the last row
        backward(losses, recorder)


def test_an_unbatchable_operation_below_freed_nodes_says_how_to_call() -> None:
    param = torch.ones(3, dtype=torch.float64, requires_grad=True)
    expected = torch.diag(torch.arange(3.0, dtype=torch.float64) * 2)
    for kwargs in ({"retain_graph": True}, {"parallel_chunk_size": 1}):
        recorder = Recorder()
        backward(_Unbatchable.apply(param) * torch.arange(3.0), recorder, **kwargs)
        assert torch.allclose(recorder.jacobian, expected)
    param.grad = None
    with pytest.raises(RuntimeError, match="parallel_chunk_size=1"):
        backward(_Unbatchable.apply(param) * torch.arange(3.0), Recorder())
    assert param.grad is None


@pytest.mark.parametrize("chunk", [None, 1])
def test_retain_graph_false_frees_the_graph(chunk: int | None) -> None:
    model = _model()
    losses = _losses(model, (6,))
    expected = jacobian_by_rows(losses, list(model.parameters())).sum(dim=0)
    backward(losses, Recorder(), retain_graph=True, parallel_chunk_size=chunk)
    backward(losses, Recorder(), parallel_chunk_size=chunk)
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(grads, 2 * expected, atol=1e-12)
    with pytest.raises(RuntimeError, match="second time"):
        backward(losses, Recorder(), parallel_chunk_size=chunk)


@pytest.mark.parametrize("chunk", [None, 1])
def test_a_non_leaf_input_that_retains_grad_gets_the_update(chunk: int | None) -> None:
    """Its .grad is what it was plus the aggregated update, whatever autograd's retain_grad
    hooks do during the Jacobian's backward passes; the losses' own .grad is left alone."""
    param = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    hidden = param * 2
    hidden.retain_grad()
    losses = torch.stack([hidden.sum(), hidden.prod(), (hidden**2).sum()])
    losses.retain_grad()
    expected = jacobian_by_rows(losses, [hidden]).sum(dim=0) + 1
    hidden.grad, losses.grad = torch.ones(2, dtype=torch.float64), None  # the reference set them
    backward(losses, Recorder(), inputs=[hidden], parallel_chunk_size=chunk)
    assert torch.allclose(hidden.grad, expected, atol=1e-12)
    assert losses.grad is None and param.grad is None


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
        (lambda p: "loss", TypeError, "tensors"),
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
    with pytest.raises(ValueError, match="requires grad"):
        backward(param * 2, Recorder(), inputs=[param, torch.ones(2)])
    with pytest.raises(TypeError, match="inputs"):
        backward(param * 2, Recorder(), inputs=[param, "weight"])
    with pytest.raises(ValueError, match="retain_grad"):  # it has no .grad of its own
        backward(param * 2, Recorder(), inputs=[param, param * 3])
    assert param.grad is None


def test_adding_to_a_sparse_gradient() -> None:
    """A sparse Embedding's own backward leaves a sparse .grad: adding a dense one works."""
    from jdopt.autojac._accumulate import add_grad

    embedding = torch.nn.Embedding(5, 2, sparse=True)
    embedding(torch.tensor([1, 3])).sum().backward()
    expected = embedding.weight.grad.to_dense() + 1
    add_grad(embedding.weight, torch.ones(5, 2))
    assert torch.equal(embedding.weight.grad, expected)
