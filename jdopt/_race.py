"""Two exact ways of taking the same step, timed on the first steps; the faster one is kept."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


class Race:
    """Picks between ways that give the same result up to rounding, by timing each.

    The first ``2 · len(ways)`` calls run each way twice in turn (the first run of a way pays
    for its set-up: allocations, kernel choices, the Gramian engine's own measurements) and
    time the second; every later call runs the faster. A way may decline a step (return
    ``None``): the next way runs instead, untimed.

    Args:
        ways: the names of the ways, in the order they are tried.
    """

    def __init__(self, *ways: str) -> None:
        self.ways = ways
        self.times: dict[str, float] = {}
        self._runs: dict[str, int] = dict.fromkeys(ways, 0)
        self.winner: str | None = None

    def order(self) -> list[str]:
        """The ways to try for this step, the preferred one first."""
        if self.winner is not None:
            return [self.winner, *(w for w in self.ways if w != self.winner)]
        pending = [w for w in self.ways if self._runs[w] < 2]
        return [*pending, *(w for w in self.ways if w not in pending)]

    def run(self, way: str, step: Callable[[], T], device: torch.device) -> T:
        """Runs one way of the step, timing it while the race is on."""
        if self.winner is not None:
            return step()
        _synchronize(device)
        start = time.perf_counter()
        result = step()
        if result is None:  # declined: nothing learnt
            return result
        _synchronize(device)
        self._runs[way] += 1
        if self._runs[way] == 2:
            self.times[way] = time.perf_counter() - start
        if len(self.times) == len(self.ways):
            self.winner = min(self.times, key=self.times.__getitem__)
        return result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
