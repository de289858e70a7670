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
from collections.abc import Callable

import torch
from torch import Tensor

ENV_VAR = "JDOPT_DEVICE"

DEVICE = torch.device(os.environ.get(ENV_VAR) or "cpu")
"""The device named by ``JDOPT_DEVICE`` (default ``cpu``)."""

EXPLICIT = bool(os.environ.get(ENV_VAR))
"""Whether ``JDOPT_DEVICE`` was set: then the default device is set even when it is the CPU."""

CPU = torch.device("cpu")


def seeded(seed: int) -> torch.Generator:
    """A seeded CPU generator, for :func:`draw` and its siblings."""
    return torch.Generator(device=CPU).manual_seed(seed)


def _dtype(dtype: torch.dtype | None) -> torch.dtype:
    return torch.get_default_dtype() if dtype is None else dtype


def draw(*shape: int, generator: torch.Generator, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.randn(*shape)`` drawn on the CPU from ``generator``, on ``DEVICE``.

    ``dtype`` defaults to the default dtype, as in ``torch.randn``.
    """
    return torch.randn(*shape, generator=generator, dtype=_dtype(dtype), device=CPU).to(DEVICE)


def draw_uniform(
    *shape: int, generator: torch.Generator, dtype: torch.dtype | None = None
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
    default = "set" if EXPLICIT or DEVICE.type != "cpu" else "not set (PyTorch's own: cpu)"
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
