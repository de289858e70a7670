"""Timing helpers shared by the benchmark scripts: interleaved medians in one process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    steps: dict[str, Callable[[], None]], *, repeats: int, warmup: int = 5
) -> dict[str, float]:
    """Runs each step in turn ``warmup + repeats`` times; returns the median seconds of each.

    Interleaving spreads machine noise (other processes, frequency changes) evenly over the
    variants being compared.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}
