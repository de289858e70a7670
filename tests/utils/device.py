"""The device the test suite runs on, and seeded draws that give the same numbers on every device.

``JDOPT_DEVICE=cuda pytest`` runs the suite on a GPU: ``tests/conftest.py`` makes ``DEVICE`` the
default device, so tensors created without ``device=`` land there. Random problems are drawn on
the CPU from a seeded ``torch.Generator`` (a CPU generator: CUDA draws from it raise, and CUDA's
own generator gives other numbers) and then moved to ``DEVICE``, so that a CPU run and a CUDA
run test the same matrices.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

ENV_VAR = "JDOPT_DEVICE"

DEVICE = torch.device(os.environ.get(ENV_VAR) or "cpu")
"""The device named by ``JDOPT_DEVICE`` (default ``cpu``)."""

EXPLICIT = bool(os.environ.get(ENV_VAR))
"""Whether ``JDOPT_DEVICE`` was set: then the default device is set even when it is the CPU."""

DEFAULT = DEVICE if EXPLICIT or DEVICE.type != "cpu" else None
"""What ``tests/conftest.py`` passes to ``torch.set_default_device`` for the session (``None``:
the default device is not set); a test that sets another default device restores this one."""

CPU = torch.device("cpu")


def seeded(seed: int) -> torch.Generator:
    """A seeded CPU generator, for :func:`draw` and its siblings."""
    return torch.Generator(device=CPU).manual_seed(seed)


def _dtype(dtype: torch.dtype | None) -> torch.dtype:
    return torch.get_default_dtype() if dtype is None else dtype


Shape = int | Sequence[int]  # ints, or one tuple or torch.Size (``()``: a 0-dim tensor)


def draw(*shape: Shape, generator: torch.Generator, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.randn(*shape)`` drawn on the CPU from ``generator``, on ``DEVICE``.

    ``dtype`` defaults to the default dtype, as in ``torch.randn``.
    """
    return torch.randn(*shape, generator=generator, dtype=_dtype(dtype), device=CPU).to(DEVICE)


def draw_uniform(
    *shape: Shape, generator: torch.Generator, dtype: torch.dtype | None = None
) -> Tensor:
    """``torch.rand(*shape)`` (uniform on ``[0, 1)``) drawn on the CPU, on ``DEVICE``."""
    return torch.rand(*shape, generator=generator, dtype=_dtype(dtype), device=CPU).to(DEVICE)


def draw_permutation(n: int, *, generator: torch.Generator) -> Tensor:
    """``torch.randperm(n)`` drawn on the CPU, on ``DEVICE``."""
    return torch.randperm(n, generator=generator, device=CPU).to(DEVICE)


def draw_integers(
    low: int, high: int, shape: tuple[int, ...], *, generator: torch.Generator
) -> Tensor:
    """``torch.randint(low, high, shape)`` drawn on the CPU, on ``DEVICE``."""
    return torch.randint(low, high, shape, generator=generator, device=CPU).to(DEVICE)


# The random factories that draw onto the default device when ``device=`` is left out.
_RANDOM_FACTORIES = frozenset({torch.rand, torch.randn, torch.randint, torch.randperm})


class GeneratorDeviceCheck(TorchFunctionMode):
    """Makes a draw that would fail on a GPU fail on the CPU too.

    A random factory (``torch.rand``, ``randn``, ``randint``, ``randperm``) called without
    ``device=`` puts its numbers on the default device, and a generator draws only on its own
    device: with the suite's CPU generators, the call fails where the default device is a GPU
    and passes on the CPU. Pushed for the session wherever the default device is set, this mode
    refuses, on every device, a factory call that has a ``generator`` but no ``device=``, or
    ``device=DEVICE`` (the very object, which names the GPU there): draw on the CPU and move the
    numbers, as :func:`draw` and its siblings do.

    Draws whose device follows a tensor argument (``*_like``, ``bernoulli``, ``multinomial``,
    ``Tensor.normal_``, ``nn.init``) are not checked: on the CPU nothing tells whether that
    tensor would be on the GPU.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if generator is not None and func in _RANDOM_FACTORIES:
            device = kwargs.get("device")
            if device is None or device is DEVICE:
                raise RuntimeError(_refusal(func, generator, device))
        return func(*args, **kwargs)


GENERATOR_CHECK = GeneratorDeviceCheck()
"""The check that ``tests/conftest.py`` pushes for the session where ``DEFAULT`` is set."""


@contextmanager
def generator_check_suspended() -> Iterator[None]:
    """The session's :data:`GENERATOR_CHECK` off the mode stack meanwhile (a no-op where the
    default device is not set)."""
    if DEFAULT is None:
        yield
        return
    GENERATOR_CHECK.__exit__(None, None, None)
    try:
        yield
    finally:
        GENERATOR_CHECK.__enter__()


def _refusal(func: Callable, generator: torch.Generator, device: object) -> str:
    where = "without device=" if device is None else "with device=DEVICE"
    return (
        f"torch.{func.__name__} draws from a {generator.device} generator {where}: the numbers "
        f"go to the suite's device ({ENV_VAR}), where a CPU generator cannot draw once that is "
        "a GPU. Draw on the generator's device and move the numbers: tests/utils/device.py's "
        "draw, draw_uniform, draw_integers, draw_permutation, or device=CPU then .to(DEVICE)."
    )


def on_device(tensor: Tensor) -> Tensor:
    """``tensor`` moved to ``DEVICE`` (a no-op when it is there already)."""
    return tensor.to(DEVICE)


def describe() -> list[str]:
    """Lines for pytest's header: the device, its name, and the TF32 settings."""
    name = "CPU"
    if DEVICE.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(DEVICE)
    elif DEVICE.type != "cpu":
        name = DEVICE.type
    default = "not set (PyTorch's own: cpu)" if DEFAULT is None else "set"
    lines = [f"jdopt test device: {DEVICE} ({name}); default device {default} [{ENV_VAR}]"]
    return [*lines, "jdopt TF32: " + ", ".join(_tf32_flags())]


def _tf32_flags() -> list[str]:
    """The legacy flags, the float32 matmul precision, and the per-backend settings of newer
    PyTorch (``fp32_precision``) where they exist."""
    backends = torch.backends
    flags = {
        "matmul.allow_tf32": lambda: backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": lambda: backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision,
    }
    if hasattr(backends, "fp32_precision"):  # torch >= 2.9
        flags["cuda.matmul.fp32_precision"] = lambda: backends.cuda.matmul.fp32_precision
        flags["cudnn.conv.fp32_precision"] = lambda: backends.cudnn.conv.fp32_precision
    return [f"{name}={_read(read)}" for name, read in flags.items()]


def _read(read: Callable[[], object]) -> object:
    """A setting's value; ``"?"`` where reading it raises (newer PyTorch refuses to express
    per-backend settings in the legacy ones)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer PyTorch deprecates the legacy flags
        try:
            return read()
        except RuntimeError:
            return "?"
