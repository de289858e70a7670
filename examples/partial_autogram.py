"""Partial Jacobian descent: the Gramian of the last layers only, the weights for the whole model.

With a large model, the Gramian of the per-sample gradients of *some* parameters (here the
last two layers) already tells which samples conflict. The engine hooks only those layers;
the weights it yields are applied to the losses of the whole model. ``JDOptimizer`` does the
same with ``model=[layer, ...]``. The data are generated.

    python examples/partial_autogram.py
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from jdopt import JDOptimizer
from jdopt.aggregation import UPGrad


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    x = torch.randn(1024, 10)
    y = torch.sin(x[:, :1]) + 0.1 * x[:, 1:2] ** 2
    model = nn.Sequential(
        nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16), nn.ReLU(),
        nn.Linear(16, 1),
    )  # fmt: skip
    jd = JDOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-3),
        aggregator=UPGrad(),
        model=[model[4], model[6]],  # the Gramian engine hooks these layers only
        batch_dim=0,
    )
    history = []
    for step in range(args.steps):
        batch = torch.randint(
            0, len(x), (args.batch,), generator=torch.Generator().manual_seed(step), device="cpu"
        )
        losses = ((model(x[batch]) - y[batch]) ** 2).squeeze(1)  # [B]
        jd.zero_grad()
        jd.step(losses)
        history.append(float(losses.detach().mean()))
    print(
        f"engine: {jd.last_step.engine}; weights of the last batch sum to "
        f"{float(jd.last_step.weights.sum()):.3f}"
    )
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    print(f"mean loss: first 10 steps {first:.3f}, last 10 {last:.3f}")
    return history


if __name__ == "__main__":
    main()
