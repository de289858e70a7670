"""Multi-task step time: JDOptimizer (mtl, UPGrad) vs one backward of the summed losses.

A trunk MLP (64 → 256 → 256) feeds k linear heads; batch 64. All variants use SGD on the same
model and batch, timed interleaved in one process (medians after warm-up). The JD step gets the
task losses as a list, as ``mtl_backward`` takes them (a stacked tensor takes the same path),
on the full-Jacobian engine (``JDOptimizer(opt, aggregator=UPGrad())``) and on the Gramian
engine (``model=trunk``: the trunk's Jacobian is never formed).

    python benchmarks/mtl.py [--tasks 2 10 40] [--repeats 50] [--device DEVICE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import add_device_argument, interleaved_medians

from jdopt import JDOptimizer
from jdopt.aggregation import UPGrad


def setup(k: int, batch: int, device: str = "cpu") -> tuple:
    """The model and the batch, made on the CPU (the same numbers on every device), moved."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
    heads = nn.ModuleList(nn.Linear(256, 1) for _ in range(k))
    trunk, heads = trunk.to(device), heads.to(device)
    params = [*trunk.parameters(), *heads.parameters()]
    x, y = torch.randn(batch, 64).to(device), torch.randn(batch, k).to(device)
    return trunk, heads, params, x, y


def losses_of(trunk: nn.Module, heads: nn.ModuleList, x: torch.Tensor, y: torch.Tensor):
    features = trunk(x)
    losses = [((h(features).squeeze(1) - y[:, i]) ** 2).mean() for i, h in enumerate(heads)]
    return losses, features


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=50)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    on = "" if torch.device(args.device).type == "cpu" else f", device {args.device}"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}{on}")
    header = f"{'k':>4} {'sum step (ms)':>14} {'autojac (ms)':>13} {'ratio':>6}"
    print(header + f" {'autogram':>9} {'ratio':>6}")
    for k in args.tasks:
        t = bench(k, args.batch, args.repeats, args.device)
        print(
            f"{k:>4} {t['sum'] * 1e3:>14.2f} {t['jd'] * 1e3:>13.2f} {t['jd'] / t['sum']:>6.2f} "
            f"{t['gram'] * 1e3:>9.2f} {t['gram'] / t['sum']:>6.2f}"
        )


def bench(k: int, batch: int, repeats: int, device: str = "cpu") -> dict[str, float]:
    trunk, heads, params, x, y = setup(k, batch, device)
    plain = torch.optim.SGD(params, lr=1e-3)
    jd = JDOptimizer(torch.optim.SGD(params, lr=1e-3), aggregator=UPGrad())
    gram = JDOptimizer(torch.optim.SGD(params, lr=1e-3), aggregator=UPGrad(), model=trunk)

    def plain_step() -> None:
        losses, _ = losses_of(trunk, heads, x, y)
        plain.zero_grad()
        torch.stack(losses).sum().backward()
        plain.step()

    def jd_step(optimizer: JDOptimizer = jd) -> None:
        losses, features = losses_of(trunk, heads, x, y)
        optimizer.zero_grad()
        optimizer.step(losses, features=features)

    def gram_step() -> None:
        jd_step(gram)

    steps = {"sum": plain_step, "jd": jd_step, "gram": gram_step}
    return interleaved_medians(steps, repeats=repeats, device=device)


if __name__ == "__main__":
    main()
