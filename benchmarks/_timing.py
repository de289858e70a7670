"""Timing helpers shared by the benchmark scripts: the device to run on, synchronisation around
each timed step, and interleaved medians in one process.

Every benchmark takes ``--device`` (default: ``JDOPT_DEVICE``, else ``cpu``, as for the tests).
CUDA runs asynchronously: a step returns once its kernels are queued, so a timed step is
bracketed by two synchronisations of its device (nothing is done on the CPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

ENV_VAR = "JDOPT_DEVICE"


def default_device() -> str:
    """``JDOPT_DEVICE`` if set, else ``"cpu"``."""
    return os.environ.get(ENV_VAR) or "cpu"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """Adds ``--device`` (default: :func:`default_device`)."""
    parser.add_argument(
        "--device",
        default=default_device(),
        help=f"the device to run on, e.g. cpu, cuda, cuda:1 (default: ${ENV_VAR}, else cpu)",
    )


def synchronize(device: str | torch.device) -> None:
    """Waits for the work queued on ``device`` (CUDA, MPS); nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def synchronizer(device: str | torch.device) -> Callable[[], None]:
    """A function that synchronises ``device``: one that does nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return _nothing
    return lambda: synchronize(device)


def _nothing() -> None:
    pass


def interleaved_medians(
    steps: dict[str, Callable[[], None]],
    *,
    repeats: int,
    warmup: int = 5,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Runs each step in turn ``warmup + repeats`` times; returns the median seconds of each.

    Interleaving spreads machine noise (other processes, frequency changes) evenly over the
    variants being compared. Each call is timed by :func:`timed_call` on ``device``.
    """
    sync = synchronizer(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            elapsed = timed_call(step, sync)
            if i >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def timed_call(step: Callable[[], None], sync: Callable[[], None] = _nothing) -> float:
    """The seconds ``step()`` takes, from a synchronisation before it (not timed: the work
    queued earlier is not the step's) to one after it (see :func:`synchronizer`)."""
    sync()
    start = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - start
