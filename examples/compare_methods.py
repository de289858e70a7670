"""Comparing multi-objective methods on one problem with two conflicting tasks.

A trunk MLP with two regression heads learns two generated tasks whose targets pull the
trunk's representation apart. Each method trains the same initial model on the same batches
for the same number of steps, through ``JDOptimizer`` — only ``aggregator=`` changes: Jacobian
descent methods (UPGrad, MGDA, …) on the trunk's Gramian, and loss scalarizers (UW, FAMO, …)
at the cost of a plain step. The script prints each method's final test losses and median time
per step, and plots the final losses on the trade-off plane (``--plot``).

    python examples/compare_methods.py [--steps 300] [--plot compare_methods.png]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import optional, require

from jdopt import JDOptimizer
from jdopt import aggregation as agg
from jdopt import scalarization as sc

TASKS = 2


def methods() -> dict[str, Callable[[], object]]:
    """Seventeen methods, each built fresh for its run."""
    return {
        "UPGrad": agg.UPGrad,
        "MGDA": agg.MGDA,
        "DualProj": agg.DualProj,
        "CAGrad": lambda: agg.CAGrad(c=0.5),
        "PCGrad": agg.PCGrad,
        "IMTL-G": agg.IMTLG,
        "Aligned-MTL": agg.AlignedMTL,
        "FairGrad": lambda: agg.FairGrad(alpha=1.0),
        "GradVac": lambda: agg.GradVac(generator=torch.Generator().manual_seed(0)),
        "GradNorm": agg.GradNorm,
        "Mean (JD)": agg.Mean,
        "Sum": sc.Sum,
        "RLW": lambda: sc.Random(generator=torch.Generator().manual_seed(0)),
        "GLS": sc.GeometricMean,
        "STCH": lambda: sc.STCH(mu=0.1),
        "UW": lambda: sc.UW(TASKS),
        "FAMO": lambda: sc.FAMO(TASKS),
    }


def make_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and two targets along nearly opposite directions, drawn on the CPU."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 10, generator=g, device="cpu")
    directions = torch.randn(10, TASKS, generator=g, device="cpu")
    directions[:, 1] = -directions[:, 0] + 0.5 * directions[:, 1]
    scales = torch.tensor([1.0, 3.0])  # losses of different sizes
    y = scales * torch.tanh(x @ directions) + 0.05 * torch.randn(n, TASKS, generator=g)
    device = torch.get_default_device()
    return x.to(device), y.to(device)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # A one-unit bottleneck: the two tasks compete for the trunk's capacity.
        self.trunk = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 1), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(1, 1) for _ in range(TASKS))

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tasks' mean squared errors, and the trunk's features."""
        features = self.trunk(x)
        preds = torch.cat([head(features) for head in self.heads], dim=1)
        return ((preds - y) ** 2).mean(dim=0), features


def train(name: str, make: Callable[[], object], data: tuple, args) -> tuple[list[float], float]:
    """Final test losses and the median seconds per step of one method."""
    (x, y), (x_test, y_test) = data
    torch.manual_seed(0)  # the same initial model for every method
    model = Model()
    aggregator = make()
    jd_args = {"model": model.trunk} if isinstance(aggregator, agg.Aggregator) else {}
    jd = JDOptimizer(torch.optim.Adam(model.parameters(), lr=args.lr), aggregator=aggregator,
                     **jd_args)  # fmt: skip
    order = torch.Generator().manual_seed(1)
    times = []
    for _ in range(args.steps):
        batch = torch.randint(0, len(x), (args.batch_size,), generator=order, device="cpu")
        start = time.perf_counter()
        losses, features = model.losses(x[batch], y[batch])
        jd.zero_grad()
        jd.step(losses, features=features)
        times.append(time.perf_counter() - start)
    with torch.no_grad():
        final, _ = model.losses(x_test, y_test)
    return final.tolist(), statistics.median(times)


def plot(results: dict[str, tuple[list[float], float]], path: str) -> None:
    matplotlib = optional("matplotlib")
    if matplotlib is None or not path:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (final, _) in results.items():
        ax.scatter(*final, label=name, marker="o" if name in _jd_names() else "s")
        ax.annotate(name, final, fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("test loss, task 1")
    ax.set_ylabel("test loss, task 2")
    ax.set_title("Final losses (circles: Jacobian descent, squares: scalarizers)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _jd_names() -> set[str]:
    return {n for n, make in methods().items() if isinstance(make(), agg.Aggregator)}


def main(argv: list[str] | None = None) -> dict[str, tuple[list[float], float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--plot", default="compare_methods.png")
    args = parser.parse_args(argv)
    tqdm = require("tqdm").tqdm
    x, y = make_data(1024)
    data = ((x[:768], y[:768]), (x[768:], y[768:]))
    results = {}
    for name, make in tqdm(methods().items(), desc="methods"):
        results[name] = train(name, make, data, args)
    print(f"{'method':<12} {'task 1':>8} {'task 2':>8} {'ms/step':>8}")
    for name, (final, seconds) in results.items():
        print(f"{name:<12} {final[0]:>8.4f} {final[1]:>8.4f} {seconds * 1e3:>8.2f}")
    plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
