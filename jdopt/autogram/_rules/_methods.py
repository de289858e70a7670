"""Exact ways of computing the same quantity, and the choice between them by measurement.

A rule often has several exact ways to get its part of the Gramian: inner products of its
inputs and output gradients, or per-objective gradients materialised by one of a few kernels.
Which is fastest depends on the shapes *and* on the device's kernels (a grouped convolution
that matches an ordinary one on large images is ten times slower on small ones; a batched
product with a short inner dimension is bound by memory) — so it is measured, not assumed:
the first time a rule meets a shape, every way it can afford runs twice and the faster one is
remembered for that shape, dtype, device and thread count (like ``cudnn.benchmark``). All
ways are exact: the choice changes rounding only.

Method names (an engine's ``method`` forces one wherever a rule offers it):

- ``"inner"``: inner products of the factors (inputs and output gradients);
- ``"per_sample"``: materialised per-objective gradients (a Linear's batched product, a
  convolution's unfolded patches);
- ``"grouped"``: a convolution's per-objective gradients as one grouped weight gradient;
- ``"looped"``: a convolution's per-objective gradients, one weight gradient per row;
- ``"pairs"``: an Embedding's inner products over the pairs of positions with equal indices.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")

AUTO = "auto"
METHODS = ("inner", "per_sample", "grouped", "looped", "pairs")

# (key, offered methods, device, threads) ↦ the fastest method measured there.
_FASTEST: dict[Hashable, str] = {}


@dataclass(frozen=True)
class Chooser:
    """Runs one of a rule's exact methods: the ``forced`` one where offered, else the fastest
    measured for this key."""

    forced: str = AUTO

    def __call__(
        self, key: Hashable, device: torch.device, methods: dict[str, Callable[[], T]]
    ) -> T:
        """Runs the chosen one of ``methods`` (name ↦ computation) and returns its result.

        ``key`` names the problem (the shapes and settings that decide the costs)."""
        if self.forced in methods:
            return methods[self.forced]()
        if len(methods) == 1:
            return next(iter(methods.values()))()
        key = (key, tuple(methods), device.type, torch.get_num_threads())
        name = _FASTEST.get(key)
        if name is not None:
            return methods[name]()
        name, result = _fastest(methods, device)
        _FASTEST[key] = name
        return result


MEASURED = Chooser()


def check_method(method: str) -> None:
    if method != AUTO and method not in METHODS:
        raise ValueError(
            f"`method` should be {AUTO!r} (measure the fastest exact way per layer and shape) or "
            f"one of {', '.join(map(repr, METHODS))}. Found {method!r}."
        )


def _fastest(methods: dict[str, Callable[[], T]], device: torch.device) -> tuple[str, T]:
    """Times every method on its second run (the first one allocates and selects kernels)."""
    best: tuple[float, str, T] | None = None
    for name, run in methods.items():
        run()
        _synchronize(device)
        start = time.perf_counter()
        result = run()
        _synchronize(device)
        elapsed = time.perf_counter() - start
        if best is None or elapsed < best[0]:
            best = (elapsed, name, result)
        del result
    assert best is not None
    return best[1], best[2]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
