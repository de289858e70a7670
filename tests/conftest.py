"""One switch for the device: ``JDOPT_DEVICE=cuda pytest`` runs the whole suite on a GPU.

``JDOPT_DEVICE`` (default ``cpu``) becomes PyTorch's default device for the session, so that
tensors and modules created without ``device=`` land on it. ``JDOPT_DEVICE=cpu`` sets the CPU as
the default device explicitly: the code under test then runs under ``torch.set_default_device``
as it would on a GPU, which catches tensors created on the default device instead of their
input's. Random problems are drawn on the CPU and moved (``tests/utils/device.py``), so every
device tests the same numbers; wherever the default device is set, ``GENERATOR_CHECK``
refuses a draw from a generator onto the default device, which a GPU would refuse.
"""

from __future__ import annotations

import pytest
import torch

from tests.utils.device import DEFAULT, DEVICE, ENV_VAR, GENERATOR_CHECK, describe


def _check_available() -> None:
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"{ENV_VAR}={DEVICE} but CUDA is not available.")
    count = torch.cuda.device_count() if DEVICE.type == "cuda" else 0
    if DEVICE.type == "cuda" and DEVICE.index is not None and DEVICE.index >= count:
        raise pytest.UsageError(f"{ENV_VAR}={DEVICE} but only {count} CUDA device(s) exist.")
    if DEVICE.type == "mps" and not torch.backends.mps.is_available():
        raise pytest.UsageError(f"{ENV_VAR}={DEVICE} but MPS is not available.")


def pytest_configure(config: pytest.Config) -> None:
    _check_available()
    if DEFAULT is not None:
        torch.set_default_device(DEFAULT)
        if DEVICE.type == "cuda":
            torch.cuda.set_device(DEVICE.index or 0)
        GENERATOR_CHECK.__enter__()


def pytest_unconfigure(config: pytest.Config) -> None:
    if DEFAULT is not None:
        GENERATOR_CHECK.__exit__(None, None, None)
        torch.set_default_device(None)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return describe()
