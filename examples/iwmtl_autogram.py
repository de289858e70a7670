"""Instance-wise multi-task learning (IWMTL): one loss per sample *and* per task.

The losses form a ``[B, k]`` matrix; each entry is an objective. The engine returns the
generalized Gramian ``[B, k, k, B]``; ``Flattening(UPGradWeighting())`` flattens it to the
``[B·k, B·k]`` Gramian, solves, and gives the weights back as ``[B, k]``. The data are
generated.

    python examples/iwmtl_autogram.py
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from jdopt.aggregation import Flattening, UPGradWeighting
from jdopt.autogram import Engine


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=3)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    x = torch.randn(1024, 8)
    y = torch.stack([torch.tanh(x @ torch.randn(8)) for _ in range(args.tasks)], dim=1)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, args.tasks))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    engine = Engine(model, batch_dim=0)
    weighting = Flattening(UPGradWeighting())

    history = []
    for step in range(args.steps):
        batch = torch.randint(
            0, len(x), (args.batch,), generator=torch.Generator().manual_seed(step), device="cpu"
        )
        losses = (model(x[batch]) - y[batch]) ** 2  # [B, k]
        gramian = engine.compute_gramian(losses)  # [B, k, k, B]
        weights = weighting(gramian)  # [B, k]
        optimizer.zero_grad()
        losses.backward(weights)
        optimizer.step()
        history.append(float(losses.detach().mean()))
    engine.close()
    print(f"generalized Gramian shape {tuple(gramian.shape)}, weights shape {tuple(weights.shape)}")
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    print(f"mean loss: first 10 steps {first:.3f}, last 10 {last:.3f}")
    return history


if __name__ == "__main__":
    main()
