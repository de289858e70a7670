"""Every method takes the dtype and device of what it creates from its input, never from
PyTorch's defaults (``torch.set_default_dtype``, ``torch.set_default_device``).

A tensor created without ``dtype=`` or ``device=`` follows the defaults: under a CUDA default
device, a method that makes one meets CPU inputs (or the reverse) and raises; under a float64
default dtype it promotes float32 work, or draws other random numbers. Both are caught on the
CPU: the default dtype is made float64 for float32 inputs, and the default device ``meta`` for
inputs on the test device (a tensor created on ``meta`` cannot meet a real one, and has no
values). The result must be the normal run's, bit for bit, in the input's dtype and device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

from ._matrices import HARD, SIZES
from ._registry import METHODS, Method


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def _default_device(device: str) -> torch.device:
    """A context manager: ``torch.device`` makes itself the default device inside ``with``,
    on top of the session's (``JDOPT_DEVICE``), and restores it on exit."""
    return torch.device(device)


def _cases(method: Method, dtype: torch.dtype) -> Iterator[tuple[str, Callable, Tensor]]:
    """The aggregator on Jacobians and the weighting on their Gramians, every hard family."""
    for m in SIZES:
        for family in HARD:
            jacobian = family(m).to(dtype)
            yield f"{m}-{family.__name__}", lambda size=m: method.aggregator(size), jacobian
            if method.weighting is not None:
                gramian = jacobian @ jacobian.T
                yield f"{m}-{family.__name__}-G", lambda size=m: method.weighting(size), gramian


def _run(module: nn.Module, x: Tensor, track: bool) -> tuple[Tensor, Tensor | None]:
    """The output, and the gradient of a fixed linear form of it when ``track``."""
    if not track:
        return module(x), None
    x = x.detach().clone().requires_grad_()
    output = module(x)
    if not output.requires_grad:  # weights that do not depend on the input (Mean, …)
        return output, torch.zeros_like(x)
    form = torch.linspace(-1.0, 2.0, output.numel(), dtype=output.dtype, device=output.device)
    (output * form).sum().backward()
    return output.detach(), x.grad


def _check_same(
    method: Method, factory: Callable, x: Tensor, context: Callable, track: bool, case: str
) -> None:
    built = factory()
    if built is None:
        return
    expected, expected_grad = _run(built, x, track)
    module = factory()  # built outside the context: its state is not what is tested
    with context():
        output, grad = _run(module, x, track)
    message = f"{method.name} {case}"
    assert output.dtype == x.dtype, message
    assert output.device == x.device, message
    _assert_same(output, expected, message)
    if track:
        assert grad is not None
        assert grad.dtype == x.dtype, message
        assert grad.device == x.device, message
        _assert_same(grad, expected_grad, message)


def _assert_same(actual: Tensor, expected: Tensor, message: str) -> None:
    """Bit for bit on the CPU; to a few ulps on other devices, whose reductions may round
    differently from one run to the next. NaN where the method is not differentiable (e.g.
    AlignedMTL's gradient at repeated eigenvalues)."""
    if actual.device.type == "cpu":
        rtol = atol = 0.0
    else:
        rtol = 16 * torch.finfo(actual.dtype).eps
        atol = rtol * float(expected.nan_to_num(0.0, 0.0, 0.0).abs().max())
    assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, msg=message)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_float32_inputs_under_a_float64_default_dtype(method: Method) -> None:
    for case, factory, x in _cases(method, torch.float32):
        _check_same(method, factory, x, lambda: _default_dtype(torch.float64), False, case)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_inputs_under_another_default_device(method: Method) -> None:
    for case, factory, x in _cases(method, torch.float64):
        _check_same(method, factory, x, lambda: _default_device("meta"), False, case)


@pytest.mark.parametrize("method", [m for m in METHODS if m.differentiable], ids=lambda m: m.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_autograd_under_other_defaults(method: Method, dtype: torch.dtype) -> None:
    """The differentiable path (e.g. MGDA's closed form on its support) creates tensors too."""

    @contextmanager
    def both() -> Iterator[None]:
        other = torch.float64 if dtype == torch.float32 else torch.float32
        with _default_dtype(other), _default_device("meta"):
            yield

    for case, factory, x in _cases(method, dtype):
        if float(x.abs().max()) > 0:  # a zero input has no well-defined derivative
            _check_same(method, factory, x, both, True, case)
