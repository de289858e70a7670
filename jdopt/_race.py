"""Exact backends for the same step, timed on the first steps; the faster one is kept."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from ._step import Backend, Found, Step


class Race(Backend):
    """Picks between backends that give the same step up to rounding, by timing each.

    The first ``2 · len(ways)`` steps run each way twice in turn (the first run of a way pays
    for its set-up: allocations, kernel choices, the Gramian engine's own measurements) and
    time the second, from :meth:`compute` to the end of :meth:`apply`; every later step runs
    the faster. A way may decline a step (its ``compute`` returns ``None``): the next way runs
    instead. A step that does not reach ``apply`` (skipped, or an error) teaches nothing.

    Args:
        ways: the backends, in the order they are tried; the last must take every step.
        timed: ``False``: no race, the ways are tried in the given order at every step.
    """

    def __init__(self, *ways: Backend, timed: bool = True) -> None:
        self.ways = {way.name: way for way in ways}
        self.name = " or ".join(self.ways)
        self.times: dict[str, float] = {}
        self._runs: dict[str, int] = dict.fromkeys(self.ways, 0)
        self.winner: str | None = None if timed else ways[0].name
        self._clock: tuple[str, float, torch.device] | None = None  # the way being timed

    def order(self) -> list[str]:
        """The ways to try for this step, the preferred one first."""
        if self.winner is not None:
            return [self.winner, *(w for w in self.ways if w != self.winner)]
        pending = [w for w in self.ways if self._runs[w] < 2]
        return [*pending, *(w for w in self.ways if w not in pending)]

    def compute(self, step: Step, /) -> Found | None:
        """What the first way that takes the step computes; its clock runs until
        :meth:`apply` while the race is on."""
        self._clock = None
        for name in self.order():
            start = self._start(step.losses.device)
            found = self.ways[name].compute(step)
            if found is not None:
                self._clock = None if start is None else (name, start, step.losses.device)
                return found
        return None

    def settle(self, found: Found, gramian: Tensor, solve: Any, /) -> Any:
        """The way that computed the step settles its decision (see ``Backend.settle``)."""
        return self.ways[found.engine].settle(found, gramian, solve)

    def apply(self, found: Found, change: Tensor | list[Tensor], /) -> None:
        """The way that computed the step applies it; the step then counts for that way."""
        self.ways[found.engine].apply(found, change)
        if self._clock is not None:
            self._record(*self._clock)
            self._clock = None

    def _start(self, device: torch.device) -> float | None:
        """The time a way starts, while the race is on."""
        if self.winner is not None:
            return None
        _synchronize(device)
        return time.perf_counter()

    def _record(self, name: str, start: float, device: torch.device) -> None:
        _synchronize(device)
        self._runs[name] += 1
        if self._runs[name] == 2:
            self.times[name] = time.perf_counter() - start
        if len(self.times) == len(self.ways):
            self.winner = min(self.times, key=self.times.__getitem__)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
