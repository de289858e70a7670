"""Multi-task learning: a shared trunk, one head per task, Jacobian descent on the trunk.

Three regression tasks share an input; their targets pull the shared representation in
different directions. ``jd.step(losses, features=features)`` gives each head the gradient of
its own loss and the trunk the UPGrad aggregation of the tasks' gradients, so that no task's
loss is increased by the trunk's update (to first order). With ``model=trunk`` the trunk's
Gramian comes from the Gramian engine. A learning-rate scheduler drives the wrapped optimizer
as usual. The data are generated.

    python examples/multi_task.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import require

from jdopt import JDOptimizer
from jdopt.aggregation import UPGrad


def make_data(n: int, n_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 10, generator=g, device="cpu")
    directions = torch.randn(10, n_tasks, generator=g, device="cpu")
    directions[:, 1] = -directions[:, 0] + 0.3 * directions[:, 1]  # tasks 0 and 1 conflict
    y = torch.tanh(x @ directions) + 0.05 * torch.randn(n, n_tasks, generator=g, device="cpu")
    return x.to(torch.get_default_device()), y.to(torch.get_default_device())


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    tqdm = require("tqdm").tqdm

    torch.manual_seed(0)
    x, y = make_data(args.samples, args.tasks)
    trunk = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
    heads = nn.ModuleList(nn.Linear(16, 1) for _ in range(args.tasks))
    params = [*trunk.parameters(), *heads.parameters()]
    # model=trunk: the trunk's Gramian comes from the Gramian engine (no Jacobian over it).
    jd = JDOptimizer(torch.optim.Adam(params, lr=1e-2), aggregator=UPGrad(), model=trunk)
    scheduler = torch.optim.lr_scheduler.StepLR(jd, step_size=10, gamma=0.5)

    for _ in tqdm(range(args.epochs), desc="epochs"):
        for batch in torch.randperm(args.samples).split(args.batch_size):
            features = trunk(x[batch])
            losses = torch.stack(
                [
                    ((head(features).squeeze(1) - y[batch, t]) ** 2).mean()
                    for t, head in enumerate(heads)
                ]
            )
            jd.zero_grad()
            jd.step(losses, features=features)
        scheduler.step()

    with torch.no_grad():
        features = trunk(x)
        final = [
            float(((h(features).squeeze(1) - y[:, t]) ** 2).mean()) for t, h in enumerate(heads)
        ]
    print("final loss per task:", ", ".join(f"{v:.4f}" for v in final))
    print(f"engine: {jd.last_step.engine}; learning rate now {jd.param_groups[0]['lr']:.2e}")
    print("task weights of the last step:")
    print("  ", [round(w, 3) for w in jd.last_step.weights.tolist()])
    return final


if __name__ == "__main__":
    main()
