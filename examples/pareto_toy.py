"""Two conflicting objectives: how sum-of-losses, MGDA and UPGrad move in objective space.

``f₁(x) = ‖x − a‖²`` and ``f₂(x) = 0.1‖x − b‖⁴`` pull a point ``x ∈ R²`` towards two
different targets at very different scales. Gradient descent on ``f₁ + f₂`` lets the larger
gradient dominate and may increase one objective on the way; MGDA and UPGrad only take steps
that decrease both (to first order) until they reach the Pareto front. The trajectories are
plotted in the ``(f₁, f₂)`` plane.

    python examples/pareto_toy.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import optional

from jdopt import JDOptimizer
from jdopt.aggregation import MGDA, Sum, UPGrad

A = torch.tensor([1.0, 0.0], dtype=torch.float64)
B = torch.tensor([-1.0, 1.5], dtype=torch.float64)


def objectives(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([((x - A) ** 2).sum(), 0.1 * ((x - B) ** 2).sum() ** 2])


def trajectory(aggregator, steps: int, lr: float) -> torch.Tensor:
    x = torch.nn.Parameter(torch.tensor([2.0, -2.0], dtype=torch.float64))
    jd = JDOptimizer(torch.optim.SGD([x], lr=lr), aggregator=aggregator)
    values = []
    for _ in range(steps):
        losses = objectives(x)
        values.append(losses.detach())
        jd.zero_grad()
        jd.step(losses)
    values.append(objectives(x).detach())
    return torch.stack(values)


def main(argv: list[str] | None = None) -> dict[str, torch.Tensor]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--plot", default="pareto_toy.png")
    args = parser.parse_args(argv)

    paths = {
        name: trajectory(aggregator, args.steps, args.lr)
        for name, aggregator in [("sum of losses", Sum()), ("MGDA", MGDA()), ("UPGrad", UPGrad())]
    }
    for name, path in paths.items():
        print(f"{name:14s} final (f1, f2) = ({path[-1, 0]:.3f}, {path[-1, 1]:.3f})")
    matplotlib = optional("matplotlib")
    if matplotlib is not None and args.plot:
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        for name, path in paths.items():
            ax.plot(path[:, 0], path[:, 1], marker=".", markersize=2, label=name)
        ax.set(xlabel="f1", ylabel="f2", xscale="log", yscale="log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        plt.close(fig)
        print(f"Trajectories written to {args.plot}")
    return paths


if __name__ == "__main__":
    main()
