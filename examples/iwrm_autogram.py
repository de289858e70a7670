"""Instance-wise risk minimisation (IWRM) with the Gramian engine.

Each sample's loss is an objective. The engine computes the ``[B, B]`` Gramian of the
per-sample gradients from the activations it saw and one backward pass — no per-sample
Jacobian — UPGrad turns it into one weight per sample, and the weighted losses are
back-propagated as usual. This is the lower-level form of
``JDOptimizer(optimizer, model=model, batch_dim=0)``. The data are generated.

    python examples/iwrm_autogram.py
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from jdopt.aggregation import UPGradWeighting
from jdopt.autogram import Engine


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    x = torch.randn(1024, 10)
    y = (x[:, :3].sum(dim=1, keepdim=True) > 0).float()
    model = nn.Sequential(
        nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1)
    )
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = Engine(model, batch_dim=0)
    weighting = UPGradWeighting()

    history = []
    for step in range(args.steps):
        batch = torch.randint(
            0, len(x), (args.batch,), generator=torch.Generator().manual_seed(step), device="cpu"
        )
        losses = loss_fn(model(x[batch]), y[batch]).squeeze(1)  # [B]
        gramian = engine.compute_gramian(losses)  # [B, B], without per-sample gradients
        weights = weighting(gramian)  # [B]
        optimizer.zero_grad()
        losses.backward(weights)
        optimizer.step()
        history.append(float(losses.detach().mean()))
    engine.close()
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    print(f"mean loss: first 10 steps {first:.3f}, last 10 {last:.3f}")
    return history


if __name__ == "__main__":
    main()
