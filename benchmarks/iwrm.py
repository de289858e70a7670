"""Per-sample Jacobian descent (IWRM) vs a plain SGD step, on an MLP and a small CNN.

Every sample's cross-entropy is its own objective. For each model and batch size, three steps
are timed interleaved in one process (medians after warm-up): plain SGD on the mean loss,
``JDOptimizer`` with UPGrad, and with Mean (the cost of the Gramian engine alone). Peak memory
of each is measured in a fresh process. When TorchJD is installed, its autogram engine with
UPGrad is timed on the same work, interleaved with the plain step in a second round (its memory
traffic would slow the others down); its time is reported scaled to the first round's plain
step.

    python benchmarks/iwrm.py [--batch 16 64 256] [--repeats 30] [--device DEVICE] [--no-memory]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import measure_in_subprocess, peak_growth_bytes
from _timing import add_device_argument, interleaved_medians

from jdopt import JDOptimizer
from jdopt.aggregation import Mean, UPGrad


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )  # fmt: skip


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


MODELS = {"mlp": mlp, "cnn": cnn}


def make_steps(name: str, batch: int, device: str) -> dict:
    """One step function per variant, each on its own copy of the same model."""
    torch.manual_seed(0)
    model = MODELS[name]().to(device)
    # Drawn on the CPU and moved: every device gets the same batch.
    x = torch.randn(batch, 1, 28, 28).to(device)
    y = torch.randint(0, 10, (batch,)).to(device)
    plain_model = copy.deepcopy(model)
    plain = torch.optim.SGD(plain_model.parameters(), lr=1e-3)

    def plain_step() -> None:
        plain.zero_grad()
        F.cross_entropy(plain_model(x), y).backward()
        plain.step()

    def jd_step(aggregator):
        jd_model = copy.deepcopy(model)
        jd = JDOptimizer(
            torch.optim.SGD(jd_model.parameters(), lr=1e-3),
            aggregator=aggregator,
            model=jd_model,
            batch_dim=0,
        )

        def step() -> None:
            jd.zero_grad()
            jd.step(F.cross_entropy(jd_model(x), y, reduction="none"))

        return step

    steps = {"plain": plain_step, "upgrad": jd_step(UPGrad()), "mean": jd_step(Mean())}
    torchjd = _torchjd_step(copy.deepcopy(model), x, y)
    if torchjd is not None:
        steps["torchjd"] = torchjd
    return steps


def _torchjd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    try:
        from torchjd.aggregation import UPGradWeighting
        from torchjd.autogram import Engine
    except ImportError:
        return None
    engine = Engine(model, batch_dim=0)
    weighting = UPGradWeighting()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad()
        losses = F.cross_entropy(model(x), y, reduction="none")
        losses.backward(weighting(engine.compute_gramian(losses)))
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--repeats", type=int, default=30)
    add_device_argument(parser)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-of", nargs=3, metavar=("MODEL", "BATCH", "STEP"))
    args = parser.parse_args(argv)
    if args.memory_of:
        name, batch, step = args.memory_of
        steps = make_steps(name, int(batch), args.device)
        print(json.dumps({"bytes": peak_growth_bytes(steps[step], args.device)}))
        return
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads")
    print("times: medians (ms); ratios to the plain step; memory: peak growth (MB)")
    header = f"{'model':>5} {'B':>4} {'plain':>7} {'UPGrad':>14} {'Mean':>14} {'TorchJD':>14}"
    print(header + ("" if args.no_memory else "   mem plain / UPGrad / Mean"))
    for name in args.models:
        for batch in args.batch:
            steps = make_steps(name, batch, args.device)
            torchjd = steps.pop("torchjd", None)
            times = interleaved_medians(steps, repeats=args.repeats, device=args.device)
            plain = times["plain"]
            if torchjd is not None:  # timed apart: its memory traffic would slow the others
                pair = interleaved_medians(
                    {"plain": steps["plain"], "torchjd": torchjd},
                    repeats=max(args.repeats // 5, 3),
                    device=args.device,
                )
                times["torchjd"] = pair["torchjd"] * plain / pair["plain"]

            def cell(key: str, t: dict = times, base: float = plain) -> str:
                return f"{t[key] * 1e3:7.1f} ({t[key] / base:4.2f}x)" if key in t else "—".rjust(14)

            line = f"{name:>5} {batch:>4} {plain * 1e3:7.1f} "
            line += f"{cell('upgrad')} {cell('mean')} {cell('torchjd')}"
            if not args.no_memory:
                mem = [
                    measure_in_subprocess(
                        __file__, ["--memory-of", name, str(batch), key, "--device", args.device]
                    )
                    / 2**20
                    for key in ("plain", "upgrad", "mean")
                ]
                line += "   " + " / ".join(f"{m:.1f}" for m in mem)
            print(line, flush=True)


if __name__ == "__main__":
    main()
