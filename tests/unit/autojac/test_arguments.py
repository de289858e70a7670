"""``backward`` and ``mtl_backward`` take their arguments as TorchJD 0.8 does: the same names
and positions, the same checks (with the same error classes), before any ``.grad`` changes."""

from __future__ import annotations

import pytest
import torch

from jdopt.autojac import backward, mtl_backward
from tests.utils.reference import Recorder, jacobian_by_rows

_F64 = torch.float64


def _params() -> list[torch.Tensor]:
    return [
        torch.tensor([1.0, -2.0], dtype=_F64, requires_grad=True),
        torch.tensor([0.5], dtype=_F64, requires_grad=True),
    ]


def _losses(a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
    return [(a * b).sum(), (a**2).sum() * b.sum(), a.prod()]


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in params]


BACKWARD_CALLS = {
    "positional": lambda t, agg, inputs: backward(t, agg, inputs, False, 1),
    "keywords": lambda t, agg, inputs: backward(
        tensors=t, aggregator=agg, inputs=inputs, retain_graph=False, parallel_chunk_size=1
    ),
    "mixed": lambda t, agg, inputs: backward(t, agg, inputs, parallel_chunk_size=2),
    "defaults": lambda t, agg, inputs: backward(t, aggregator=agg),
    "retain positional": lambda t, agg, inputs: backward(t, agg, None, True),
}


@pytest.mark.parametrize("call", BACKWARD_CALLS.values(), ids=BACKWARD_CALLS.keys())
def test_backward_takes_every_torchjd_call_form(call) -> None:
    a, b = _params()
    tensors = _losses(a, b)
    expected = jacobian_by_rows(torch.stack(tensors), [a, b]).sum(dim=0)
    call(tensors, Recorder(), [a, b])
    assert torch.allclose(torch.cat([a.grad, b.grad]), expected, atol=1e-12)


def _mtl_problem():
    a, b = _params()
    heads = [torch.tensor([2.0, 1.0], dtype=_F64, requires_grad=True) for _ in range(2)]
    features = a * b
    losses = [(features * heads[0]).sum(), ((features * heads[1]) ** 2).sum()]
    return [a, b], heads, features, losses


MTL_CALLS = {
    "positional": lambda ls, f, agg, t, s: mtl_backward(ls, f, agg, t, s, False, 1),
    "keywords": lambda ls, f, agg, t, s: mtl_backward(
        losses=ls,
        features=f,
        aggregator=agg,
        tasks_params=t,
        shared_params=s,
        retain_graph=False,
        parallel_chunk_size=None,
    ),
    "mixed": lambda ls, f, agg, t, s: mtl_backward(ls, f, agg, t, shared_params=s),
    "defaults": lambda ls, f, agg, t, s: mtl_backward(ls, f, aggregator=agg),
    "retain positional": lambda ls, f, agg, t, s: mtl_backward(ls, [f], agg, None, None, True),
}


@pytest.mark.parametrize("call", MTL_CALLS.values(), ids=MTL_CALLS.keys())
def test_mtl_backward_takes_every_torchjd_call_form(call) -> None:
    shared, heads, features, losses = _mtl_problem()
    expected = jacobian_by_rows(torch.stack(losses), shared).sum(dim=0)
    expected_heads = [
        torch.autograd.grad(loss, h, retain_graph=True)[0]
        for loss, h in zip(losses, heads, strict=True)
    ]
    call(losses, features, Recorder(), [[h] for h in heads], shared)
    assert torch.allclose(torch.cat([p.grad for p in shared]), expected, atol=1e-12)
    for head, grad in zip(heads, expected_heads, strict=True):
        assert torch.allclose(head.grad, grad, atol=1e-12)


def test_a_repeated_input_counts_once() -> None:
    a, b = _params()
    losses = torch.stack(_losses(a, b))
    expected = jacobian_by_rows(losses, [a, b])
    recorder = Recorder()
    backward(losses, recorder, inputs=[a, a, b, a])
    assert torch.allclose(recorder.jacobian, expected, atol=1e-12)
    assert torch.allclose(torch.cat([a.grad, b.grad]), expected.sum(dim=0), atol=1e-12)


def test_empty_inputs_do_nothing() -> None:
    """No pass runs: the graph is kept, and the losses need not even require grad."""
    a, b = _params()
    a.grad = torch.ones(2, dtype=_F64)
    losses = _losses(a, b)
    recorder = Recorder()
    backward(losses, recorder, inputs=[])
    backward(torch.ones(2), recorder, inputs=iter([]))
    assert recorder.jacobian is None
    assert torch.equal(a.grad, torch.ones(2, dtype=_F64)) and b.grad is None
    backward(losses, recorder, inputs=[b])  # the graph is still there
    assert b.grad is not None


BACKWARD_ERRORS = {
    "no tensors": (lambda ls: [], "empty"),
    "a repeated tensor": (lambda ls: [ls[0], ls[1], ls[0]], "entry 2 to be entry 0"),
}


@pytest.mark.parametrize("case", BACKWARD_ERRORS.values(), ids=BACKWARD_ERRORS.keys())
def test_backward_refuses_what_torchjd_refuses(case) -> None:
    make, match = case
    a, b = _params()
    a.grad = torch.ones(2, dtype=_F64)
    for inputs in (None, [a, b]):
        with pytest.raises(ValueError, match=match):
            backward(make(_losses(a, b)), Recorder(), inputs)
        assert torch.equal(a.grad, torch.ones(2, dtype=_F64)) and b.grad is None


MTL_ERRORS = {
    "no losses": (lambda ls, f: ([], f), "`losses` is an empty"),
    "no features": (lambda ls, f: (ls, []), "`features` is empty"),
    "a repeated loss": (lambda ls, f: ([ls[0], ls[1], ls[0]], f), "entry 2 to be entry 0"),
    "a repeated feature": (lambda ls, f: (ls, [f, f]), "entry 1 to be entry 0"),
    "a non-scalar loss": (lambda ls, f: ([ls[0], ls[1].reshape(1)], f), r"shape \(1,\)"),
}


@pytest.mark.parametrize("case", MTL_ERRORS.values(), ids=MTL_ERRORS.keys())
def test_mtl_backward_refuses_what_torchjd_refuses(case) -> None:
    make, match = case
    shared, heads, features, losses = _mtl_problem()
    heads[0].grad = torch.ones(2, dtype=_F64)
    with pytest.raises(ValueError, match=match):
        mtl_backward(*make(losses, features), Recorder())
    assert torch.equal(heads[0].grad, torch.ones(2, dtype=_F64))
    assert all(p.grad is None for p in [*shared, heads[1]])
