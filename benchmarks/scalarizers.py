"""Scalarizer step time: JDOptimizer with each loss scalarizer vs a plain step of the summed
losses, on the multi-task model of ``benchmarks/mtl.py`` (trunk MLP 64 → 256 → 256, k linear
heads, batch 64), timed interleaved in one process (medians after warm-up). A scalarizer's step
is one ordinary backward pass of the scalarized losses: the target is ≤ 1.1× the plain step.

    python benchmarks/scalarizers.py [--tasks 10] [--repeats 100] [--device DEVICE]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import add_device_argument, interleaved_medians
from mtl import losses_of, setup

from jdopt import JDOptimizer
from jdopt.scalarization import (
    COSMOS,
    DWA,
    FAMO,
    IMTLL,
    PBI,
    STCH,
    UW,
    GeometricMean,
    Mean,
    Random,
    Scalarizer,
    Sum,
)


def scalarizers(k: int) -> dict[str, Scalarizer]:
    ones = torch.ones(k)
    return {
        "Sum": Sum(),
        "Mean": Mean(),
        "Random": Random(),
        "GeometricMean": GeometricMean(),
        "STCH": STCH(0.1),
        "PBI": PBI(5.0, ones),
        "COSMOS": COSMOS(1.0, ones),
        "UW": UW(k),
        "IMTLL": IMTLL(k),
        "DWA": DWA(),
        "FAMO": FAMO(k),
    }


def bench(k: int, batch: int, repeats: int, device: str) -> dict[str, float]:
    trunk, heads, params, x, y = setup(k, batch, device)
    plain = torch.optim.SGD(params, lr=1e-3)

    def plain_step() -> None:
        losses, _ = losses_of(trunk, heads, x, y)
        plain.zero_grad()
        torch.stack(losses).sum().backward()
        plain.step()

    steps: dict[str, Callable[[], None]] = {"plain": plain_step}
    for name, scalarizer in scalarizers(k).items():
        jd = JDOptimizer(torch.optim.SGD(params, lr=1e-3), aggregator=scalarizer.to(device))

        def step(jd: JDOptimizer = jd) -> None:
            losses, _ = losses_of(trunk, heads, x, y)
            jd.zero_grad()
            jd.step(torch.stack(losses))

        steps[name] = step
    return interleaved_medians(steps, repeats=repeats, device=device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=100)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    times = bench(args.tasks, args.batch, args.repeats, args.device)
    plain = times.pop("plain")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, k = {args.tasks}, "
          f"batch {args.batch}: plain step {plain * 1e3:.2f} ms")  # fmt: skip
    for name, seconds in times.items():
        print(f"  {name:<14} {seconds * 1e3:7.2f} ms  {seconds / plain:5.2f}x")


if __name__ == "__main__":
    main()
