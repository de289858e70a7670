"""Quick start: train a digit classifier with Jacobian descent, and with plain Adam.

Every sample's loss is its own objective: ``JDOptimizer`` with UPGrad updates the model in a
direction that increases none of the per-sample losses of the batch (to first order), whereas
plain Adam follows the gradient of their mean. The data are scikit-learn's 8×8 digits, which
ship with the package (nothing is downloaded).

    python examples/quickstart.py                 # ~1 minute on a laptop CPU
    python examples/quickstart.py --epochs 2      # quicker
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import optional, require

from jdopt import JDOptimizer
from jdopt.aggregation import UPGrad


def load_digits(limit: int | None) -> tuple[torch.Tensor, ...]:
    datasets = require("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0), device="cpu")
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    train, test = (x[:split], y[:split]), (x[split:], y[split:])
    if limit is not None:
        train, test = (t[:limit] for t in train), (t[:limit] for t in test)
    return (*train, *test)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--limit", type=int, default=None, help="use only this many samples")
    parser.add_argument("--plot", default="quickstart.png", help="PNG of the loss curves")
    args = parser.parse_args(argv)
    tqdm = require("tqdm").tqdm

    x_train, y_train, x_test, y_test = load_digits(args.limit)
    jd_model, adam_model = make_model(), make_model()
    jd = JDOptimizer(torch.optim.Adam(jd_model.parameters(), lr=args.lr), aggregator=UPGrad())
    adam = torch.optim.Adam(adam_model.parameters(), lr=args.lr)

    curves: dict[str, list[float]] = {"JD + UPGrad": [], "Adam": []}
    batches = list(torch.arange(len(x_train)).split(args.batch_size))
    progress = tqdm(total=args.epochs * len(batches), desc="training", unit="step")
    for epoch in range(args.epochs):
        generator = torch.Generator().manual_seed(epoch)
        shuffle = torch.randperm(len(batches), generator=generator, device="cpu")
        for b in shuffle.tolist():
            x, y = x_train[batches[b]], y_train[batches[b]]
            losses = F.cross_entropy(jd_model(x), y, reduction="none")  # one loss per sample
            jd.zero_grad()
            jd.step(losses)
            curves["JD + UPGrad"].append(float(losses.detach().mean()))

            loss = F.cross_entropy(adam_model(x), y)
            adam.zero_grad()
            loss.backward()
            adam.step()
            curves["Adam"].append(float(loss.detach()))
            progress.update()
            progress.set_postfix(
                jd=f"{curves['JD + UPGrad'][-1]:.3f}", adam=f"{curves['Adam'][-1]:.3f}"
            )
    progress.close()

    results = {}
    for name, model in [("JD + UPGrad", jd_model), ("Adam", adam_model)]:
        with torch.no_grad():
            train_loss = float(F.cross_entropy(model(x_train), y_train))
        results[f"{name} train loss"] = train_loss
        results[f"{name} test accuracy"] = accuracy(model, x_test, y_test)
        print(
            f"{name:12s} train loss {train_loss:.4f}   "
            f"test accuracy {results[f'{name} test accuracy']:.3f}"
        )
    conflicts = float(jd.last_step.conflict_fraction)
    print(f"In the last batch, {conflicts:.0%} of the pairs of per-sample gradients conflicted.")
    _plot(curves, args.plot)
    return results


def _plot(curves: dict[str, list[float]], path: str) -> None:
    matplotlib = optional("matplotlib")
    if matplotlib is None or not path:
        print('Install matplotlib (pip install "jdopt[examples]") to plot the loss curves.')
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot(values, label=name, alpha=0.8)
    ax.set(xlabel="step", ylabel="mean training loss of the batch", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"Loss curves written to {path}")


if __name__ == "__main__":
    main()
